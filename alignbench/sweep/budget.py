"""Counting a method's trials against its budget (`n_trials` COMPLETE+PRUNED, across invocations)
and its failures against `max_failures` (errors in this invocation only). Discarded trials (asked
one too many by a worker that lost a race for the last slot) count for nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from optuna.trial import TrialState

from alignbench.sweep.plan import Plan

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    errors_now: int = 0    # failures from errors in this invocation (toward max_failures)
    running: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned


def count(plan: Plan, study) -> Counts:
    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("alignbench.discarded"):
            c.failed += 1
            if (t.user_attrs.get("failure_kind") == "error" and t.datetime_start is not None
                    and t.datetime_start.timestamp() >= plan.started):
                c.errors_now += 1
    return c


def over_budget(plan: Plan, study, trial) -> bool:
    """True if earlier trials (COMPLETE, PRUNED or RUNNING) already fill the budget: another worker won."""
    taken = sum(1 for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and (t.state in DONE or t.state == TrialState.RUNNING))
    return taken >= plan.n_trials


def too_many_failures(plan: Plan, study, c: Counts) -> bool:
    """True (and says so) once this invocation's failed trials of the study reach `max_failures`."""
    if c.errors_now < plan.max_failures:
        return False
    log.error(f"{study.study_name}: stopped after {c.errors_now} failed trials in this run "
              f"(sweep.max_failures={plan.max_failures}); see the trials' failure_reason")
    return True


def discard(study, trial, why: str) -> None:
    """A trial asked one too many (another worker took its slot): FAIL, counted for nothing, no run."""
    trial.set_user_attr("alignbench.discarded", why)
    study.tell(trial, state=TrialState.FAIL)
