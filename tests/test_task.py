"""alignbench.data.builtin_task, the built-in task: deterministic, several-sided gold reward, SFT
reference ~50% against itself."""

from __future__ import annotations

import math
import random

import pytest

from alignbench.data import builtin_task as task
from alignbench.evaluation.stats import win_rate_ci

HOTEL = "Tell me about the hotel.\n"


def test_prompts_and_corpus_are_deterministic_given_a_seed():
    assert task.make_prompts(20, 3) == task.make_prompts(20, 3)
    assert task.make_prompts(20, 3) != task.make_prompts(20, 4)
    assert task.make_prompts(20, 3, "validation") == task.make_prompts(20, 3, "validation")
    assert task.eval_prompts("test", 10, 3) == task.eval_prompts("test", 10, 3) != task.eval_prompts("test", 10, 4)
    assert task.sft_corpus(10, 0) == task.sft_corpus(10, 0)
    assert all(task.prompt_topic(p) in task.TOPICS for p, _ in task.sft_corpus(50, 0))


def test_gold_reward_parts_by_hand():
    # 14 words: 3 positive (great, wonderful, lovely), 0 negative; 3 hotel words (room, staff, view),
    # no other topic; no repeats, all known words; length exactly the target.
    response = "the room was great and the staff was wonderful and the view was lovely."
    parts = task.gold_reward_parts(HOTEL, response)
    assert parts["sentiment"] == pytest.approx(math.tanh(0.6 * 3))
    assert parts["topic"] == pytest.approx(math.tanh(0.7 * 3))
    assert parts["fluency"] == pytest.approx(1.0)
    assert parts["length"] == pytest.approx(1.0)
    assert task.gold_reward(HOTEL, response) == pytest.approx(math.tanh(1.8) + math.tanh(2.1) + 1.0 + 0.5)


def test_gold_reward_is_several_sided():
    good = "the room was great and the staff was wonderful and the view was lovely."
    spam = "great great great wonderful wonderful wonderful lovely lovely lovely amazing amazing."
    off_topic = "the pizza was great and the chef was wonderful and the sauce was lovely."
    negative = "the room was awful and the staff was rude and the view was very poor."
    scores = {name: task.gold_reward(HOTEL, text) for name, text in
              [("good", good), ("spam", spam), ("off_topic", off_topic), ("negative", negative)]}
    # Positive but off topic loses as much as on topic but negative: each side counts.
    assert scores["good"] - scores["off_topic"] == pytest.approx(2 * math.tanh(2.1))
    assert scores["good"] - scores["negative"] > 1.8
    assert scores["good"] - scores["spam"] > 2.5  # repetition and no topic: spamming doesn't pay
    assert task.gold_reward(HOTEL, "") == -3.5


def test_sft_corpus_leaves_room_to_improve():
    rewards = [task.gold_reward(p, r) for p, r in task.sft_corpus(2000, 0)]
    mean = sum(rewards) / len(rewards)
    assert 1.0 < mean < 2.5  # best achievable is ~3.5
    assert max(rewards) < 3.6


def test_bradley_terry_labels_are_noisy_but_informative():
    rng = random.Random(0)
    wins = sum(task.bradley_terry_label(1.0, 0.5, 0.5, rng) for _ in range(4000))
    assert wins / 4000 == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)  # sigmoid(0.5 / 0.5)


def test_sft_reference_wins_about_half_against_itself(workdir):
    """Two independent samples from the SFT model: the 'policy' side is the reference itself."""
    from alignbench.config import compose
    from alignbench.models.generation import sample
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare
    from helpers import FAST

    cfg = compose(FAST + ["eval.n_prompts=64", "data.n_eval_prompts=64"])
    prepared = prepare(run_settings(cfg))
    ev = prepared.evaluator
    with prepared.models.reference_model() as ref:
        other = sample(ref, prepared.models.tokenizer, ev.prompts, max_new_tokens=cfg.eval.max_new_tokens,
                       temperature=1.0, max_prompt_length=cfg.train.max_prompt_length, batch_size=64,
                       seed=ev.seed + 1, device=prepared.models.device)
    scores = ev.judge.score(other.prompts, other.responses)
    ref_scores = ev.reference["scores"]
    wins = sum(a > b for a, b in zip(scores, ref_scores))
    ties = sum(a == b for a, b in zip(scores, ref_scores))
    rate, low, high = win_rate_ci(wins, ties, len(scores))
    assert low < 0.5 < high
