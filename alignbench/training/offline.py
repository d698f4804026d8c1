"""The offline loop: the offline rows of `alignbench.methods.METHODS`, on
fixed preference data, with the same batches, optimiser (AdamW), schedule (linear warm-up, then
constant), gradient clipping, precision and step budget. `offline_objective` turns a method's row
into what the loop runs: its loss on a batch, its train metrics, whether it trains on unpaired
examples and needs the reference."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from alignbench.data.batching import index_batches, trim_padding
from alignbench.data.preparing import to_unpaired
from alignbench.data.records import PreferenceRecord, UnpairedRecord
from alignbench.data.tokenizing import build_sequences, tokenize_unpaired
from alignbench.losses.kto import mismatched_indices
from alignbench.data.measuring import LengthLimits
from alignbench.methods import Method
from alignbench.models.logps import sequence_logps
from alignbench.models.pairs import shared_prompt_pair_logps
from alignbench.training.checkpoint import restore_checkpoint
from alignbench.training.loop import (LoopBookkeeping, Optimisation, RunResult, compiled_for_training, make_accelerator,
                                     make_optimizer, shard)
from alignbench.training.reference import cached_tokenize_pairs, reference_pair_logps, reference_unpaired_logps
from alignbench.training.settings import MethodSettings, RunSettings


class BatchLoss(Protocol):
    """An offline objective on one batch: (mean loss, its train metrics built when asked, tokens in
    the batch). `PairedBatchLoss` (a paired row) and `UnpairedBatchLoss` (an unpaired row) are the two."""

    def __call__(self, policy, batch: dict, ref: dict | None, device, padding_free: bool,
                 share_prompt: bool = False) -> tuple[torch.Tensor, Callable[[], dict], int]: ...


@dataclass(frozen=True)
class Objective:
    """What an offline method optimises (`batch_loss`) and its row, which says what that needs."""

    batch_loss: BatchLoss
    row: Method


def offline_objective(method: MethodSettings) -> Objective:
    """The offline method's objective (its row in `alignbench.methods.METHODS`) as the loop runs it."""
    row = method.row
    if row.loop != "offline":
        raise ValueError(f"not an offline method: {method.name}")
    loss = UnpairedBatchLoss if row.unpaired else PairedBatchLoss
    return Objective(loss(method.objective), row)


@dataclass(frozen=True)
class PairedBatchLoss:
    """`pair_loss(chosen logps, rejected logps, chosen lengths, rejected lengths, reference)` on one
    batch: chosen and rejected in a single concatenated forward."""

    pair_loss: Callable

    def __call__(self, policy, batch: dict, ref: dict | None, device, padding_free: bool, share_prompt: bool = False):
        return paired_batch_loss(policy, batch, ref, device, padding_free, self.pair_loss, share_prompt)


@dataclass(frozen=True)
class UnpairedBatchLoss:
    """`unpaired_loss(logps, reference logps, desirable, policy KL logps, reference KL logps)` (KTO's)
    on one batch of single labelled examples."""

    unpaired_loss: Callable

    def __call__(self, policy, batch: dict, ref: dict | None, device, padding_free: bool = False,
                 share_prompt: bool = False):  # an unpaired example has no second side to share with
        return kto_batch_loss(self.unpaired_loss, policy, batch, ref, device, padding_free)


