"""The evaluator on the built-in task: win rate with CI, sampled KL, the samples table."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignbench.config import compose
from conftest import FAST

METRICS = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl")
COLUMNS = {"prompt", "policy_response", "reference_response", "policy_score", "reference_score",
           "policy_length", "reference_length", "kl", "winner", "policy_gold", "reference_gold"}


def prepare_fast():
    try:
        from alignbench.training.setup import prepare
    except ImportError:  # before `prepare` moved out of the run module
        from alignbench.training.setup import prepare
    return prepare(compose(FAST))


@pytest.fixture
def prepared(workdir):
    return prepare_fast()


def assert_well_formed(result, prepared):
    m = result.metrics
    for key in METRICS:
        assert key in m and math.isfinite(m[key]), key
    assert 0.0 <= m["eval/win_rate_ci_low"] <= m["eval/win_rate"] <= m["eval/win_rate_ci_high"] <= 1.0
    n = len(prepared.eval_prompts)
    assert n == compose(FAST).eval.n_prompts
    assert m["eval/n"] == n and len(result.rows) == n
    assert [r["prompt"] for r in result.rows] == prepared.eval_prompts
    for row in result.rows:
        assert set(row) == COLUMNS
        expected = ("policy" if row["policy_score"] > row["reference_score"]
                    else "reference" if row["reference_score"] > row["policy_score"] else "tie")
        assert row["winner"] == expected
    wins = sum(r["winner"] == "policy" for r in result.rows)
    ties = sum(r["winner"] == "tie" for r in result.rows)
    assert (m["eval/wins"], m["eval/ties"]) == (wins, ties)
    assert m["eval/win_rate"] == pytest.approx((wins + ties / 2) / n)
    assert m["eval/kl"] == pytest.approx(sum(r["kl"] for r in result.rows) / n, abs=1e-5)


def test_reference_against_itself_ties_with_zero_kl(prepared):
    with prepared.models.reference_model() as ref:
        result = prepared.evaluator.evaluate(ref)
    assert_well_formed(result, prepared)
    m = result.metrics
    # The same model, prompts and seeds: the very samples of the cached reference side, every one a tie.
    assert [r["policy_response"] for r in result.rows] == [r["reference_response"] for r in result.rows]
    assert m["eval/ties"] == len(result.rows) and m["eval/wins"] == 0
    assert m["eval/win_rate"] == pytest.approx(0.5)
    assert m["eval/win_rate_ci_low"] < 0.5 < m["eval/win_rate_ci_high"]
    assert m["eval/kl"] == 0.0 and m["eval/kl_per_token"] == 0.0
    assert all(r["kl"] == 0.0 for r in result.rows)
    assert m["eval/policy_reward"] == pytest.approx(m["eval/reference_reward"])
    assert m["eval/gold_reward"] == pytest.approx(m["eval/reference_gold_reward"])


def test_a_changed_policy_has_positive_kl_and_consistent_rows(prepared):
    policy = copy.deepcopy(prepared.models.policy)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy.train()
    result = prepared.evaluator.evaluate(policy)
    assert policy.training  # evaluation restores the training mode
    assert_well_formed(result, prepared)
    m = result.metrics
    assert m["eval/kl"] > 0.0
    assert [r["policy_response"] for r in result.rows] != [r["reference_response"] for r in result.rows]
    # The reference side is the cached one, whatever the policy.
    assert [r["reference_response"] for r in result.rows] == prepared.evaluator.reference["responses"]
