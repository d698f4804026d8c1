"""The evaluator on the built-in task: win rate with CI, sampled KL, the samples table."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignbench.config import compose
from helpers import FAST

METRICS = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl")
COLUMNS = {"prompt", "policy_response", "reference_response", "policy_score", "reference_score",
           "policy_length", "reference_length", "kl", "winner", "policy_gold", "reference_gold",
           "prompt_index", "sample_index"}


def prepare_fast():
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    return prepare(run_settings(compose(FAST)))


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
    assert [(r["prompt_index"], r["sample_index"]) for r in result.rows] == [(i, 0) for i in range(n)]
    assert m["eval/prompts_seen_in_training"] == 0
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


def test_clustered_interval_is_wilson_for_one_sample_and_wider_for_clustered_samples():
    from alignbench.evaluation.evaluator import clustered_win_rate_ci, win_rate_ci_method
    from alignbench.evaluation.stats import win_rate_ci

    outcomes = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5]
    assert clustered_win_rate_ci([[x] for x in outcomes]) == pytest.approx(win_rate_ci(4, 2, 8))
    # 4 prompts, each with 4 identical outcomes: 16 pairs carry only 4 prompts' information
    clustered = clustered_win_rate_ci([[1.0] * 4, [0.0] * 4, [1.0] * 4, [1.0] * 4])
    assert clustered == pytest.approx(win_rate_ci(3, 0, 4))
    assert clustered[2] - clustered[1] > win_rate_ci(12, 0, 16)[2] - win_rate_ci(12, 0, 16)[1]
    # independent-looking samples within prompts: no wider than Wilson on all pairs (deff >= 1 keeps it equal)
    mixed = clustered_win_rate_ci([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert mixed == pytest.approx(win_rate_ci(4, 0, 8))
    assert win_rate_ci_method(1) == "wilson95, ties count 1/2"
    assert "clustering by prompt" in win_rate_ci_method(2)


def test_several_samples_per_prompt_rows_and_counts(workdir):
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    prepared = prepare(run_settings(compose([*FAST, "eval.n_prompts=6", "eval.samples_per_prompt=3"])))
    with prepared.models.reference_model() as ref:
        result = prepared.evaluator.evaluate(ref)
    m = result.metrics
    assert (m["eval/n"], m["eval/n_prompts"], len(result.rows)) == (18, 6, 18)
    assert [(r["prompt_index"], r["sample_index"]) for r in result.rows] == [(i, j) for i in range(6) for j in range(3)]
    assert [r["prompt"] for r in result.rows[::3]] == prepared.eval_prompts
    assert len({r["reference_response"] for r in result.rows}) > 6  # a prompt's samples differ
    assert m["eval/win_rate"] == pytest.approx(0.5) and m["eval/ties"] == 18


def test_every_evaluation_carries_the_judges_held_out_accuracy(prepared):
    from alignbench.data import builtin_task as task
    from alignbench.evaluation.stats import win_rate_ci

    # Counted by hand from the gold reward of each held-out pair's two sides (ties 1/2).
    pairs = prepared.eval_records[: compose(FAST).eval.n_pref_pairs]
    assert len(pairs) == 16
    margins = [task.gold_reward(p.prompt, p.chosen) - task.gold_reward(p.prompt, p.rejected) for p in pairs]
    wins, ties = sum(d > 0 for d in margins), sum(d == 0 for d in margins)
    accuracy, low, high = win_rate_ci(wins, ties, len(pairs))
    with prepared.models.reference_model() as ref:
        m = prepared.evaluator.evaluate(ref).metrics
    assert m["eval/judge_n_pairs"] == 16 and m["eval/judge_ties"] == ties
    assert (m["eval/judge_accuracy"], m["eval/judge_accuracy_ci_low"], m["eval/judge_accuracy_ci_high"]) == pytest.approx(
        (accuracy, low, high))
    assert m["eval/judge_accuracy"] == pytest.approx((wins + ties / 2) / 16)
    # Bradley-Terry labels follow the gold reward more often than not
    assert 0.5 < m["eval/judge_accuracy"] and m["eval/judge_accuracy_ci_low"] < m["eval/judge_accuracy"]


def test_an_evaluator_built_from_plain_settings_judges_the_reference_a_tie(prepared, tmp_path):
    """No config: plain settings, a judge, prompts. The reference against itself on the same seed samples
    the same responses: every pair a tie, win rate 1/2, KL 0, and the cache holds its reference side."""
    from alignbench.data import builtin_task as task
    from alignbench.evaluation.evaluator import EvalSettings, Evaluator
    from alignbench.evaluation.judges import GoldJudge

    settings = EvalSettings(max_new_tokens=8, temperature=1.0, batch_size=4, max_prompt_length=64,
                            samples_per_prompt=2, seed=3, cache_dir=str(tmp_path))
    prompts = task.eval_prompts("validation", 3, 0)
    evaluator = Evaluator(settings, prepared.models, GoldJudge(), prompts, builtin_task=True)
    assert evaluator.cache_hit is False and len(list((tmp_path / "ref_eval").iterdir())) == 1
    with prepared.models.reference_model() as ref:
        result = evaluator.evaluate(ref)
    m = result.metrics
    assert (m["eval/n"], m["eval/n_prompts"], m["eval/ties"], m["eval/wins"]) == (6.0, 3.0, 6.0, 0.0)
    assert m["eval/win_rate"] == 0.5 and m["eval/kl"] == 0.0
    assert "eval/pref_accuracy" not in m  # no implicit reward, no held-out pairs
    assert [r["prompt"] for r in result.rows] == [p for p in prompts for _ in range(2)]
    assert Evaluator(settings, prepared.models, GoldJudge(), prompts, builtin_task=True).cache_hit is True

