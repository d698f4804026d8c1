"""One training run, top to bottom: validate → models → data → reference log-probs → loop → eval.

`train(cfg, tracker, on_eval)` is a plain function: the CLI wraps it in an MLflow run, a sweep
wraps it in an Optuna trial. Nothing here imports mlflow or optuna.

The offline loop serves DPO, IPO, KTO and SimPO with the same batches, optimiser (AdamW),
schedule (linear warm-up, then constant), gradient clipping, precision and step budget;
PPO has its own loop in `alignbench.ppo` built from the same parts.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf

from alignbench import cache
from alignbench.data import builtin_task as task
from alignbench.config import validate
from alignbench.evaluation.evaluator import KL_ESTIMATOR, Evaluator
from alignbench.models.generation import sample
from alignbench.evaluation.judges import GoldJudge, RewardModelJudge
from alignbench.data.batching import index_batches, trim_padding
from alignbench.data.parsing import parse_rows
from alignbench.data.preparing import load_preference_data, require_enough, to_unpaired
from alignbench.data.reading import read_rows
from alignbench.models.logps import pair_logps, sequence_logps, unpaired_logps
from alignbench.losses.dpo import dpo_loss
from alignbench.losses.ipo import ipo_loss
from alignbench.losses.kto import kto_loss, mismatched_indices
from alignbench.losses.simpo import resolve_simpo_gamma, simpo_loss
from alignbench.models.loading import Models, load_models
from alignbench.data.records import PreferenceRecord, UnpairedRecord
from alignbench.data.tokenizing import build_sequences, tokenize_pairs, tokenize_unpaired

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf: the run fails with this reason instead of training on garbage."""


class NullTracker:
    """Keeps what would be logged in memory (tests, benchmarks, tracking disabled)."""

    def __init__(self):
        self.params: dict = {}
        self.tags: dict = {}
        self.metrics: list[tuple[int, dict]] = []
        self.artifacts: dict[str, object] = {}

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def set_tags(self, tags: dict) -> None:
        self.tags.update(tags)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_files(self, documents: dict | None = None, tables: dict | None = None) -> None:
        self.artifacts.update(documents or {})
        self.artifacts.update(tables or {})


@dataclass
class Prepared:
    """Everything a run needs before its first optimiser step."""

    models: Models
    train_records: list
    eval_records: list
    eval_prompts: list[str]
    drops: dict
    evaluator: Evaluator
    builtin_task: bool
    timings: dict = field(default_factory=dict)


@dataclass
class RunResult:
    metrics: dict          # final eval metrics + training summary
    history: list          # (step, metrics) of every eval
    rows: list             # final samples table
    timings: dict


# --------------------------------------------------------------------------- data

def builtin_pairs(cfg, models: Models) -> list[PreferenceRecord]:
    """Preference pairs for the built-in task: two SFT samples per prompt, Bradley-Terry labelled."""
    d = cfg.data
    key = cache.content_key("builtin-pairs-v1", models.key, d, cfg.seed, cfg.train.max_prompt_length)

    def write(path):
        prompts = task.make_prompts(d.n_train_prompts, cfg.seed)
        with models.reference_model() as sft:
            kw = dict(max_new_tokens=d.sample_max_new_tokens, temperature=1.0,
                      max_prompt_length=cfg.train.max_prompt_length, batch_size=256, device=models.device)
            a = sample(sft, models.tokenizer, prompts, seed=cfg.seed * 2 + 1, **kw).responses
            b = sample(sft, models.tokenizer, prompts, seed=cfg.seed * 2 + 2, **kw).responses
        rng = random.Random(f"bt-{cfg.seed}")
        rows = []
        for p, ra, rb in zip(prompts, a, b):
            a_wins = task.bradley_terry_label(task.gold_reward(p, ra), task.gold_reward(p, rb), d.bt_temperature, rng)
            rows.append({"prompt": p, "chosen": ra if a_wins else rb, "rejected": rb if a_wins else ra})
        (path / "pairs.json").write_text(json.dumps(rows))

    path, _ = cache.cached(cfg.cache_dir, "builtin_pairs", key, write)
    return [PreferenceRecord(**r) for r in json.loads((path / "pairs.json").read_text())]


def make_judge(cfg, models: Models, prepared_records=None):
    if cfg.judge.name == "gold":
        return GoldJudge()
    if cfg.judge.path == "trained":
        from alignbench.models.reward_model import load_or_train_reward_model

        return load_or_train_reward_model(cfg, models, prepared_records)
    return RewardModelJudge.from_pretrained(cfg.judge.path, models.device, cfg.judge.trust_remote_code,
                                            cfg.judge.batch_size)


