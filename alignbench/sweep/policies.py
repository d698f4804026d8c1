"""Which trained policies a sweep keeps (`sweep.keep_policies`).

A trial's run saves its final policy (artifact `policy/`) while it may still be selected: which
trial is best is known only once the method's search is over, but with `best` a trial whose
validation win rate is below a finished trial's can never be, so it saves none (tag
`alignbench.policy_not_saved`; `trials._policy_skipper`). After each method's search and
confirmation, `prune_policies` deletes the `policy/` of every finished run but the keepers': with
`best`, the selected trial's run and its confirmation runs; `all` keeps every trial's; `none` saves
nothing in the first place (trials run with `train.save_policy=false`). Pruning is idempotent, so a resumed sweep
prunes whatever a killed one left; a run still RUNNING is never touched.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from alignbench.sweep.confirm_runs import selection_attrs
from alignbench.sweep.plan import Plan
from alignbench.sweep.studies import best_trial

log = logging.getLogger(__name__)

POLICY = "policy"


def _studies(plan: Plan, method: str, storage) -> list:
    out = []
    for name in (plan.study_name(method), plan.confirm_study_name(method)):
        try:
            out.append(optuna.load_study(study_name=name, storage=storage))
        except KeyError:  # no confirmation study (yet)
            pass
    return out


def kept_runs(plan: Plan, method: str, storage) -> set[str]:
    """MLflow run ids whose policy stays: the selected search trial's and its confirmation runs'."""
    studies = _studies(plan, method, storage)
    selected = best_trial(plan, studies[0]) if studies else None
    if selected is None:
        return set()
    keep = {selected.user_attrs.get("mlflow_run_id")}
    selection = selection_attrs(selected)
    for study in studies[1:]:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if all(t.user_attrs.get(k) == v for k, v in selection.items()):
                keep.add(t.user_attrs.get("mlflow_run_id"))
    return keep - {None}


def prune_policies(plan: Plan, method: str, storage) -> int:
    """Delete the `policy/` artifact of the method's finished runs that are not kept; returns how many runs were pruned."""
    if plan.keep_policies != "best":
        return 0
    keep = kept_runs(plan, method, storage)
    trials = [t for study in _studies(plan, method, storage) for t in study.get_trials(deepcopy=False)]
    running = {t.user_attrs.get("mlflow_run_id") for t in trials if t.state == TrialState.RUNNING}
    pruned = 0
    for run_id in {t.user_attrs.get("mlflow_run_id") for t in trials} - keep - running - {None}:
        if POLICY in {p.rsplit("/", 1)[-1] for p in plan.recorder.open_run(run_id).list_artifacts(None)}:
            pruned += plan.recorder.delete_artifacts(run_id, POLICY)
    if pruned:
        log.info("%s: kept the policies of %d run(s), deleted %d (sweep.keep_policies=best)", method, len(keep), pruned)
    return pruned
