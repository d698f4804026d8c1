"""Each method works on the built-in task at its defaults (slow: minutes; run with `pytest -m slow`)."""

from __future__ import annotations

import pytest

from alignbench.config import compose
from alignbench.tracking.null import NullTracker
from alignbench.training.run import train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["dpo", "ipo", "kto", "simpo", "ppo", "rloo"])
def test_default_config_beats_the_sft_reference(workdir, method):
    tracker = NullTracker()
    result = train(compose([f"method={method}"]), tracker)
    m = result.metrics
    assert m["eval/win_rate_ci_low"] > 0.5, m
    assert m["eval/gold_reward"] > m["eval/reference_gold_reward"]
    assert m["eval/kl"] > 0
    if method in ("ppo", "rloo"):  # reward-model score and gold reward side by side over training
        logged = [metrics for _, metrics in tracker.metrics]
        assert sum("ppo/rm_score" in x and "ppo/gold_reward" in x for x in logged) >= 3


def test_dpo_kl_falls_as_beta_rises(workdir):
    kls = [train(compose([f"method.beta={beta}"]), NullTracker()).metrics["eval/kl"] for beta in (0.03, 0.1, 0.3, 1.0)]
    assert kls == sorted(kls, reverse=True), kls