def prepare(cfg) -> Prepared:
    """Models, filtered data, evaluator (its reference side cached): the per-run set-up."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    builtin_task = cfg.data.source == "builtin"
    if builtin_task:
        sft_examples = lambda: task.sft_corpus(cfg.model.sft.n_examples, cfg.seed)  # noqa: E731 (built on a miss only)
        models = load_models(cfg, sft_examples, corpus_id=cache.content_key("task-sft-corpus-v1", cfg.model.sft.n_examples, cfg.seed))
        records, drops = builtin_pairs(cfg, models), {}
        eval_prompts = task.make_prompts(cfg.data.n_eval_prompts, cfg.seed + 1)[: cfg.eval.n_prompts]
        eval_records = records[-cfg.eval.n_pref_pairs:]
        train_records = records[: -cfg.eval.n_pref_pairs]
    else:
        if cfg.model.source == "builtin":
            # The built-in model learns its tokenizer and SFT from the data's preferred responses
            # (the DPO paper's recipe), so read the rows first; chat rows use the plain rendering.
            records, parse_drops = parse_rows(read_rows(cfg.data), cfg.data.format)
            require_enough(records, 8, parse_drops)  # a file with nothing usable: a clear error before SFT
            sft_examples = [(r.prompt, r.chosen) if isinstance(r, PreferenceRecord) else (r.prompt, r.completion)
                            for r in records if getattr(r, "desirable", True)][: cfg.model.sft.n_examples]
            models = load_models(cfg, sft_examples, corpus_id=cache.content_key("data-sft-corpus-v1", sft_examples))
        else:
            models = load_models(cfg)
        prepared_data = load_preference_data(
            cfg.data, models.tokenizer, max_length=cfg.train.max_length,
            max_prompt_length=cfg.train.max_prompt_length, seed=cfg.seed, logger=log)
        train_records, eval_records, drops = prepared_data.train, prepared_data.eval, prepared_data.drops
        eval_prompts = list(dict.fromkeys(r.prompt for r in eval_records))[: cfg.eval.n_prompts]
    if isinstance(train_records[0], UnpairedRecord) and cfg.method.name != "kto":
        from alignbench.config import ConfigError

        raise ConfigError(f"method={cfg.method.name} needs paired data; data={cfg.data.name} is unpaired (use method=kto)")

    pref_eval = None
    paired_eval = [r for r in eval_records if isinstance(r, PreferenceRecord)][: cfg.eval.n_pref_pairs]
    if paired_eval:
        tokens = cached_tokenize_pairs(cfg, paired_eval, models.tokenizer, models.key)
        pref_eval = (tokens, reference_pair_logps(cfg, models, tokens))
    judge = make_judge(cfg, models, train_records)
    evaluator = Evaluator(cfg, models, judge, eval_prompts, pref_eval, builtin_task)
    return Prepared(models, train_records, eval_records, eval_prompts, dict(drops), evaluator, builtin_task,
                    {"setup_seconds": time.time() - t0})


# --------------------------------------------------------------------------- log-probs

def cached_tokenize_pairs(cfg, records: list[PreferenceRecord], tokenizer, model_key: str) -> dict[str, torch.Tensor]:
    """`tokenize_pairs`, cached on disk under the tokenizer (the model key), the records and the lengths."""
    from safetensors.torch import load_file, save_file

    t = cfg.train
    key = cache.content_key("tokens-pairs-v1", model_key, cache.records_digest(records), t.max_length, t.max_prompt_length)

    def write(path):
        tokens = tokenize_pairs(records, tokenizer, t.max_length, t.max_prompt_length)
        save_file({k: v.contiguous() for k, v in tokens.items()}, str(path / "tokens.safetensors"))

    path, _ = cache.cached(cfg.cache_dir, "tokens", key, write)
    return load_file(str(path / "tokens.safetensors"))


REFERENCE_FORWARDS = {"count": 0}  # reference forward passes actually run (tests assert the cache skips them)


def _cached_reference(cfg, models: Models, tokens: dict, kind: str, compute) -> dict[str, torch.Tensor]:
    """Reference log-probs of fixed data, cached on disk: trials after the first skip the forward."""
    from safetensors.torch import load_file, save_file

    key = cache.content_key("ref-logps-v1", kind, models.key, cache.tensor_digest(tokens), models.padding_free)

    def write(path):
        with models.reference_model() as ref:
            REFERENCE_FORWARDS["count"] += 1
            out = compute(ref)
        save_file({k: v.contiguous() for k, v in out.items()}, str(path / "logps.safetensors"))

    path, _ = cache.cached(cfg.cache_dir, "ref_logps", key, write)
    return load_file(str(path / "logps.safetensors"))


def reference_pair_logps(cfg, models: Models, tokens: dict) -> dict[str, torch.Tensor]:
    return _cached_reference(cfg, models, tokens, "pairs",
                             lambda ref: pair_logps(ref, tokens, cfg.eval.batch_size, models.device,
                                                    models.padding_free))


def reference_unpaired_logps(cfg, models: Models, tokens: dict) -> dict[str, torch.Tensor]:
    def compute(ref):
        bs, device, packed = cfg.eval.batch_size, models.device, models.padding_free
        out = {"logps": unpaired_logps(ref, tokens, bs, device, padding_free=packed)}
        if "kl_input_ids" in tokens:
            out["kl_logps"] = unpaired_logps(ref, tokens, bs, device, prefix="kl_", padding_free=packed)
        return out
    return _cached_reference(cfg, models, tokens, "unpaired", compute)


# --------------------------------------------------------------------------- objectives

def paired_loss(method_cfg, policy, batch: dict, ref: dict | None, device, padding_free: bool = False):
    """DPO / IPO / SimPO on one batch: chosen and rejected in a single concatenated forward."""
    n = batch["chosen_input_ids"].shape[0]
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def cat(k):
        a, b = batch[f"chosen_{k}"], batch[f"rejected_{k}"]
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=0)
        return torch.cat([pad(a), pad(b)])

    # trim on the host, then move: no device sync for the width on GPU
    ids, attn, resp = (t.to(device) for t in trim_padding(cat("input_ids"), cat("attention_mask"), cat("response_mask")))
    logps, n_tok = sequence_logps(policy, ids, attn, resp, padding_free)
    pc, pr, nc, nr = logps[:n], logps[n:], n_tok[:n], n_tok[n:]
    name = method_cfg.name
    if name == "dpo":
        return dpo_loss(pc, pr, ref["chosen"].to(device), ref["rejected"].to(device),
                        beta=method_cfg.beta, label_smoothing=method_cfg.label_smoothing)
    if name == "ipo":
        return ipo_loss(pc, pr, ref["chosen"].to(device), ref["rejected"].to(device), tau=method_cfg.tau,
                        chosen_lengths=nc, rejected_lengths=nr, length_normalize=method_cfg.length_normalize)
    if name == "simpo":
        gamma = resolve_simpo_gamma(method_cfg.beta, method_cfg.gamma_beta_ratio, method_cfg.gamma_convention)
        return simpo_loss(pc, pr, nc, nr, beta=method_cfg.beta, gamma=gamma)
    raise ValueError(f"not a paired offline method: {name}")


def kto_batch_loss(method_cfg, policy, batch: dict, ref: dict, device, padding_free: bool = False):
    ids, attn, resp = trim_padding(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    logps, _ = sequence_logps(policy, ids.to(device), attn.to(device), resp.to(device), padding_free)
    policy_kl = ref_kl = None
    if "kl_input_ids" in batch:
        with torch.no_grad():  # z0 is detached anyway: no graph for the mismatched pairs (as TRL)
            kids, kattn, kresp = trim_padding(batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_response_mask"])
            policy_kl, _ = sequence_logps(policy, kids.to(device), kattn.to(device), kresp.to(device), padding_free)
        ref_kl = ref["kl_logps"].to(device)
    return kto_loss(logps, ref["logps"].to(device), batch["desirable"].to(device), policy_kl, ref_kl,
                    beta=method_cfg.beta, desirable_weight=method_cfg.desirable_weight,
                    undesirable_weight=method_cfg.undesirable_weight)


def kto_tokens(records: list[UnpairedRecord], tokenizer, cfg) -> dict:
    """Unpaired tokens plus, for each example i, a mismatched sequence (prompt_i, completion_j).

    j is fixed at preparation (as TRL does), so the reference's log-probs of the mismatched
    pairs can be cached like the rest. With fewer than 3 examples no mismatched pair exists
    and z0 falls back to 0.
    """
    tokens = tokenize_unpaired(records, tokenizer, cfg.train.max_length, cfg.train.max_prompt_length)
    # offset -2 (j = i+2): to_unpaired interleaves each prompt's two completions, so i+1 may share i's prompt.
    j = mismatched_indices(len(records), offset=-2).tolist()
    if j:
        ids, attn, resp = build_sequences(tokens["prompt_tokens"], [tokens["completion_tokens"][k] for k in j],
                                          tokenizer.pad_token_id, cfg.train.max_length)
        tokens.update(kl_input_ids=ids, kl_attention_mask=attn, kl_response_mask=resp)
    return tokens


# --------------------------------------------------------------------------- the loop

def make_accelerator(cfg, device: torch.device):
    """accelerate places the model, applies mixed precision (bf16 autocast on CUDA) and, under
    `accelerate launch` on several GPUs, wraps the policy in DDP: the same loop serves 1 CPU,
    1 GPU or many. Each process takes its slice of every global batch (`shard`)."""
    from accelerate import Accelerator

    from alignbench.models.loading import pick_dtype

    mixed = "bf16" if pick_dtype(cfg, device) == torch.bfloat16 else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)


def shard(accelerator, idx: torch.Tensor) -> torch.Tensor:
    """This process's part of a global batch (DDP averages the gradients across processes)."""
    return idx[accelerator.process_index::accelerator.num_processes]


