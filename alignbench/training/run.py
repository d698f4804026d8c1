"""One training run, top to bottom: validate → (resume: fetch the checkpoint) → set-up (models,
data, evaluator) → judge caveats → loop → summary → the policy kept (artifact `policy/`).

`train(cfg, tracker, on_eval, skip_policy)` (validate, then `train_validated`) is a plain function: the CLI wraps it in an MLflow run, a sweep
wraps it in an Optuna trial. It is where the composed config becomes the run's `RunSettings`
(`training.settings.run_settings`, once per run); everything it calls takes those settings. Nothing here imports mlflow or optuna. The loop is chosen here, from
the method's row in `alignbench.methods.METHODS`: the offline loop (`training.offline`: DPO, IPO,
KTO, SimPO on fixed preference data) or the online loop (`training.online`: PPO, RLOO on sampled
rollouts), built from the same parts (`training.loop`).
"""

from __future__ import annotations

import gc
import logging
import time

from alignbench.config import validate
from alignbench.evaluation.evaluator import KL_ESTIMATOR, win_rate_ci_method
from alignbench.evaluation.judges import judge_accuracy_caveat, judge_bias_caveat
from alignbench.tracking.artifacts import SAMPLES_ARTIFACT
from alignbench.tracking.null import NullTracker
from alignbench.training.distributed import check_batch_split, is_main, process_count, run_on_main
from alignbench.training.checkpoint import CHECKPOINTS, fetch_checkpoint, flat, save_policy
from alignbench.training.loop import NonFiniteLoss, RunResult, diverged_tags
from alignbench.training.offline import offline_loop
from alignbench.training.online import online_loop
from alignbench.training.settings import RunSettings, run_settings, saved_config
from alignbench.training.setup import Prepared, prepare

log = logging.getLogger(__name__)


# The params a run logs from its config (the whole resolved config is its `config.yaml` artifact):
# what tells runs apart in the MLflow UI and what the report reads back. Every `method.*` and
# `judge.*` key (a sweep's searched ones among them), the model, data, seeds and budget; nothing
# of other commands (`report.*`, `ui.*`, `tracking.*`) or of the set-up (SFT, batching, faults).
KEY_PARAMS = ("seed", "task_seed", "device", "precision", "model.name", "model.path", "model.gguf.file",
              "data.name", "data.path", "train.max_steps", "train.batch_size", "eval.split", "eval.n_prompts",
              "eval.samples_per_prompt")
KEY_PARAM_PREFIXES = ("method.", "judge.", "model.lora.")


def run_params(settings: RunSettings, prepared: Prepared | None = None) -> dict:
    """What is logged as params: the config's key params (`KEY_PARAMS`) plus the conventions in force
    (the method's own, e.g. IPO's length convention, SimPO's resolved gamma) and, after the set-up,
    what the data came to (pairs, evaluation prompts, rows dropped or truncated)."""
    params = {k: v for k, v in flat(settings.config).items() if k in KEY_PARAMS or k.startswith(KEY_PARAM_PREFIXES)}
    params["eval.kl_estimator"] = KL_ESTIMATOR
    params["eval.win_rate_ci"] = win_rate_ci_method(settings.evaluator.samples_per_prompt)
    params.update(settings.method.params)
    if prepared is not None:
        params["data.n_train"] = len(prepared.train_records)
        params["eval.n_prompts_distinct"] = len(prepared.eval_prompts)  # of eval.split (eval.n_prompts asks for)
        for reason, count in prepared.drops.items():
            params[f"data.dropped.{reason}"] = count
        for part, count in prepared.truncated.items():  # kept, but cut to fit the token budget
            params[f"data.truncated.{part}"] = count
    return params


