"""`sweep.confirm=race`: the methods' selections confirmed seed by seed, in rounds, until their order
is settled (`alignbench.confirm.racing`: the stopping rule, its alpha spending).

The race starts once every method's search is complete. Its state is never stored: it is replayed
from the confirmation runs there are (their eval samples, the same [seeds x prompts] tables the
report builds, `confirm.tables.method_tables`) every time a worker asks for work, under the
budget lock, so a re-run resumes it and several workers share it: each takes a (method, seed) the
next look needs that no other worker runs, and waits while the look waits on runs of others.

Confirmation runs are the trials of each method's `<experiment>/<method>/confirm` study, as in
`confirmation.run_confirmation` (`confirm_runs`: the same selection attrs, seeds seed+1 .. seed+K in
order, K = `sweep.confirm_seeds_max`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from optuna.trial import TrialState

from alignbench.confirm.racing import Race, replay_race
from alignbench.sweep.budget import count, too_many_failures
from alignbench.sweep.confirm_runs import ask_seed, confirm_seeds, of_selection, run_seed, seeds_in, selection_attrs
from alignbench.sweep.liveness import reap_stale
from alignbench.sweep.plan import Plan
from alignbench.sweep.storage import budget_lock
from alignbench.sweep.studies import best_trial, load_confirm_study, load_study

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0  # a worker waiting on another's run (the look needs it) checks again this often


@dataclass
class Entrants:
    """The methods in the race and what the race knows of them, read from the studies."""

    selected: dict = field(default_factory=dict)   # method -> its selected search trial
    studies: dict = field(default_factory=dict)    # method -> its confirmation study
    left_out: dict = field(default_factory=dict)   # method -> why it is not in the race
    searching: bool = False                        # some search still has trials running elsewhere


class SamplesCache:
    """Eval samples of finished confirmation runs by MLflow run id (they never change)."""

    def __init__(self, plan: Plan):
        self.recorder, self.samples = plan.recorder, {}

    def get(self, run_id: str):
        if run_id not in self.samples:
            self.samples[run_id] = self.recorder.samples(run_id)
        return self.samples[run_id]


def entrants(plan: Plan, storage) -> Entrants:
    """Every method whose search is complete and has a selection; the others, with why."""
    out = Entrants()
    for m in plan.methods:
        search = load_study(plan, m, storage)
        c = count(plan, search)
        if c.done < plan.n_trials:
            out.searching |= c.running > 0
            out.left_out[m] = "waiting"  # its search budget is not complete
            continue
        selected = best_trial(plan, search)
        if selected is None:
            out.left_out[m] = "nothing selected"
            continue
        out.selected[m], out.studies[m] = selected, load_confirm_study(plan, m, storage)
    return out


def _complete_runs(plan: Plan, method: str, study, selected) -> list[tuple[int, str]]:
    """(seed, MLflow run id) of the selection's COMPLETE runs on the race's seeds, as a prefix of
    the seed order (a race only ever uses seeds 1..n of its order)."""
    selection = selection_attrs(selected)
    done = {int(t.params["seed"]): t.user_attrs.get("mlflow_run_id")
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if of_selection(t, selection)}
    prefix = []
    for seed in confirm_seeds(plan, method):
        if seed not in done:
            break
        prefix.append((seed, done[seed]))
    return prefix


def race_state(plan: Plan, ent: Entrants, cache: SamplesCache) -> tuple[Race, dict]:
    """The race replayed on the confirmation runs there are; also {method: [(seed, run id)]}."""
    from alignbench.confirm.tables import method_tables  # pandas: only once a race looks

    runs, wins = {}, {}
    for m, selected in ent.selected.items():
        runs[m] = _complete_runs(plan, m, ent.studies[m], selected)
        samples = {seed: cache.get(run_id) for seed, run_id in runs[m]}
        missing = [seed for seed, s in samples.items() if s is None or s.empty]
        if missing:  # asking the seed again would only find it done
            raise RuntimeError(f"{m}: confirmation seed {missing[0]} finished without eval samples; the race "
                               "cannot look at it")
        if samples:
            tables, why = method_tables(m, samples, dict(runs[m]))
            if tables is None:
                raise RuntimeError(why)
            wins[m] = tables.tables["win"].to_numpy(dtype=float)
        else:
            wins[m] = None
    if any(w is None for w in wins.values()):  # before the first look: every method needs min_seeds
        return Race(needs={m: plan.confirmation.min_seeds for m in wins}), runs
    return replay_race(wins, plan.confirmation), runs


def _next_job(plan: Plan, state: Race, runs: dict, ent: Entrants) -> tuple[str, int] | None:
    """The (method, seed) to run next: a seed the next look needs that is neither done nor running."""
    for m, n in sorted(state.needs.items()):
        running = seeds_in(ent.studies[m], selection_attrs(ent.selected[m]), TrialState.RUNNING)
        done = {seed for seed, _ in runs[m]}
        for seed in confirm_seeds(plan, m)[:n]:
            if seed not in done and seed not in running:
                return m, seed
    return None


def run_race(plan: Plan, storage, parent_run_id: str, worker: int = 0, progress=None) -> dict[str, str]:
    """Run the race until it is finished; returns {method: why its confirmation stopped}: "done",
    "failures" (too many failed runs of one method: the race stops there), or what `entrants`
    says of a method that is not in it."""
    if plan.confirmation.seeds < 1:
        return {m: "off" for m in plan.methods}
    cache = SamplesCache(plan)
    while True:
        with budget_lock(plan):
            ent = entrants(plan, storage)
            for study in ent.studies.values():
                reap_stale(plan, study)
            job = None
            if not ent.searching:
                failed = [m for m, s in ent.studies.items() if too_many_failures(plan, s, count(plan, s))]
                if failed:
                    return {**ent.left_out, **{m: "failures" if m in failed else "incomplete" for m in ent.studies}}
                state, runs = race_state(plan, ent, cache)
                if state.finished:
                    return {**ent.left_out, **{m: "done" for m in ent.studies}}
                job = _next_job(plan, state, runs, ent)
            if job is not None:
                method, seed = job
                trial = ask_seed(ent.studies[method], ent.selected[method], seed, confirm_seeds(plan, method))
        if job is None:  # the next look waits on runs of other workers (or on their searches)
            if progress is not None:
                progress.poll()
            time.sleep(POLL_SECONDS)
            continue
        run_seed(plan, method, ent.studies[method], trial, selection_attrs(ent.selected[method]), parent_run_id,
                 progress)


def race_outcome(plan: Plan, storage) -> tuple[dict, bool]:
    """({method: {"n_seeds", "stop"}}, finished) of the race as it stands (read only: the summary)."""
    ent = entrants(plan, storage)
    state, runs = race_state(plan, ent, SamplesCache(plan))
    out = {m: {"n_seeds": state.stops[m][0] if m in state.stops else len(runs[m]),
               "stop": state.stops[m][1] if m in state.stops else "still racing"} for m in ent.selected}
    out.update({m: {"n_seeds": 0, "stop": why} for m, why in ent.left_out.items()})
    return out, state.finished
