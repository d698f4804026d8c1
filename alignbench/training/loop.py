"""What the offline and online loops share: the accelerator, AdamW with its schedule, one optimiser
step (fault drills, the finite-loss check, zero_grad, backward, clipping, step, schedule), when to
log, evaluate and checkpoint, the bookkeeping of a run's time and tokens, and the run's summary."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from alignbench.training.checkpoint import LoopState, save_checkpoint
from alignbench.training.distributed import is_main, mean_over_processes, run_on_main, sum_over_processes
from alignbench.training.settings import FaultDrills, RunSettings, TrainSettings

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf: the run fails with this reason instead of training on garbage
    (tagged diverged at `step` first, `train`)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


# The tags of a run that left the sane range (`diverged_tags`): a confirmation seed that did is
# counted and shown by the report, not averaged in unseen.
DIVERGED_TAG = "diverged"


def diverged_tags(step: int, reason: str) -> dict:
    return {DIVERGED_TAG: "true", f"{DIVERGED_TAG}.step": str(step), f"{DIVERGED_TAG}.reason": reason}


def divergence(metrics: dict, max_kl: float) -> str | None:
    """Why an evaluation says the policy has left the sane range, or None: its sampled KL to the
    reference is not finite or above `max_kl` nats/seq (`eval.diverged_kl`)."""
    kl = float(metrics.get("eval/kl", 0.0))
    if not math.isfinite(kl):
        return f"sampled KL is {kl}"
    if kl > max_kl:
        return f"sampled KL {kl:.1f} nats/seq is above eval.diverged_kl={max_kl:g}"
    return None


@dataclass
class RunResult:
    metrics: dict          # final eval metrics + training summary
    history: list          # (step, metrics) of every eval
    rows: list             # final samples table
    timings: dict


def make_accelerator(precision: str, device: torch.device):
    """accelerate places the model, applies mixed precision (bf16 autocast on CUDA) and, under
    `torchrun` or `accelerate launch` with several processes, wraps the policy in DDP (gloo on CPU,
    nccl on CUDA): the same loop serves 1 CPU, 1 GPU or many processes. Each process takes its
    slice of every global batch (`shard`)."""
    from accelerate import Accelerator

    from alignbench.models.loading import pick_dtype

    mixed = "bf16" if pick_dtype(precision, device) == torch.bfloat16 else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)


def shard(accelerator, idx: torch.Tensor) -> torch.Tensor:
    """This process's part of a global batch (DDP averages the gradients across processes)."""
    return idx[accelerator.process_index::accelerator.num_processes]


def make_optimizer(train: TrainSettings, params, lr: float):
    optimizer = torch.optim.AdamW(params, lr=lr, betas=train.adam_betas, weight_decay=train.weight_decay)
    warmup = max(1, train.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return optimizer, scheduler


def compiled_for_training(enabled: bool, policy):
    """`train.compile`: the policy's training forward (and with it the backward) under `torch.compile`,
    dynamic shapes because packed rows change length every step. Off by default: on a 2-core CPU
    compiling costs more than its faster steps save over a default run (measured: docs/performance.md). Evaluation and checkpoints use the eager module (`LoopBookkeeping.evaluate` unwraps it)."""
    return torch.compile(policy, dynamic=True) if enabled else policy


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()} at step {step}", step)


def inject_faults(f: FaultDrills, loss: torch.Tensor, step: int) -> torch.Tensor:
    """Test/drill hooks (all off by default): NaN loss, a raised error, a slow step."""
    if f.sleep_per_step:
        time.sleep(f.sleep_per_step)
    if f.raise_at_step is not None and step == f.raise_at_step:
        raise RuntimeError("CUDA out of memory (simulated by fault.raise_at_step)")
    if f.nan_loss_at_step is not None and step == f.nan_loss_at_step:
        return loss * float("nan")
    return loss


def run_evaluation(prepared, policy, step: int, tracker, on_eval, history: list):
    result = prepared.evaluator.evaluate(policy)
    constant = prepared.evaluator.constant_metrics  # logged once, before the first evaluation (`train`)
    tracker.log_metrics({k: v for k, v in result.metrics.items() if k not in constant}, step)
    history.append((step, result.metrics))
    log.info("step %d: win rate %.3f [%.3f, %.3f], KL %.2f nats", step, result.metrics["eval/win_rate"],
             result.metrics["eval/win_rate_ci_low"], result.metrics["eval/win_rate_ci_high"], result.metrics["eval/kl"])
    if on_eval is not None:
        on_eval(step, result.metrics)  # may raise (a sweep's pruner)
    return result


