"""The online loop: PPO for RLHF (in the style of cleanrl's ppo.py) and RLOO, as named steps.

    reward model (`reward_model_for`, a cached stage) -> repeat until train.max_steps optimiser steps:
        (`collect_rollout`: steps 1-5; `optimise_on_rollout` / `minibatch_step`: step 6)
        1. rollout:   sample `rollout_batch_size` responses from the policy (temperature 1, dropout off)
        2. score:     reward-model score (method.reward=model) or gold reward (=gold, PPO-GT)
        3. old stats: policy log-probs and values (dropout off, as sampled), reference log-probs (no gradient)
        4. rewards:   per-token -kl_coef * (log pi - log pi_ref), + score on the last token
        5. GAE:       advantages and returns (gamma, lam); advantages whitened
        6. optimise:  `ppo_epochs` x `n_minibatches` clipped-surrogate + vf_coef * clipped value loss
        7. adapt:     optional adaptive KL coefficient; optional target-KL early stop of the epochs

The pieces (GAE, the clipped losses, the KL penalty, the adaptive controller) are pure tensor
functions in `alignbench.losses.ppo`; this module only wires them up. Every trick is a named flag
in conf/method/ppo.yaml.

RLOO (method=rloo, conf/method/rloo.yaml) is the same loop without a critic: each prompt is
sampled `rloo_k` times, each response's reward is its score minus kl_coef x its sequence KL, and
its advantage is that reward minus the mean of the other k-1 responses' rewards
(`alignbench.losses.rloo`), given to every token of the response; steps 5 (GAE) and the value
loss drop out, the clipped surrogate stays (as in TRL's RLOOTrainer).

Value function: a small Linear head on the policy's own last hidden state (a shared trunk, as
cleanrl's Atari agent and TRL's old `AutoModelForCausalLMWithValueHead`), not a separate value
model: on a 2-core CPU a second network would double the cost of every step. The value loss
therefore also shapes the policy's backbone, weighted by `vf_coef`.

Budget: each minibatch update is one optimiser step and the run stops after train.max_steps
of them, so PPO gets the same number of AdamW steps (same optimiser, schedule, clipping) as the
offline methods. Its minibatch (rollout_batch_size / n_minibatches sequences) equals
train.batch_size by default.

Under DDP (torchrun / accelerate launch, `training.distributed`) the rollout is sharded: every
process draws the same prompt batch and samples, scores and computes advantages for its own
contiguous block of it (RLOO's k samples of a prompt stay together), with its own sampling seed.
Rewards and advantages are whitened with the statistics of all processes' rollouts (their sums
and counts added up across processes), and the adaptive KL controller reads the whole batch's KL,
so every rank normalises alike. Each process then trains on its block's share of every minibatch,
the policy and value head wrapped in DDP (gradients averaged), and the target-KL stop reads the
whole minibatch's approximate KL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch

from alignbench.losses.ppo import (AdaptiveKLController, clipped_policy_loss, clipped_value_loss,
                                   entropy_from_logits, kl_penalty_rewards, masked_mean, whiten)
from alignbench.models.generation import Samples, response_token_logps, sample
from alignbench.models.logps import position_ids_from_mask, token_logps
from alignbench.training.distributed import (contiguous_share, mean_over_processes, process_count, process_index,
                                             sum_tensor_over_processes)
from alignbench.training.loop import LoopBookkeeping, Optimisation, RunResult, make_accelerator, make_optimizer
from alignbench.training.settings import RunSettings

log = logging.getLogger(__name__)


def policy_forward(policy, value_head, input_ids, attention_mask, prompt_width: int):
    """One forward of the policy over prompt + response.

    Returns, over the response columns [B, R]: log-probs of the sampled tokens, values
    (value head on the last hidden state at the position that *predicts* each token, i.e. the
    state before the token is chosen; None without a value head) and the logits that produced
    them [B, R, V].
    """
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                 use_cache=False, output_hidden_states=value_head is not None)
    logps = token_logps(out.logits, input_ids)[:, prompt_width - 1:]
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, prompt_width - 1:-1]).squeeze(-1).float()
    return logps, values, out.logits[:, prompt_width - 1:-1]


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """`module` in eval mode (dropout off) inside the block, its own mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _prompt_stream(prompts: list[str], batch_size: int, seed: int, repeats: int = 1):
    """Endless shuffled passes over the training prompts, `batch_size` // `repeats` distinct prompts
    at a time, each repeated `repeats` times in a row (RLOO's k samples of one prompt)."""
    gen = torch.Generator().manual_seed(seed)
    n = max(1, batch_size // repeats)
    queue: list[str] = []
    while True:
        while len(queue) < n:
            queue += [prompts[i] for i in torch.randperm(len(prompts), generator=gen).tolist()]
        yield [p for p in queue[:n] for _ in range(repeats)]
        queue = queue[n:]


@dataclass
class Learner:
    """The policy (as the accelerator wraps it, and unwrapped for sampling and evaluation), its
    value head (None for RLOO) and the optimiser over both."""

    policy: torch.nn.Module
    unwrapped: torch.nn.Module
    value_head: torch.nn.Module | None
    optimisation: Optimisation


@dataclass
class Rollout:
    """One sampled batch and what the optimisation epochs need of it (all [B, R] over the response)."""

    samples: Samples
    ids: torch.Tensor
    attn: torch.Tensor
    mask: torch.Tensor
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    seq_kl: torch.Tensor
    stats: dict         # ppo/* metrics of the rollout, logged with every step on it


@dataclass
class Counters:
    step: int = 0           # optimiser steps so far
    rollouts: int = 0
    early_stops: int = 0


def reward_model_for(settings: RunSettings, prepared, tracker):
    """The learned Bradley-Terry reward model (cached stage), or None for the gold reward."""
    judge = prepared.evaluator.judge
    reward_model = None
    if hasattr(judge, "score_tokens"):  # judge=reward_model judge.path=trained: the very same RM
        reward_model = judge
    elif settings.method.online.reward == "model":
        from alignbench.models.reward_model import load_or_train_reward_model

        reward_model = load_or_train_reward_model(settings.reward_model, prepared.models, prepared.train_records)
    if reward_model is not None:
        tracker.log_metrics(reward_model.stats, 0)
    return reward_model


def make_learner(settings: RunSettings, models, critic_free: bool) -> Learner:
    """The value head (zero-initialised; none for RLOO) and one AdamW over policy + head, the shared schedule."""
    policy, device, t = models.policy, models.device, settings.train
    torch.manual_seed(t.seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    accelerator = make_accelerator(t.precision, device)
    value_head = None
    if not critic_free:
        dtype = next(policy.parameters()).dtype
        value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(device=device, dtype=dtype)
        torch.nn.init.zeros_(value_head.weight)  # V = 0 at the start: the first advantages are the raw returns
        torch.nn.init.zeros_(value_head.bias)
        params += list(value_head.parameters())
    optimizer, scheduler = make_optimizer(t, params, settings.method.lr)
    if value_head is None:
        policy, optimizer = accelerator.prepare(policy, optimizer)
    else:
        policy, value_head, optimizer = accelerator.prepare(policy, value_head, optimizer)
    unwrapped = accelerator.unwrap_model(policy)  # for sampling and evaluation (generate is not DDP's)
    optimisation = Optimisation(accelerator, optimizer, scheduler, params, t.max_grad_norm, settings.faults)
    return Learner(policy, unwrapped, value_head, optimisation)


def collect_rollout(settings: RunSettings, prepared, learner: Learner, reward_model, prompts: list[str],
                    n_rollouts: int, kl_coef: float, critic_free: bool) -> Rollout:
    """Steps 1-5: sample, score, the rollout policy's and reference's log-probs, rewards, advantages."""
    m, models = settings.method.online, prepared.models
    device = models.device
    # 1. one sampled response per prompt (RLOO: k per prompt), temperature 1 (so the KL estimate is valid);
    #    under DDP `prompts` is this process's block, sampled with its own seed
    seed = settings.train.seed * 100_003 + n_rollouts * process_count() + process_index()
    samples: Samples = sample(learner.unwrapped, models.tokenizer, prompts, max_new_tokens=m.max_new_tokens,
                              temperature=1.0, max_prompt_length=settings.limits.max_prompt_length,
                              batch_size=m.rollout_batch_size, seed=seed, device=device)
    pw = samples.prompt_width
    mask = samples.response_mask[:, pw:].to(device)
    ids, attn = samples.input_ids.to(device), samples.attention_mask.to(device)

    # 2. score each response once, at its last token
    gold = None
    if prepared.builtin_task:
        gold_reward = prepared.evaluator.gold_reward  # the task's
        gold = torch.tensor([gold_reward(p, r) for p, r in zip(samples.prompts, samples.responses)])
    rm_scores = reward_model.score_tokens(samples.input_ids, samples.attention_mask) if reward_model else None
    scores = gold if m.reward == "gold" else rm_scores

    # 3. what the rollout policy, its value head and the reference say about the samples; the policy
    #    in eval mode as when it sampled (dropout off, e.g. LoRA's): the behaviour policy is the sampler
    with torch.no_grad(), eval_mode(learner.policy):
        old_logps, old_values, _ = policy_forward(learner.policy, learner.value_head, ids, attn, pw)
        old_logps = old_logps * mask
        old_values = torch.zeros_like(old_logps) if critic_free else old_values * mask
    with models.reference_model() as ref:
        ref_logps = response_token_logps(ref, samples, m.rollout_batch_size, device)

    # 4. per-token rewards: KL penalty on every token, the score on the last one
    rewards, kl = kl_penalty_rewards(old_logps, ref_logps, scores.to(device), mask, kl_coef)
    if m.whiten_rewards:  # TRL option: rescale (keep the mean) so the step size ignores the reward scale
        rewards = whiten(rewards, mask, shift_mean=False, total=sum_tensor_over_processes)  # every process's
    seq_kl = kl.sum(-1)

    # 5. the method's advantages (its objective in alignbench.methods): PPO's GAE (gamma, lam) with the
    #    value head; RLOO's leave-one-out advantage of the whole sequence's reward, on every response
    #    token. Advantages whitened over every process's rollout.
    advantages, returns = settings.method.objective(rewards, None if critic_free else old_values, mask)
    if m.whiten_advantages:
        advantages = whiten(advantages, mask, total=sum_tensor_over_processes)
    stats = rollout_stats(samples, mask, seq_kl, kl_coef, scores, returns, rm_scores, gold)
    return Rollout(samples, ids, attn, mask, old_logps, old_values, advantages, returns, seq_kl, stats)


def rollout_stats(samples: Samples, mask, seq_kl, kl_coef: float, scores, returns, rm_scores, gold) -> dict:
    stats = {
        "ppo/kl": seq_kl.mean().item(),
        "ppo/kl_per_token": (seq_kl.sum() / mask.sum().clamp(min=1)).item(),
        "ppo/kl_coef": kl_coef,
        "ppo/score": scores.mean().item(),
        "ppo/response_length": samples.lengths.float().mean().item(),
        "ppo/return": returns[:, 0].mean().item(),
    }
    if rm_scores is not None:
        stats["ppo/rm_score"] = rm_scores.mean().item()
    if gold is not None:
        stats["ppo/gold_reward"] = gold.mean().item()
    return stats


def minibatch_step(settings: RunSettings, learner: Learner, rollout: Rollout, idx, counters: Counters, epoch: int,
                   book: LoopBookkeeping) -> float:
    """Step 6, one minibatch: clipped surrogate (+ vf_coef x clipped value loss), one optimiser
    step, its log and eval triggers. Returns the minibatch's approximate KL to the rollout policy."""
    m, critic_free = settings.method.online, learner.value_head is None
    t_step = time.time()
    mb_mask = rollout.mask[idx]
    logps, values, logits = policy_forward(learner.policy, learner.value_head, rollout.ids[idx], rollout.attn[idx],
                                           rollout.samples.prompt_width)
    pg_loss, clipfrac, approx_kl = clipped_policy_loss(logps, rollout.old_logps[idx], rollout.advantages[idx],
                                                       mb_mask, m.clip_ratio)
    loss = pg_loss
    if not critic_free:
        vf_loss, vf_clipfrac = clipped_value_loss(values, rollout.old_values[idx], rollout.returns[idx], mb_mask,
                                                  m.value_clip)
        loss = pg_loss + m.vf_coef * vf_loss
    counters.step += 1
    step = counters.step
    loss, grad_norm = learner.optimisation.step(loss, step)
    book.count_tokens(int(rollout.attn[idx].sum()))
    # the whole minibatch's (every process's shard): the target-KL stop is the same on every rank
    approx_kl_value = mean_over_processes({"approx_kl": approx_kl.item()})["approx_kl"]
    book.train_time += time.time() - t_step

    def metrics() -> dict:
        out = dict(rollout.stats)
        out.update(learner.optimisation.metrics(loss, grad_norm))
        out.update({"ppo/policy_loss": pg_loss.item(), "ppo/clipfrac": clipfrac.item(), "ppo/approx_kl": approx_kl.item(),
                    "ppo/entropy": entropy_from_logits(logits.detach(), mb_mask).item(),
                    "ppo/epoch": float(epoch), "ppo/rollouts": float(counters.rollouts),
                    "ppo/early_stops": float(counters.early_stops)})
        if not critic_free:
            out.update({"ppo/value_loss": vf_loss.item(), "ppo/vf_clipfrac": vf_clipfrac.item(),
                        "ppo/value_mean": masked_mean(values.detach(), mb_mask).item()})
        return out

    eval_every, t = settings.eval.every_n_steps, settings.train  # eval_every 0: only at the end
    if step % t.log_every == 0 or step == 1:
        book.log(step, metrics())
    if step == t.max_steps or (eval_every and step % eval_every == 0):
        book.evaluate(step, learner.unwrapped)
    return approx_kl_value


def optimise_on_rollout(settings: RunSettings, learner: Learner, rollout: Rollout, perm_gen, counters: Counters,
                        book: LoopBookkeeping) -> None:
    """Step 6: `ppo_epochs` x `n_minibatches` clipped updates on this batch, until the step budget."""
    m = settings.method.online
    # this process's share of every minibatch, drawn from its own block of the rollout
    mb_size = max(1, m.rollout_batch_size // m.n_minibatches) // process_count()
    device = rollout.ids.device
    for epoch in range(m.ppo_epochs):
        epoch_approx_kl = []
        order = torch.randperm(len(rollout.samples.prompts), generator=perm_gen)
        for start in range(0, len(order), mb_size):
            if counters.step >= settings.train.max_steps:
                break
            idx = order[start:start + mb_size].to(device)
            epoch_approx_kl.append(minibatch_step(settings, learner, rollout, idx, counters, epoch, book))
        # target-KL early stop (cleanrl `target_kl`): the policy moved too far from the rollout
        # policy in this epoch; skip the remaining epochs and sample a fresh batch.
        if m.target_kl is not None and epoch_approx_kl and sum(epoch_approx_kl) / len(epoch_approx_kl) > m.target_kl:
            counters.early_stops += 1
            break


def online_loop(settings: RunSettings, prepared, tracker, on_eval=None, critic_free: bool = False) -> RunResult:
    """PPO (critic_free=False) or RLOO (critic_free=True): rollouts and clipped updates until
    `train.max_steps` optimiser steps."""
    m, seed, max_steps = settings.method.online, settings.train.seed, settings.train.max_steps
    t_setup = time.time()
    reward_model = reward_model_for(settings, prepared, tracker)
    timings = dict(prepared.timings, reward_model_seconds=time.time() - t_setup)
    learner = make_learner(settings, prepared.models, critic_free)
    kl_ctl = AdaptiveKLController(m.kl_coef, m.adaptive_kl_target, m.adaptive_kl_horizon) if m.adaptive_kl else None
    kl_coef = float(m.kl_coef)
    learner.policy.train()

    prompts = list(dict.fromkeys(r.prompt for r in prepared.train_records))
    stream = _prompt_stream(prompts, m.rollout_batch_size, seed, repeats=m.rloo_k if critic_free else 1)
    perm_gen = torch.Generator().manual_seed(seed + 1)
    counters, book = Counters(), LoopBookkeeping(settings, prepared, tracker, on_eval)
    while counters.step < max_steps:
        t_rollout = time.time()
        rollout = collect_rollout(settings, prepared, learner, reward_model, contiguous_share(next(stream)),
                                  counters.rollouts, kl_coef, critic_free)
        counters.rollouts += 1
        book.train_time += time.time() - t_rollout
        optimise_on_rollout(settings, learner, rollout, perm_gen, counters, book)
        # 7. adaptive KL coefficient (Ziegler et al. 2019), from this batch's sequence KL
        if kl_ctl is not None:  # the whole batch's KL (every process's block): the same coefficient on every rank
            batch_kl = mean_over_processes({"kl": rollout.seq_kl.mean().item()})["kl"]
            kl_coef = kl_ctl.update(batch_kl, len(rollout.samples.prompts) * process_count())

    summary = {"ppo/rollouts": float(counters.rollouts), "ppo/early_stops": float(counters.early_stops),
               "ppo/final_kl_coef": kl_coef,
               "train/samples_per_second": counters.rollouts * m.rollout_batch_size / max(book.train_time, 1e-9)}
    if reward_model is not None:
        summary.update(reward_model.stats)
    return book.finish(timings, summary)
