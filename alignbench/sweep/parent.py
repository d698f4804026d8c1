"""The sweep's parent MLflow run (experiment `sweep.experiment`, tag `alignbench.role=sweep`): found
by its tags and reopened, or created once even when several workers start a new sweep together."""

from __future__ import annotations

import logging
import time

from alignbench.sweep.plan import Plan

log = logging.getLogger(__name__)

PARENT_SETTLE_SECONDS = 1.0  # paid once per new sweep, by the workers that create its parent run


def parent_runs(plan: Plan) -> list:
    """The sweep's parent runs (normally one), oldest first; ties broken by run id so every worker
    orders them the same way."""
    runs = plan.recorder.find_runs(plan.experiment, f"tags.`alignbench.role` = 'sweep' and "
                                                    f"tags.`sweep.name` = '{plan.name}'")
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def open_parent_run(plan: Plan, tags: dict) -> tuple[str, bool]:
    """The sweep's parent run id, and whether this call created it.

    Workers that start at the same instant on a new sweep can each find no parent and create one.
    Each creator therefore looks again after creating, `PARENT_SETTLE_SECONDS` later so that every
    creator of the same instant sees every other's run: all of them adopt the oldest (start time,
    then run id: the same choice everywhere, even for runs created in the same millisecond) and
    delete their own, before any child run points at it. A worker that looks later finds the
    survivor. (Across machines "oldest" uses the clients' clocks: keep them NTP-synced.)
    """
    runs = parent_runs(plan)
    if runs:
        return runs[0].info.run_id, False
    mine = plan.recorder.create_run(plan.experiment, f"sweep-{plan.name}", tags)
    time.sleep(PARENT_SETTLE_SECONDS)
    oldest = parent_runs(plan)[0].info.run_id
    if oldest != mine:
        plan.recorder.delete_run(mine)
        log.info("sweep %s: another worker created the parent run at the same time; adopted %s",
                 plan.name, oldest)
        return oldest, False
    return mine, True
