"""One trial of a sweep: sample its params, compose its config, train it inside a child MLflow run
of the sweep's parent run (reporting `eval/win_rate` at each eval step to the pruner), and tell
Optuna how it ended (COMPLETE, PRUNED, or FAIL with a `failure_reason` user attr)."""

from __future__ import annotations

import logging
import math

import optuna
from optuna.trial import TrialState

from alignbench.sweep.liveness import ACTIVE
from alignbench.sweep.plan import Plan, compose_trial, param_overrides
from alignbench.tracking import mlflow_runs as tracking

log = logging.getLogger(__name__)

# Copied from the final eval onto the Optuna trial, for the summary and the dashboard.
RESULT_ATTRS = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/kl_per_token",
                "eval/gold_reward", "eval/reference_gold_reward")


class TrialPruned(optuna.TrialPruned):
    """Raised from `on_eval` when the pruner says stop: the MLflow run ends KILLED (tagged PRUNED)."""

    alignbench_status = "KILLED"


def sample_params(trial, space: dict) -> dict:
    params = {}
    for key, spec in space.items():
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec.get("type", "float") == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return params


def run_trial(plan: Plan, method: str, study, trial, parent_run_id: str, progress=None) -> TrialState:
    """Train one asked trial and tell Optuna its end; returns its state. An interrupt fails the trial
    ('interrupted') and propagates; any other error fails it and the worker goes on."""
    params = sample_params(trial, plan.spaces[method])
    key = (study.study_name, trial.number)
    ACTIVE.add(key)
    state, reason = TrialState.FAIL, None
    try:
        on_eval = _eval_callback(plan, method, trial, progress)
        result = _train_in_run(plan, method, study, trial, params, parent_run_id, on_eval)
        _tell_result(plan, study, trial, result)
        state = TrialState.COMPLETE
    except TrialPruned as exc:
        trial.set_user_attr("pruned_reason", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        state = TrialState.PRUNED
    except (KeyboardInterrupt, SystemExit) as exc:
        _fail(study, trial, f"interrupted: {type(exc).__name__} {exc}".strip(), "interrupted")
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _fail(study, trial, reason, "error")
        log.warning("%s trial %d FAILED: %s", study.study_name, trial.number, reason)
    finally:
        ACTIVE.discard(key)
    if progress is not None:
        progress.finished(method, trial.number, state, reason)
    return state


def _eval_callback(plan: Plan, method: str, trial, progress):
    """`on_eval(step, metrics)` for training: shows progress and reports to the pruner, which may
    stop the trial (never at the last eval: a finished trial is complete)."""
    pareto = plan.objective == "pareto"
    last_step = plan.max_steps[method]

    def on_eval(step, metrics):
        if progress is not None:
            progress.running(method, trial.number, step, metrics.get("eval/win_rate"))
        if pareto:
            return
        trial.report(float(metrics["eval/win_rate"]), step)
        if step < last_step and trial.should_prune():
            raise TrialPruned(f"pruned at step {step}: win rate {metrics['eval/win_rate']:.3f} below the median")
    return on_eval


def _train_in_run(plan: Plan, method: str, study, trial, params: dict, parent_run_id: str, on_eval):
    """Train the trial inside its child MLflow run, which is tagged with how the trial ended."""
    from alignbench.training.run import train

    tags = {"alignbench.role": "trial", "sweep.name": plan.name, "method": method,
            "optuna.study": study.study_name, "optuna.trial_number": trial.number}
    with tracking.tracked_run(plan.experiment, run_name=f"{method}-{trial.number}", parent_run_id=parent_run_id,
                              tags=tags, async_logging=plan.tracking["async_logging"],
                              uri=plan.tracking["uri"]) as tracker:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.log_params(params, synchronous=True)  # now, so a run killed during set-up still shows its params
        try:
            trial_cfg = compose_trial(plan.trial_overrides[method] + param_overrides(params))
            result = train(trial_cfg, tracker, on_eval)
        except TrialPruned:
            tracker.set_tags({"optuna.trial_state": "PRUNED"})
            raise
        except BaseException:
            tracker.set_tags({"optuna.trial_state": "FAIL"})
            raise
        tracker.set_tags({"optuna.trial_state": "COMPLETE"})
    return result


def _tell_result(plan: Plan, study, trial, result) -> None:
    """Record the final eval on the trial and tell Optuna its objective value(s)."""
    from alignbench.training.loop import NonFiniteLoss

    m = result.metrics
    for k in RESULT_ATTRS:
        if k in m:
            trial.set_user_attr(k, float(m[k]))
    if plan.objective == "pareto":
        values = [float(m["eval/win_rate"]), float(m["eval/kl"])]
    else:
        values = float(m["eval/win_rate"])
    if any(not math.isfinite(v) for v in (values if isinstance(values, list) else [values])):
        raise NonFiniteLoss(f"non-finite objective {values}")
    study.tell(trial, values)


def _fail(study, trial, reason: str, kind: str) -> None:
    trial.set_user_attr("failure_reason", reason[:2000])
    trial.set_user_attr("failure_kind", kind)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