def make_optimizer(cfg, params, lr: float):
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.train.adam_betas),
                                  weight_decay=cfg.train.weight_decay)
    warmup = max(1, cfg.train.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return optimizer, scheduler


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()} at step {step}")


def inject_faults(cfg, loss: torch.Tensor, step: int) -> torch.Tensor:
    """Test/drill hooks (all off by default): NaN loss, a raised error, a slow step."""
    f = cfg.fault
    if f.sleep_per_step:
        time.sleep(f.sleep_per_step)
    if f.raise_at_step is not None and step == f.raise_at_step:
        raise RuntimeError("CUDA out of memory (simulated by fault.raise_at_step)")
    if f.nan_loss_at_step is not None and step == f.nan_loss_at_step:
        return loss * float("nan")
    return loss


def run_evaluation(prepared: Prepared, policy, step: int, tracker, on_eval, history: list):
    result = prepared.evaluator.evaluate(policy)
    tracker.log_metrics(result.metrics, step)
    history.append((step, result.metrics))
    log.info("step %d: win rate %.3f [%.3f, %.3f], KL %.2f nats", step, result.metrics["eval/win_rate"],
             result.metrics["eval/win_rate_ci_low"], result.metrics["eval/win_rate_ci_high"], result.metrics["eval/kl"])
    if on_eval is not None:
        on_eval(step, result.metrics)  # may raise (a sweep's pruner)
    return result


