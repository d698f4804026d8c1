"""Each method works on the built-in task at its defaults (slow: minutes; run with `pytest -m slow`).

Judged as the report judges a confirmation: on the test prompts (never seen in training, never used
to pick the defaults), over several training seeds, with a two-level (seed, prompt) interval."""

from __future__ import annotations

import pandas as pd
import pytest

from alignbench.config import compose
from alignbench.evaluation.stats import two_level_bootstrap_ci
from alignbench.confirm.tables import prompt_means
from alignbench.tracking.null import NullTracker
from alignbench.training.run import train

pytestmark = pytest.mark.slow

SEEDS = (1, 2, 3)  # the default comparison's confirmation seeds


@pytest.mark.parametrize("method", ["dpo", "ipo", "kto", "simpo", "ppo", "rloo"])
def test_default_config_beats_the_sft_reference_on_test_prompts_over_seeds(workdir, method):
    wins, gold, reference_gold = [], [], []
    for seed in SEEDS:
        tracker = NullTracker()
        m = train(compose([f"method={method}", f"seed={seed}", "eval.split=test"]), tracker).metrics
        assert m["eval/prompts_seen_in_training"] == 0
        assert m["eval/kl"] > 0
        per_prompt = prompt_means(pd.DataFrame(tracker.artifacts["eval_samples.json"]), by_index=True)
        assert len(per_prompt) == 64  # every test prompt of the built-in task
        wins.append(per_prompt["win"].to_numpy())
        gold.append(m["eval/gold_reward"])
        reference_gold.append(m["eval/reference_gold_reward"])
        if method in ("ppo", "rloo"):  # reward-model score and gold reward side by side over training
            logged = [metrics for _, metrics in tracker.metrics]
            assert sum("ppo/rm_score" in x and "ppo/gold_reward" in x for x in logged) >= 3
    mean, low, high = two_level_bootstrap_ci(wins)
    assert low > 0.5, (method, mean, low, high, [w.mean() for w in wins])
    assert sum(gold) / len(gold) > sum(reference_gold) / len(reference_gold), (gold, reference_gold)


def test_dpo_kl_falls_as_beta_rises(workdir):
    kls = [train(compose([f"method.beta={beta}"]), NullTracker()).metrics["eval/kl"] for beta in (0.03, 0.1, 0.3, 1.0)]
    assert kls == sorted(kls, reverse=True), kls


def test_kto_at_its_defaults_collapses_on_at_most_one_seed_in_ten(workdir):
    """KTO at its defaults once went to a sampled KL of 134.6 nats/seq on one seed in four (issue 32,
    threads=1 on another machine; docs/kto_collapse.md). A collapse is where the run ends: its final
    sampled KL above eval.diverged_kl, or its test win rate below the reference's 1/2. (An excursion
    past the limit that comes back is tagged diverged at its step, but is not a collapse here.)"""
    outcomes = {}
    for seed in range(1, 11):
        cfg = compose(["method=kto", f"seed={seed}", "eval.split=test", "threads=1"])
        m = train(cfg, NullTracker()).metrics
        outcomes[seed] = (round(m["eval/win_rate"], 3), round(m["eval/kl"], 1), m.get("train/diverged_step"))
    limit = float(cfg.eval.diverged_kl)
    collapsed = [s for s, (win, kl, _) in outcomes.items() if kl > limit or win < 0.5]
    assert len(collapsed) <= 1, outcomes