@dataclass
class Optimisation:
    """AdamW and its schedule inside the accelerator, over `params` (the ones clipped together, to
    `max_grad_norm`), with the run's fault drills."""

    accelerator: object
    optimizer: object
    scheduler: object
    params: list
    max_grad_norm: float
    faults: FaultDrills

    def step(self, loss: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on `loss` (after the fault drills and the finite check): the loss and grad norm."""
        loss = inject_faults(self.faults, loss, step)
        check_finite(loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss, grad_norm

    def metrics(self, loss: torch.Tensor, grad_norm) -> dict:
        """The train/* metrics every method logs."""
        return {"train/loss": loss.item(), "train/grad_norm": float(grad_norm),
                "train/lr": self.scheduler.get_last_lr()[0]}


@dataclass
class LoopBookkeeping:
    """What a loop writes down as it goes: seconds training and evaluating, tokens seen, every eval
    so far (the last one is the run's result); and the logging, evaluation and checkpoint it is told
    to do. When to do them is each loop's own `if step % ...` lines. `settings`: the run's (what
    counts as diverged, the config a checkpoint keeps)."""

    settings: RunSettings
    prepared: object
    tracker: object
    on_eval: object = None
    history: list = field(default_factory=list)
    result: object = None
    train_time: float = 0.0
    eval_time: float = 0.0
    tokens_seen: int = 0
    diverged: tuple[int, str] | None = None  # (first step, why) once an evaluation left the sane range

    def log(self, step: int, metrics: dict) -> None:
        """Each process's train metrics averaged over the processes (its shard's; every rank calls it)."""
        self.tracker.log_metrics(mean_over_processes(metrics), step)

    def evaluate(self, step: int, policy) -> None:
        """One evaluation of `policy` (its eager module: a compiled one would recompile per shape).
        Under DDP rank 0 evaluates the whole eval set and the others get its result (or its error,
        e.g. a sweep's pruning, raised on every rank)."""
        t_eval = time.time()
        policy = getattr(policy, "_orig_mod", policy)
        result = run_on_main(lambda: run_evaluation(self.prepared, policy, step, self.tracker, self.on_eval, self.history))
        if not is_main():
            self.history.append((step, result.metrics))
        self.result = result
        self.eval_time += time.time() - t_eval
        reason = divergence(self.result.metrics, self.settings.eval.diverged_kl)
        if reason and self.diverged is None:  # the first step it happened; the run goes on and is shown
            self.diverged = (step, reason)
            self.tracker.set_tags(diverged_tags(step, reason))
            log.warning("WARNING: the run diverged at step %d: %s", step, reason)

    def count_tokens(self, n_tokens: int) -> None:
        """Tokens of the whole global batch (every process's shard)."""
        self.tokens_seen += sum_over_processes(n_tokens)

    def checkpoint(self, step: int, policy, optimisation: Optimisation, batches_drawn: int) -> None:
        """Rank 0 writes it (every rank holds the same weights and optimiser state under DDP)."""
        if not is_main():
            return
        state = LoopState(step, batches_drawn, self.history, self.train_time, self.eval_time, self.tokens_seen)
        save_checkpoint(self.settings.config_yaml, self.tracker, policy, optimisation, state)

    def restore(self, state: LoopState) -> None:
        """Go on from a checkpoint's bookkeeping (its eval history, seconds and tokens so far)."""
        self.history = list(state.history)
        self.train_time, self.eval_time, self.tokens_seen = state.train_time, state.eval_time, state.tokens_seen
        for step, metrics in self.history:  # the run's tags say so already; the summary needs it too
            reason = divergence(metrics, self.settings.eval.diverged_kl)
            if reason and self.diverged is None:
                self.diverged = (step, reason)

    def finish(self, timings: dict, extra: dict) -> RunResult:
        """The run's result: the last eval's metrics, the training summary, then the loop's `extra` figures."""
        timings.update(train_seconds=self.train_time, eval_seconds=self.eval_time)
        summary = dict(self.result.metrics)
        # the training seconds are logged once, as time/train_seconds with the other timings
        summary.update({"train/tokens": float(self.tokens_seen),
                        "train/diverged": float(self.diverged is not None)})
        if self.diverged is not None:
            summary["train/diverged_step"] = float(self.diverged[0])
        summary.update(extra)
        return RunResult(metrics=summary, history=self.history, rows=self.result.rows, timings=timings)