def offline_loop(cfg, prepared: Prepared, tracker, on_eval=None) -> RunResult:
    models, method = prepared.models, cfg.method
    device, tokenizer = models.device, models.tokenizer
    t_setup = time.time()
    if method.name == "kto":
        records = prepared.train_records
        if isinstance(records[0], PreferenceRecord):
            records = to_unpaired(records)
        tokens = kto_tokens(records, tokenizer, cfg)
        ref = reference_unpaired_logps(cfg, models, tokens)
        n_examples, per_step = len(records), 2 * cfg.train.batch_size  # same pairs per step as the others
    else:
        tokens = cached_tokenize_pairs(cfg, prepared.train_records, tokenizer, models.key)
        ref = None if method.name == "simpo" else reference_pair_logps(cfg, models, tokens)
        n_examples, per_step = len(prepared.train_records), cfg.train.batch_size
    timings = dict(prepared.timings, ref_seconds=time.time() - t_setup)

    policy = models.policy
    policy.train()
    optimizer, scheduler = make_optimizer(cfg, [p for p in policy.parameters() if p.requires_grad], method.lr)
    accelerator = make_accelerator(cfg, device)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    rng = torch.Generator().manual_seed(cfg.seed)
    order = index_batches(n_examples, per_step, lambda n: torch.randperm(n, generator=rng))
    history: list = []
    train_time = eval_time = 0.0
    tokens_seen = 0
    result = None
    for step in range(1, cfg.train.max_steps + 1):
        t_step = time.time()
        idx = shard(accelerator, next(order))
        batch = {k: v[idx] for k, v in tokens.items() if torch.is_tensor(v)}
        batch_ref = None if ref is None else {k: v[idx] for k, v in ref.items()}
        if method.name == "kto":
            out = kto_batch_loss(method, policy, batch, batch_ref, device, models.padding_free)
            tokens_seen += int(batch["attention_mask"].sum())
        else:
            out = paired_loss(method, policy, batch, batch_ref, device, models.padding_free)
            tokens_seen += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
        loss = inject_faults(cfg, out.losses.mean(), step)
        check_finite(loss, step)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        train_time += time.time() - t_step

        if step % cfg.train.log_every == 0 or step == 1:
            m = {"train/loss": loss.item(), "train/grad_norm": float(grad_norm), "train/lr": scheduler.get_last_lr()[0]}
            if method.name == "kto":
                m["train/reward"] = out.rewards.mean().item()
                m["train/kl_z0"] = float(out.kl)
            else:
                m["train/chosen_reward"] = out.chosen_rewards.mean().item()
                m["train/rejected_reward"] = out.rejected_rewards.mean().item()
                m["train/margin"] = (out.chosen_rewards - out.rejected_rewards).mean().item()
                m["train/accuracy"] = (out.chosen_rewards > out.rejected_rewards).float().mean().item()
            tracker.log_metrics(m, step)

        every = cfg.eval.every_n_steps
        if step == cfg.train.max_steps or (every and step % every == 0):
            t_eval = time.time()
            result = run_evaluation(prepared, accelerator.unwrap_model(policy), step, tracker, on_eval, history)
            eval_time += time.time() - t_eval
    timings.update(train_seconds=train_time, eval_seconds=eval_time)
    summary = dict(result.metrics)
    summary.update({"train/seconds": train_time, "train/tokens": float(tokens_seen),
                    "train/pairs_per_second": cfg.train.max_steps * cfg.train.batch_size / max(train_time, 1e-9)})
    return RunResult(metrics=summary, history=history, rows=result.rows, timings=timings)


