"""The worker loop: for each method, reap stale trials, count, and ask a trial under the budget
lock, then run it, until the method's budget is reached or too many trials failed; then the
method's confirmation runs (`confirmation`). With `sweep.n_workers > 1` the loop runs in that many
spawned processes, watched by the parent."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time

import optuna
from optuna.trial import TrialState

from alignbench.sweep.budget import count, discard, over_budget, too_many_failures
from alignbench.sweep.confirmation import run_confirmation
from alignbench.sweep.liveness import heartbeat_stale, reap_stale, worker_tag
from alignbench.sweep.plan import Plan, compose_trial
from alignbench.sweep.storage import budget_lock, make_storage
from alignbench.sweep.studies import BATCH_ATTR, batch_start, load_study, make_sampler, propose_params
from alignbench.sweep.policies import prune_policies
from alignbench.sweep.race import run_race
from alignbench.sweep.trials import enqueue_resumable, run_trial, sample_params

log = logging.getLogger(__name__)

BATCH_POLL_S = 0.5  # how often a worker waiting for the previous batch looks again


def run_method(plan: Plan, method: str, storage, parent_run_id: str, worker: int = 0, progress=None) -> str:
    """Trials of one method until its budget is reached (or too many failures). Returns why it stopped."""
    study = load_study(plan, method, storage)
    while True:
        with budget_lock(plan):
            reap_stale(plan, study)
            c = count(plan, study)
            if c.done >= plan.n_trials:
                return "done"
            if too_many_failures(plan, study, c):
                return "failures"
            if c.done + c.running >= plan.n_trials:
                return "done"  # the rest is running in other workers; their own loops refill on failure
            enqueue_resumable(plan, study)
            trial = ask_in_batch(plan, method, study)
        if trial is None:  # the batch before this one is still running elsewhere
            time.sleep(BATCH_POLL_S)
            continue
        if over_budget(plan, study, trial):
            discard(study, trial, "over budget: another worker took the last slot")
            continue
        if progress is not None:
            progress.running(f"{method} trial {trial.number}", 0, None)
        run_trial(plan, method, study, trial, parent_run_id, progress)


def ask_in_batch(plan: Plan, method: str, study):
    """The next trial (under the budget lock): a trial asked again to resume it as it is; else a
    new one, once every trial before its batch has finished, with params proposed from those
    trials only (`studies.propose_params`); None while they are still running."""
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    number = len(trials)
    start = batch_start(plan, number)
    if not waiting:
        if any(t.number < start and not t.state.is_finished() for t in trials):
            return None
        if plan.sampler.get("type") == "grid":  # the grid's unvisited points: those of the trials asked so far
            study.sampler = make_sampler(plan, method, number)
        else:
            params = propose_params(plan, method, study, number, lambda t: sample_params(t, plan.spaces[method]))
            study.enqueue_trial(params)
            study.sampler = optuna.samplers.RandomSampler(seed=0)  # the params are fixed: nothing to sample
    trial = study.ask()
    trial.set_user_attr("alignbench.worker", worker_tag())
    trial.set_user_attr(BATCH_ATTR, batch_start(plan, trial.number))
    return trial


def run_worker(plan: Plan, parent_run_id: str, worker: int = 0, progress=None, storage=None) -> dict:
    """Each method's search, then the confirmation of its selected trial (once its search is
    complete). Returns {method: (why the search stopped, why the confirmation stopped)}."""
    storage = storage or make_storage(plan, heartbeat_stale(plan))
    stopped = {}
    for m in plan.methods:
        search = run_method(plan, m, storage, parent_run_id, worker, progress)
        if plan.confirmation.raced:  # after every search: a race compares the methods round by round
            stopped[m] = (search, None)
            continue
        stopped[m] = (search, run_confirmation(plan, m, storage, parent_run_id, worker, progress))
        prune_policies(plan, m, storage)
    if plan.confirmation.raced:
        raced = run_race(plan, storage, parent_run_id, worker, progress)
        for m in plan.methods:
            stopped[m] = (stopped[m][0], raced.get(m, "not run"))
            prune_policies(plan, m, storage)
    return stopped


def _worker_main(plan: Plan, parent_run_id: str, worker: int) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s w{worker} %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    try:
        from alignbench.process import quiet_libraries

        quiet_libraries()
    except Exception:
        pass
    try:
        run_worker(plan, parent_run_id, worker)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(plan: Plan, parent_run_id: str, progress) -> None:
    """Spawn `plan.n_workers` workers and wait, refreshing the progress; an interrupt is passed on
    to them as SIGTERM so each finalises its trial."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(plan, parent_run_id, i), name=f"alignbench-sweep-w{i}")
             for i in range(plan.n_workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=2.0 / len(procs))
            progress.poll()
    except BaseException:
        _stop(procs)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        log.warning("%d worker(s) exited with an error (exit codes %s); re-run the same command to resume",
                    len(bad), bad)


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()


def warm_caches(plan: Plan) -> None:
    """Before spawning workers: build the shared SFT model and pairs once, not once per worker."""
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    try:
        prepare(run_settings(compose_trial(plan.trial_overrides[plan.methods[0]])))
    except Exception as exc:  # the trials will report it
        log.warning("cache warm-up failed: %s", exc)


def follow_trials() -> None:
    """A sweep worker's rank other than 0 under torchrun / accelerate launch: train each trial rank 0
    announces on this process's shard, untracked (rank 0 records the trial and tells Optuna), until
    rank 0 announces the end. A trial's error (a pruning rank 0 shares, a failure every rank meets)
    ends that trial here too."""
    from alignbench.training.distributed import next_trial
    from alignbench.training.run import train

    while (overrides := next_trial()) is not None:
        try:
            train(compose_trial(overrides))
        except Exception as exc:  # rank 0 records how the trial ended
            log.debug("trial ended on this rank: %s", exc)