def paired_batch_loss(policy, batch: dict, ref: dict | None, device, padding_free: bool, pair_loss,
                      share_prompt: bool = False):
    """`PairedBatchLoss`'s work: one forward for both sides (concatenated, or one shared-prompt row
    per pair), the pair loss, its metrics."""
    n = batch["chosen_input_ids"].shape[0]
    ref = None if ref is None else {k: v.to(device) for k, v in ref.items()}
    n_tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    if share_prompt:
        keys = ("input_ids", "attention_mask", "response_mask")
        chosen, rejected = (trim_padding(*(batch[f"{side}_{k}"] for k in keys)) for side in ("chosen", "rejected"))
        chosen_logps, rejected_logps, chosen_n, rejected_n = shared_prompt_pair_logps(policy, chosen, rejected, device)
        out = pair_loss(chosen_logps, rejected_logps, chosen_n, rejected_n, ref)
        return out.losses.mean(), lambda: pair_metrics(out), n_tokens
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def cat(k):
        a, b = batch[f"chosen_{k}"], batch[f"rejected_{k}"]
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=0)  # noqa: E731
        return torch.cat([pad(a), pad(b)])

    # trim on the host, then move: no device sync for the width on GPU
    ids, attn, resp = (t.to(device) for t in trim_padding(cat("input_ids"), cat("attention_mask"), cat("response_mask")))
    logps, n_tok = sequence_logps(policy, ids, attn, resp, padding_free)
    out = pair_loss(logps[:n], logps[n:], n_tok[:n], n_tok[n:], ref)
    return out.losses.mean(), lambda: pair_metrics(out), n_tokens


def pair_metrics(out) -> dict:
    return {"train/chosen_reward": out.chosen_rewards.mean().item(),
            "train/rejected_reward": out.rejected_rewards.mean().item(),
            "train/margin": (out.chosen_rewards - out.rejected_rewards).mean().item(),
            "train/accuracy": (out.chosen_rewards > out.rejected_rewards).float().mean().item()}