def run_params(cfg, prepared: Prepared | None = None) -> dict:
    """What is logged as params: the flattened resolved config plus the conventions in force."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    flat["eval.kl_estimator"] = KL_ESTIMATOR
    flat["eval.win_rate_ci"] = "wilson95, ties count 1/2"
    if cfg.method.name == "ipo":
        flat["method.convention"] = "mean over tokens (TRL)" if cfg.method.length_normalize else "sum over tokens (IPO paper)"
    if cfg.method.name == "simpo":
        flat["method.gamma"] = resolve_simpo_gamma(cfg.method.beta, cfg.method.gamma_beta_ratio, cfg.method.gamma_convention)
    if prepared is not None:
        flat["data.n_train"] = len(prepared.train_records)
        flat["data.n_eval_prompts"] = len(prepared.eval_prompts)
        for reason, count in prepared.drops.items():
            flat[f"data.dropped.{reason}"] = count
    return flat


def flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def settle_heap() -> None:
    """Collect garbage, then move every surviving object to the permanent generation.

    torch + transformers + mlflow leave ~500k long-lived objects on the heap; each automatic
    full collection during a trial walks all of them (~0.3 s here, most of a smoke trial's
    overhead). Frozen objects are skipped by later collections; the collect first means only
    live objects are frozen, and a sweep worker settles again before each trial.
    """
    gc.collect()
    gc.freeze()


def train(cfg, tracker=None, on_eval=None) -> RunResult:
    """Validate, prepare, train and evaluate one run; log through `tracker` (an MLflow run or NullTracker)."""
    validate(cfg)
    settle_heap()
    tracker = tracker or NullTracker()
    t0 = time.time()
    prepared = prepare(cfg)
    tracker.log_params(run_params(cfg, prepared))
    tracker.set_tags({"method": cfg.method.name})
    if cfg.method.name in ("ppo", "rloo"):  # online: sampled rollouts, reward model or gold reward
        from alignbench.training.online import ppo_loop

        result = ppo_loop(cfg, prepared, tracker, on_eval)
    else:
        result = offline_loop(cfg, prepared, tracker, on_eval)
    result.timings["total_seconds"] = time.time() - t0
    summary = {k: v for k, v in result.metrics.items() if k.startswith("train/")}  # seconds, tokens, pairs/s
    tracker.log_metrics(summary | {f"time/{k}": v for k, v in result.timings.items()}, cfg.train.max_steps)
    tracker.log_files(documents={"config.yaml": OmegaConf.to_container(cfg, resolve=True)},
                      tables={"eval_samples.json": result.rows})
    return result
