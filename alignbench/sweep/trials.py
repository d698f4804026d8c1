"""One trial of a sweep: sample its params, compose its config, train it inside a child MLflow run
of the sweep's parent run (reporting `eval/win_rate` at each eval step to the pruner), and tell
Optuna how it ended (COMPLETE, PRUNED, or FAIL with a `failure_reason` user attr). A confirmation
run is a trial too, described by its own `TrialJob` (fixed params, a fresh seed, the test split)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

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


@dataclass
class TrialJob:
    """What one trial trains and how it is recorded: a search trial (`search_job`) or a
    confirmation run (`sweep.confirmation`)."""

    params: dict               # Hydra overrides after the method's trial overrides; logged as run params
    tags: dict                 # the run's tags: alignbench.role and the role's own
    label: str                 # how the progress display names it, e.g. "dpo trial 3"
    objective: str = "win_rate"  # what Optuna is told: "win_rate" or "pareto" (win rate, KL)
    run_name: str = ""
    extra_overrides: list = field(default_factory=list)  # after the params (confirmation: eval.split=test)


def search_job(plan: Plan, method: str, trial) -> TrialJob:
    """A search trial: its params sampled from the method's space (by the study's sampler)."""
    return TrialJob(params=sample_params(trial, plan.spaces[method]), tags={"alignbench.role": "trial"},
                    label=f"{method} trial {trial.number}", objective=plan.objective,
                    run_name=f"{method}-{trial.number}")


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


def run_trial(plan: Plan, method: str, study, trial, parent_run_id: str, progress=None,
              job: TrialJob | None = None) -> TrialState:
    """Train one asked trial and tell Optuna its end; returns its state. An interrupt fails the trial
    ('interrupted') and propagates; any other error fails it and the worker goes on. Without a
    `job` it is a search trial, its params sampled here."""
    job = job or search_job(plan, method, trial)
    key = (study.study_name, trial.number)
    ACTIVE.add(key)
    state, reason = TrialState.FAIL, None
    try:
        on_eval = _eval_callback(plan, method, trial, job, progress)
        result = _train_in_run(plan, method, study, trial, job, parent_run_id, on_eval)
        _tell_result(job, study, trial, result)
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
        progress.finished(job.label, state, reason)
    return state


def _eval_callback(plan: Plan, method: str, trial, job: TrialJob, progress):
    """`on_eval(step, metrics)` for training: shows progress and reports to the pruner, which may
    stop the trial (never at the last eval: a finished trial is complete; a confirmation study's
    pruner never prunes)."""
    pareto = job.objective == "pareto"
    last_step = plan.max_steps[method]

    def on_eval(step, metrics):
        if progress is not None:
            progress.running(job.label, step, metrics.get("eval/win_rate"))
        if pareto:
            return
        trial.report(float(metrics["eval/win_rate"]), step)
        if step < last_step and trial.should_prune():
            raise TrialPruned(f"pruned at step {step}: win rate {metrics['eval/win_rate']:.3f} below the median")
    return on_eval


def _train_in_run(plan: Plan, method: str, study, trial, job: TrialJob, parent_run_id: str, on_eval):
    """Train the trial inside its child MLflow run, which is tagged with how the trial ended."""
    from alignbench.training.run import train

    tags = {**job.tags, "sweep.name": plan.name, "method": method,
            "optuna.study": study.study_name, "optuna.trial_number": trial.number}
    with tracking.tracked_run(plan.experiment, run_name=job.run_name, parent_run_id=parent_run_id,
                              tags=tags, async_logging=plan.tracking["async_logging"],
                              uri=plan.tracking["uri"]) as tracker:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.log_params(job.params, synchronous=True)  # now, so a run killed during set-up still shows its params
        try:
            overrides = plan.trial_overrides[method] + param_overrides(job.params) + job.extra_overrides
            trial_cfg = compose_trial(overrides)
            result = train(trial_cfg, tracker, on_eval)
        except TrialPruned:
            tracker.set_tags({"optuna.trial_state": "PRUNED"})
            raise
        except BaseException:
            tracker.set_tags({"optuna.trial_state": "FAIL"})
            raise
        tracker.set_tags({"optuna.trial_state": "COMPLETE"})
    return result


def _tell_result(job: TrialJob, study, trial, result) -> None:
    """Record the final eval on the trial and tell Optuna its objective value(s)."""
    from alignbench.training.loop import NonFiniteLoss

    m = result.metrics
    for k in RESULT_ATTRS:
        if k in m:
            trial.set_user_attr(k, float(m[k]))
    if job.objective == "pareto":
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