def judge_caveats(settings: RunSettings, prepared: Prepared) -> dict:
    """Tags saying plainly when the judge's win rates mean nothing (it cannot tell chosen from
    rejected on held-out pairs) or are biased (it is the reward model PPO/RLOO optimised); each is
    also printed."""
    tags = {}
    useless = judge_accuracy_caveat(prepared.evaluator.judge_metrics)
    if useless:
        tags["judge.warning"] = useless
    biased = judge_bias_caveat(settings.method.name, settings.judge.name, settings.judge.path, settings.method.reward)
    if biased:
        tags["judge.bias"] = biased
    for text in tags.values():
        log.warning("WARNING: %s", text)
    return tags


def settle_heap() -> None:
    """Collect garbage, then move every surviving object to the permanent generation.

    torch + transformers + mlflow leave ~500k long-lived objects on the heap; each automatic
    full collection during a trial walks all of them (~0.3 s here, most of a smoke trial's
    overhead). Frozen objects are skipped by later collections; the collect first means only
    live objects are frozen, and a sweep worker settles again before each trial.
    """
    gc.collect()
    gc.freeze()


def train(cfg, tracker=None, on_eval=None, skip_policy=None) -> RunResult:
    """Validate, prepare, train and evaluate one run; log through `tracker` (an MLflow run or NullTracker).
    `skip_policy(final metrics)`: why the trained policy is not worth saving (tag
    `alignbench.policy_not_saved`), or None to save it (a sweep's trial that can no longer be selected)."""
    validate(cfg)
    return train_validated(cfg, tracker, on_eval, skip_policy)


def train_validated(cfg, tracker=None, on_eval=None, skip_policy=None) -> RunResult:
    """`train` of a config its caller has validated already (the CLI does, before it opens the MLflow run)."""
    settle_heap()
    settings = run_settings(cfg)  # the one reading of the config; everything below takes the settings
    check_batch_split(settings.train.batch_size, settings.method.online)
    tracker = tracker or NullTracker()
    t0 = time.time()
    # before the set-up: fail fast; rank 0 fetches it into a local folder every rank reads (one host)
    checkpoint = None
    if settings.resume:
        checkpoint = run_on_main(lambda: fetch_checkpoint(settings.resume, settings.config, saved_config, tracker))
    prepared = prepare(settings)
    method = settings.method.row
    online = method.loop == "online"  # sampled rollouts scored by a reward model or the gold reward
    if checkpoint is None:  # a resumed run logged these before its first checkpoint
        tracker.log_params(run_params(settings, prepared))
        tracker.log_metrics(prepared.evaluator.constant_metrics, 0)  # once: every evaluation shares them
    processes = {"alignbench.processes": str(process_count())} if process_count() > 1 else {}  # one trial, N processes
    tracker.set_tags({"method": settings.method.name} | processes | judge_caveats(settings, prepared))
    try:
        if online:
            result = online_loop(settings, prepared, tracker, on_eval, critic_free=not method.value_head)
        else:
            result = offline_loop(settings, prepared, tracker, on_eval, checkpoint)
    except NonFiniteLoss as exc:  # it fails (nothing to train on), tagged diverged so that it is counted
        if exc.step is not None:
            tracker.set_tags(diverged_tags(exc.step, str(exc)))
        raise
    result.timings["total_seconds"] = time.time() - t0
    summary = {k: v for k, v in result.metrics.items() if k.startswith("train/")}  # tokens, pairs/s, divergence
    tracker.log_metrics(summary | {f"time/{k}": v for k, v in result.timings.items()}, settings.train.max_steps)
    tracker.log_files(documents={"config.yaml": settings.config},
                      tables={SAMPLES_ARTIFACT: result.rows})
    not_saved = skip_policy(result.metrics) if skip_policy is not None else None
    if not_saved:
        tracker.set_tags({"alignbench.policy_not_saved": not_saved})
    elif settings.train.save_policy and is_main():
        save_policy(prepared.models, tracker)
    if settings.train.checkpoint_every or checkpoint is not None:
        tracker.delete_artifacts(CHECKPOINTS)  # the run is complete: its policy is kept, its checkpoint is not needed
    return result