def kto_batch_loss(unpaired_loss, policy, batch: dict, ref: dict, device, padding_free: bool = False):
    """`unpaired_loss` (KTO's) on one batch of single examples; z0 from the mismatched
    (prompt_i, completion_j) pairs."""
    ids, attn, resp = trim_padding(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    logps, _ = sequence_logps(policy, ids.to(device), attn.to(device), resp.to(device), padding_free)
    policy_kl = ref_kl = None
    if "kl_input_ids" in batch:
        with torch.no_grad():  # z0 is detached anyway: no graph for the mismatched pairs (as TRL)
            kids, kattn, kresp = trim_padding(batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_response_mask"])
            policy_kl, _ = sequence_logps(policy, kids.to(device), kattn.to(device), kresp.to(device), padding_free)
        ref_kl = ref["kl_logps"].to(device)
    from accelerate.utils import reduce  # z0 is the whole batch's: averaged over DDP processes

    out = unpaired_loss(logps, ref["logps"].to(device), batch["desirable"].to(device), policy_kl, ref_kl,
                        mean_across_processes=lambda kl: reduce(kl, reduction="mean"))
    metrics = lambda: kto_metrics(out, batch["desirable"].to(torch.bool))  # noqa: E731
    return out.losses.mean(), metrics, int(batch["attention_mask"].sum())


def kto_metrics(out, desirable: torch.Tensor) -> dict:
    """KTO's train metrics: the mean implicit reward beta * log-ratio, overall and of the desirable and
    undesirable examples apart (TRL's rewards/chosen and rewards/rejected), and z0."""
    metrics = {"train/reward": out.rewards.mean().item(), "train/kl_z0": float(out.kl)}
    for name, mask in (("desirable", desirable), ("undesirable", ~desirable)):
        if mask.any():
            metrics[f"train/reward_{name}"] = out.rewards[mask.to(out.rewards.device)].mean().item()
    return metrics


def kto_tokens(records: list[UnpairedRecord], tokenizer, limits: LengthLimits) -> dict:
    """Unpaired tokens plus, for each example i, a mismatched sequence (prompt_i, completion_j).

    j is fixed at preparation (as TRL does), so the reference's log-probs of the mismatched
    pairs can be cached like the rest. With fewer than 3 examples no mismatched pair exists
    and z0 falls back to 0.
    """
    tokens = tokenize_unpaired(records, tokenizer, limits.max_length, limits.max_prompt_length)
    # offset -2 (j = i+2): to_unpaired interleaves each prompt's two completions, so i+1 may share i's prompt.
    j = mismatched_indices(len(records), offset=-2).tolist()
    if j:
        ids, attn, resp = build_sequences(tokens["prompt_tokens"], [tokens["completion_tokens"][k] for k in j],
                                          tokenizer.pad_token_id, limits.max_length)
        tokens.update(kl_input_ids=ids, kl_attention_mask=attn, kl_response_mask=resp)
    return tokens


@dataclass
class TrainingData:
    """The tokenised training set, its reference log-probs (None: reference-free) and its batching."""

    tokens: dict
    ref: dict | None
    n_examples: int
    per_step: int       # examples per optimiser step


def training_data(settings: RunSettings, prepared, objective: Objective) -> TrainingData:
    """Tokens and cached reference log-probs of the training set, in the form the objective trains on."""
    models, batch_size, cache_dir = prepared.models, settings.train.batch_size, settings.cache_dir
    ref_batch_size = settings.evaluator.batch_size  # the reference's forwards batch like the evaluation's
    if objective.row.unpaired:
        records = prepared.train_records
        if isinstance(records[0], PreferenceRecord):
            records = to_unpaired(records)
        tokens = kto_tokens(records, models.tokenizer, settings.limits)
        ref = reference_unpaired_logps(models, tokens, ref_batch_size, cache_dir)
        return TrainingData(tokens, ref, len(records), 2 * batch_size)  # same pairs per step as the others
    tokens = cached_tokenize_pairs(prepared.train_records, models.tokenizer, models.key, settings.limits, cache_dir)
    ref = reference_pair_logps(models, tokens, ref_batch_size, cache_dir) if objective.row.uses_reference else None
    return TrainingData(tokens, ref, len(prepared.train_records), batch_size)


def offline_loop(settings: RunSettings, prepared, tracker, on_eval=None, checkpoint=None) -> RunResult:
    """Train `train.max_steps` steps; `checkpoint` (a fetched checkpoint folder): go on from its step."""
    models, objective, t = prepared.models, offline_objective(settings.method), settings.train
    t_setup = time.time()
    data = training_data(settings, prepared, objective)
    timings = dict(prepared.timings, reference_seconds=time.time() - t_setup)  # training data + reference log-probs

    policy = models.policy
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(t, params, settings.method.lr)
    accelerator = make_accelerator(t.precision, models.device)
    policy, optimizer = accelerator.prepare(compiled_for_training(t.compile, policy), optimizer)
    optimisation = Optimisation(accelerator, optimizer, scheduler, params, t.max_grad_norm, settings.faults)
    rng = torch.Generator().manual_seed(t.seed)
    order = index_batches(data.n_examples, data.per_step, lambda n: torch.randperm(n, generator=rng))
    book = LoopBookkeeping(settings, prepared, tracker, on_eval)
    eval_every, checkpoint_every = settings.eval.every_n_steps, t.checkpoint_every  # 0: never
    first = 1
    if checkpoint is not None:
        state = restore_checkpoint(checkpoint, models.policy, optimisation)
        book.restore(state)
        for _ in range(state.batches_drawn):  # the data position: replay the index stream
            next(order)
        first = state.step + 1
    for step in range(first, t.max_steps + 1):
        t_step = time.time()
        idx = shard(accelerator, next(order))
        batch = {k: v[idx] for k, v in data.tokens.items() if torch.is_tensor(v)}
        batch_ref = None if data.ref is None else {k: v[idx] for k, v in data.ref.items()}
        loss, method_metrics, n_tokens = objective.batch_loss(policy, batch, batch_ref, models.device,
                                                              models.padding_free, models.share_prompt)
        book.count_tokens(n_tokens)
        loss, grad_norm = optimisation.step(loss, step)
        book.train_time += time.time() - t_step
        if step % t.log_every == 0 or step == 1:
            book.log(step, optimisation.metrics(loss, grad_norm) | method_metrics())
        if step == t.max_steps or (eval_every and step % eval_every == 0):
            book.evaluate(step, accelerator.unwrap_model(policy))
        if checkpoint_every and step % checkpoint_every == 0 and step < t.max_steps:  # a finished run needs none
            book.checkpoint(step, models.policy, optimisation, batches_drawn=step)
    pairs_per_second = t.max_steps * t.batch_size / max(book.train_time, 1e-9)
    return book.finish(timings, {"train/pairs_per_second": pairs_per_second})
