"""One training run, top to bottom: validate → set-up (models, data, evaluator) → loop → summary.

`train(cfg, tracker, on_eval)` is a plain function: the CLI wraps it in an MLflow run, a sweep
wraps it in an Optuna trial. Nothing here imports mlflow or optuna. The loop is chosen here:
the offline loop (`training.offline`: DPO, IPO, KTO, SimPO on fixed preference data) or the
online loop (`training.online`: PPO, RLOO on sampled rollouts), built from the same parts
(`training.loop`).
"""

from __future__ import annotations

import gc
import time

from omegaconf import OmegaConf

from alignbench.config import validate
from alignbench.evaluation.evaluator import KL_ESTIMATOR, win_rate_ci_method
from alignbench.tracking.null import NullTracker
from alignbench.training.loop import RunResult
from alignbench.training.offline import offline_loop, offline_objective
from alignbench.training.online import online_loop
from alignbench.training.setup import Prepared, prepare


def run_params(cfg, prepared: Prepared | None = None, method_params: dict | None = None) -> dict:
    """What is logged as params: the flattened resolved config plus the conventions in force
    (`method_params`: the method's own, e.g. IPO's length convention, SimPO's resolved gamma)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    flat["eval.kl_estimator"] = KL_ESTIMATOR
    flat["eval.win_rate_ci"] = win_rate_ci_method(int(cfg.eval.get("samples_per_prompt", 1)))
    flat.update(method_params or {})
    if prepared is not None:
        flat["data.n_train"] = len(prepared.train_records)
        flat["data.n_eval_prompts"] = len(prepared.eval_prompts)
        flat["eval.n_prompts_distinct"] = len(prepared.eval_prompts)  # of eval.split (also logged, from the config)
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
    online = cfg.method.name in ("ppo", "rloo")  # sampled rollouts scored by a reward model or the gold reward
    method_params = {} if online else offline_objective(cfg.method).params
    tracker.log_params(run_params(cfg, prepared, method_params))
    tracker.set_tags({"method": cfg.method.name})
    if online:
        result = online_loop(cfg, prepared, tracker, on_eval, critic_free=cfg.method.name == "rloo")
    else:
        result = offline_loop(cfg, prepared, tracker, on_eval)
    result.timings["total_seconds"] = time.time() - t0
    summary = {k: v for k, v in result.metrics.items() if k.startswith("train/")}  # seconds, tokens, pairs/s
    tracker.log_metrics(summary | {f"time/{k}": v for k, v in result.timings.items()}, cfg.train.max_steps)
    tracker.log_files(documents={"config.yaml": OmegaConf.to_container(cfg, resolve=True)},
                      tables={"eval_samples.json": result.rows})
    return result
