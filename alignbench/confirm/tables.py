"""A method's confirmation outcomes as [K seeds x P prompts] tables, one per quantity (win indicator,
KL, gold reward), built from its confirmation runs' eval samples, and the methods that can be
compared (one seed set, one prompt set). Pure functions of DataFrames."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

QUANTITIES = ("win", "kl", "gold")  # win: 1 policy preferred, 1/2 tie, 0 reference preferred


@dataclass
class MethodTables:
    """One method's confirmation outcomes: per quantity a DataFrame (index: seeds, columns: prompts);
    `diverged`: {seed: (step, why)} of its confirmation runs tagged diverged (those that failed, with no
    row in the tables, included)."""
    method: str
    tables: dict[str, pd.DataFrame]
    run_ids: dict[int, str]
    diverged: dict[int, tuple[int, str]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return list(self.tables["win"].index)

    @property
    def prompts(self) -> list:
        return list(self.tables["win"].columns)

    def first_seeds(self, k: int) -> "MethodTables":
        """The same outcomes on the first k confirmation seeds only (what a race had at look k)."""
        kept = self.seeds[:k]
        return MethodTables(self.method, {q: table.loc[kept] for q, table in self.tables.items()}, self.run_ids,
                            {s: d for s, d in self.diverged.items() if s in kept})


def win_indicator(samples: pd.DataFrame) -> np.ndarray:
    """Per prompt: 1 policy preferred, 1/2 tie, 0 reference preferred (as the win rate counts them)."""
    return samples["winner"].map({"policy": 1.0, "tie": 0.5, "reference": 0.0}).to_numpy(dtype=float)


def prompt_means(samples: pd.DataFrame, by_index: bool) -> pd.DataFrame:
    """One run's samples as one row per distinct prompt: the mean over its samples (several when
    `sample_index` goes above 0) of win, kl and gold (when the run logged policy_gold). Keyed by
    `prompt_index` when `by_index`, else by the prompt text."""
    kl = pd.to_numeric(samples["kl"], errors="coerce").to_numpy() if "kl" in samples else np.nan
    values = pd.DataFrame({"win": win_indicator(samples), "kl": kl})
    if "policy_gold" in samples:
        values["gold"] = pd.to_numeric(samples["policy_gold"], errors="coerce").to_numpy()
    values["key"] = (samples["prompt_index"].astype(int) if by_index else samples["prompt"].astype(str)).to_numpy()
    return values.groupby("key", sort=True).mean()


def method_tables(method: str, samples_by_seed: dict[int, pd.DataFrame], run_ids: dict[int, str],
                  diverged: dict[int, tuple[int, str]] | None = None) -> tuple[MethodTables | None, str | None]:
    """The method's [seeds x prompts] tables, or None and why (its seeds were evaluated on
    different prompts). A quantity that some seed did not log (NaN anywhere) is left out.
    `diverged`: {seed: (step, why)} of its runs tagged diverged."""
    by_index = all("prompt_index" in s for s in samples_by_seed.values())
    per_seed = {seed: prompt_means(s, by_index) for seed, s in sorted(samples_by_seed.items())}
    prompt_sets = {tuple(m.index) for m in per_seed.values()}
    if len(prompt_sets) > 1:
        return None, (f"{method}: its confirmation seeds were evaluated on different prompts "
                      f"({sorted(len(p) for p in prompt_sets)} prompts), so it is not compared")
    tables = {}
    for q in QUANTITIES:
        if all(q in m for m in per_seed.values()):
            t = pd.DataFrame({seed: m[q] for seed, m in per_seed.items()}).T
            if t.notna().all().all():
                tables[q] = t
    if "win" not in tables:
        return None, f"{method}: the confirmation samples have no usable winner column"
    return MethodTables(method, tables, run_ids, dict(diverged or {})), None


def comparable(methods: dict[str, MethodTables]) -> tuple[dict[str, MethodTables], list[str]]:
    """The methods to compare: the largest group sharing one seed set and one prompt set (ties: the
    group with more seeds x prompts, then the first method by name). Each method left out gets a
    note saying why."""
    groups: dict[tuple, list[str]] = {}
    for m, t in sorted(methods.items()):
        groups.setdefault((tuple(t.seeds), tuple(t.prompts)), []).append(m)
    if not groups:
        return {}, []
    # max() keeps the first of equal keys, and groups are in the order of their first method's name.
    key = max(groups, key=lambda k: (len(groups[k]), len(k[0]) * len(k[1])))
    seeds, prompts = key
    notes = [f"{m}: confirmation seeds {list(t.seeds)} on {len(t.prompts)} prompts differ from the compared "
             f"methods' seeds {list(seeds)} on {len(prompts)} prompts (same seeds and prompts are needed to pair "
             "them), so it is not compared" for m, t in sorted(methods.items()) if m not in groups[key]]
    return {m: methods[m] for m in groups[key]}, notes


def diverged_counts(methods: dict[str, MethodTables]) -> dict[str, int]:
    """{method: confirmation seeds tagged diverged}: what the verdict's sentence can carry."""
    return {m: len(t.diverged) for m, t in sorted(methods.items())}
