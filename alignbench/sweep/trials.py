"""One trial of a sweep: sample its params, compose its config, train it inside a child MLflow run
of the sweep's parent run (reporting `eval/win_rate` at each eval step to the pruner), and tell
Optuna how it ended (COMPLETE, PRUNED, or FAIL with a `failure_reason` user attr). A confirmation
run is a trial too, described by its own `TrialJob` (fixed params, a fresh seed, the test split).

A trial killed after a checkpoint (`train.checkpoint_every`) is not started again: the next trial
with the same params (a search trial is asked again with them: `enqueue_resumable`; a
confirmation seed is asked again anyway) reopens the killed trial's MLflow run and resumes it from
its checkpoint (`resumable_run`); the new trial records `alignbench.resumes_trial`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from alignbench.sweep.liveness import ACTIVE, ATTEMPT_TAG
from alignbench.sweep.plan import Plan, compose_trial, param_overrides
from alignbench.sweep.selection import finite_number
from alignbench.sweep.studies import best_trial, should_prune

log = logging.getLogger(__name__)

RESUMABLE = ("stale", "interrupted")  # how a trial ended that a later one may resume (not an error)
RESUMES = "alignbench.resumes_trial"
IDENTITY = "alignbench.trial_identity"  # the number of the first trial of a resume chain: the trial's name for good

# Copied from the final eval onto the Optuna trial, for the summary and the dashboard.
RESULT_ATTRS = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/kl_per_token",
                "eval/gold_reward", "eval/reference_gold_reward")


class TrialPruned(optuna.TrialPruned):
    """Raised from `on_eval` when the pruner says stop. The MLflow run ends FINISHED (pruning is the
    sweep working as meant, and the UI draws KILLED as a failure), its name ending " (pruned)", tags
    `optuna.trial_state=PRUNED` and `pruned_reason`."""

    alignbench_status = "FINISHED"
    alignbench_reason_tag = "pruned_reason"


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
                    run_name=f"{method}-{trial.number:03d}")  # zero-padded: dpo-002 sorts before dpo-010 in the UI


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
        if step < last_step and should_prune(trial.study, trial):
            raise TrialPruned(f"pruned at step {step}: win rate {metrics['eval/win_rate']:.3f} below the median")
    return on_eval


def has_checkpoint(plan: Plan, run_id: str | None) -> bool:
    from alignbench.training.checkpoint import latest_checkpoint

    return run_id is not None and latest_checkpoint(plan.recorder.open_run(run_id)) is not None


def resumable_run(plan: Plan, study, trial) -> tuple[int, str] | None:
    """(trial number, MLflow run id) of an earlier trial with this trial's params that was killed
    after a checkpoint and that no other trial resumes; None when there is none."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get(RESUMES) for t in trials if t.number != trial.number}
    for t in trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get("failure_kind") in RESUMABLE and t.number not in taken
                and t.number != trial.number and t.params == trial.params
                and has_checkpoint(plan, t.user_attrs.get("mlflow_run_id"))):
            return t.number, t.user_attrs["mlflow_run_id"]
    return None


def trial_identity(study, number: int) -> int:
    """The identity of trial `number`: its own number, or that of the first trial it resumes (chains too)."""
    trial = study.get_trials(deepcopy=False)[number]
    return int(trial.user_attrs.get(IDENTITY, number))


def enqueue_resumable(plan: Plan, study) -> None:
    """Ask the search trials killed after a checkpoint again with their own params (called under
    the budget lock, before asking), so that `resumable_run` finds and resumes them."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get(RESUMES) for t in trials}
    for t in trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get("failure_kind") in RESUMABLE and t.number not in taken
                and has_checkpoint(plan, t.user_attrs.get("mlflow_run_id"))):
            study.enqueue_trial(t.params, user_attrs={RESUMES: t.number})
            log.info("%s: trial %d was killed after a checkpoint: asked again to resume it", study.study_name, t.number)


def _train_in_run(plan: Plan, method: str, study, trial, job: TrialJob, parent_run_id: str, on_eval):
    """Train the trial inside its child MLflow run (the killed run it resumes, if any), which is
    tagged with how the trial ended. A pruned or failed trial's checkpoint is deleted; an
    interrupted one's stays, for the trial that resumes it."""
    from alignbench.training.checkpoint import CHECKPOINTS
    from alignbench.training.distributed import announce_trial
    from alignbench.training.run import train

    resumed = resumable_run(plan, study, trial)
    identity = trial.number if resumed is None else trial_identity(study, resumed[0])
    # optuna.trial_number: the trial's identity, kept across resumes (the MLflow run, its name and the
    # report's rows stay "trial 3"); optuna.attempt: the Optuna trial running it now (liveness reads it)
    tags = {**job.tags, "sweep.name": plan.name, "method": method, "optuna.study": study.study_name,
            "optuna.trial_number": identity, ATTEMPT_TAG: trial.number}
    resume_overrides = []
    trial.set_user_attr(IDENTITY, identity)
    if resumed is not None:
        trial.set_user_attr(RESUMES, resumed[0])
        plan.recorder.set_tags(resumed[1], tags)  # this trial's before RUNNING: not an orphan
        resume_overrides = [f"resume='{resumed[1]}'"]  # quoted: a hex id must stay a string
    with plan.recorder.tracked_run(plan.experiment, job.run_name, parent_run_id=parent_run_id, tags=tags,
                                   run_id=resumed[1] if resumed else None) as tracker:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.log_params(job.params, synchronous=True)  # now, so a run killed during set-up still shows its params
        try:
            overrides = plan.trial_overrides[method] + param_overrides(job.params) + job.extra_overrides
            trial_cfg = compose_trial(overrides + resume_overrides)
            announce_trial(overrides + resume_overrides)  # under a launcher the other ranks train it with this one
            result = train(trial_cfg, tracker, on_eval, skip_policy=_policy_skipper(plan, study, job))
        except TrialPruned:
            tracker.set_tags({"optuna.trial_state": "PRUNED", "mlflow.runName": f"{job.run_name} (pruned)"})
            tracker.delete_artifacts(CHECKPOINTS)  # never resumed
            raise
        except Exception:
            tracker.set_tags({"optuna.trial_state": "FAIL"})
            tracker.delete_artifacts(CHECKPOINTS)  # never resumed
            raise
        except BaseException:
            tracker.set_tags({"optuna.trial_state": "FAIL"})
            raise
        tracker.set_tags({"optuna.trial_state": "COMPLETE"})
    return result


def _policy_skipper(plan: Plan, study, job: TrialJob):
    """With `sweep.keep_policies=best`, a search trial's policy is saved only when its validation
    win rate is at least the best COMPLETE trial's so far. Selection takes the highest win rate
    (`studies.best_trial`) and a COMPLETE trial stays so, so a trial below that can never be
    selected: its policy would be written only for `prune_policies` to delete it (for a real model,
    gigabytes per trial). Ties are saved, and so is every confirmation run. None: always save."""
    if plan.keep_policies != "best" or job.tags.get("alignbench.role") != "trial":
        return None

    def skip(metrics: dict) -> str | None:
        win_rate = finite_number(metrics.get("eval/win_rate"))
        selected = best_trial(plan, study)  # the highest win rate so far (pareto too: it is on the front)
        best = None if selected is None else finite_number(selected.values[0])
        if win_rate is None or best is None or win_rate >= best:
            return None
        return (f"validation win rate {win_rate:.3f} is below the best trial's so far ({best:.3f}), so this "
                f"trial cannot be selected (sweep.keep_policies=best)")
    return skip


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
