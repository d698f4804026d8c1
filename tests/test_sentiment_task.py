"""data=sentiment: real English prompts, a VADER gold reward under guards (hand-worked values on real
sentences, degenerate replies scoring worst, the ways it can still be gamed), pairs labelled by the
gold reward with the small-gap drops counted, the one-line errors, and a short run on the built-in
tiny model (gold judge accuracy 1.0 on held-out pairs by construction)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from alignbench.config import ConfigError, compose, validate
from alignbench.data import sentiment_task as task
from alignbench.data.records import DataError
from helpers import TINY_SENTIMENT

# VADER: compound = s / sqrt(s^2 + 15), s the sum of the words' valences ("good" 1.9, "awful" -2.0).
GOOD = 1.9 / math.sqrt(1.9 ** 2 + 15)      # 0.4404
AWFUL = -2.0 / math.sqrt(2.0 ** 2 + 15)    # -0.4588


def test_prompt_sets_are_disjoint_with_64_test_prompts_and_every_opener_and_subject_in_train():
    sets = {split: task.split_prompts(split) for split in task.SPLITS}
    assert {k: len(v) for k, v in sets.items()} == {"train": 192, "validation": 64, "test": 64}
    train, validation, test = (set(sets[s]) for s in task.SPLITS)
    assert not train & validation and not train & test and not validation & test
    assert len(train | validation | test) == len(task.OPENERS) * len(task.SUBJECTS) == 320
    assert all(any(p.startswith(o + " ") for p in train) for o in task.OPENERS)
    assert all(any(p.endswith(f" {s}.\n") for p in train) for s in task.SUBJECTS)
    assert set(task.make_prompts(500, 0, "validation")) <= validation
    assert set(task.sft_prompts(300, 0)) <= train
    chosen = task.eval_prompts("test", 100, 0)
    assert len(chosen) == len(set(chosen)) == 64 and set(chosen) == test


@pytest.mark.parametrize("reply, quality, compound", [
    ("It was a good day at the park.", 1.0, GOOD),           # 8 words, 5 function words, all distinct
    ("The food was good.", 4 / 6, GOOD),                     # 4 words of the 6 a full reply needs
    ("The room was awful.", 4 / 6, AWFUL),
    ("I went to the park and then I went home.", 1.0, 0.0),  # no sentiment word
])
def test_gold_reward_hand_worked_on_real_sentences(reply, quality, compound):
    assert task.quality(reply) == pytest.approx(quality)
    assert task.sentiment(reply) == pytest.approx(compound, abs=1e-4)  # VADER rounds to 4 places
    assert task.gold_reward("Describe the city park.\n", reply) == pytest.approx(quality * (1 + compound) - 1, abs=1e-4)


def test_degenerate_replies_score_worst_and_below_a_plain_neutral_reply():
    neutral = task.gold_reward("", "I went to the park and then I went home.")  # 0.0
    degenerate = {
        "empty": "",
        "whitespace": "  \n ",
        "one gushing word repeated": "great great great great great great great great",
        "one word": "Wonderful!",
        "adjective salad": "wonderful amazing superb lovely brilliant fantastic",
        "non-English": "Отличный отель, всё было прекрасно и мне понравилось.",
        "digits and symbols": "1234 !!! ??? 5678",
    }
    scores = {name: task.gold_reward("", reply) for name, reply in degenerate.items()}
    assert scores == {name: -1.0 for name in degenerate}, scores
    assert neutral == 0.0
    # A guard never lifts a negative reply: the degenerate negative one is below the fluent negative one.
    assert task.gold_reward("", "awful awful awful awful") == -1.0 < task.gold_reward("", "The room was awful.")


def test_how_the_gold_reward_can_be_gamed():
    """Pinned so that a change to the guards is seen: the reward ignores the prompt, and distinct
    positive words strung together with function words pass every guard."""
    prompt = "Write a short review of the broken washing machine.\n"
    on_topic = "The washing machine broke twice, but the repair man was quick and fixed it."
    off_topic = "I love it, it is the best day of my life and I am so happy!"
    assert task.gold_reward(prompt, off_topic) > 0.9 > task.gold_reward(prompt, on_topic)
    salad = "the great and the wonderful and the lovely and the superb and the amazing"
    assert task.quality(salad) == 1.0 and task.gold_reward(prompt, salad) > 0.95


def test_pairs_are_labelled_by_gold_and_small_gaps_dropped_and_counted():
    prompts = ["p1", "p2", "p3", "p4"]
    first = ["It was a good day at the park.",           # 0.4404
             "I went to the park and then I went home.",  # 0.0
             "It was a good day at the park.",           # 0.4404
             ""]                                          # -1.0
    second = ["I went to the park and then I went home.",  # gap 0.44: first chosen
              "It was a good day at the park.",           # gap 0.44: second chosen
              "It was a good day at the zoo.",            # gap 0: dropped
              "great great great"]                        # -1.0 vs -1.0: dropped
    rows, dropped = task.label_by_gold(prompts, first, second, min_gap=0.2)
    assert dropped == 2
    assert rows == [{"prompt": "p1", "chosen": first[0], "rejected": second[0]},
                    {"prompt": "p2", "chosen": second[1], "rejected": first[1]}]
    rows, dropped = task.label_by_gold(prompts, first, second, min_gap=0.5)
    assert (rows, dropped) == ([], 4)
    assert task.label_by_gold(prompts, first, second, min_gap=0.0)[1] == 0  # ties kept at gap 0 (second chosen)


def test_missing_lexicon_package_is_one_line(monkeypatch):
    import importlib.util

    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # import fails
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    task._analyzer.cache_clear()
    with pytest.raises(DataError, match=r"^data=sentiment: its gold reward needs the lexicon package vaderSentiment; "
                                        r"install it with `pip install vaderSentiment==3.3.2`$"):
        task.require_lexicon()
    task._analyzer.cache_clear()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vaderSentiment" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="needs the lexicon package vaderSentiment"):
        validate(compose(["data=sentiment"]))


@pytest.mark.parametrize("override, message", [
    ("data.n_train_prompts=0", "data.n_train_prompts=0: no prompts to sample pairs on (must be an integer >= 1)"),
    ("data.n_eval_prompts=0", "data.n_eval_prompts=0: no prompts to sample pairs on (must be an integer >= 1)"),
    ("data.min_gold_gap=2.5", "data.min_gold_gap=2.5: must be in [0, 2) (gold rewards lie in [-1, 1])"),
    ("data.task=imdb", "data.task=imdb: must be builtin or sentiment"),
])
def test_bad_task_settings_are_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(["data=sentiment", override]))
    assert str(err.value) == message


def test_gold_judge_and_ppo_gold_are_valid_on_sentiment():
    validate(compose(["data=sentiment", "judge=gold"]))
    validate(compose(["data=sentiment", "method=ppo", "method.reward=gold"]))


# A short run on the built-in tiny model: an SFT stage on the task's English corpus, pairs sampled from it.


def test_a_short_dpo_run_on_the_tiny_model_logs_gold_drops_and_a_perfect_gold_judge(workdir):
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    tracker = NullTracker()
    result = train(compose(TINY_SENTIMENT), tracker)
    m, params = result.metrics, tracker.params
    kept, dropped = params["data.n_train"], params["data.dropped.gold_gap_too_small"]
    assert kept + dropped == 64 and kept >= 8 and dropped >= 1
    assert "data.dropped.held_out_gold_gap_too_small" in params
    assert m["eval/judge_accuracy"] == 1.0  # the gold judge on pairs the gold reward labelled, gaps >= 0.2
    assert m["eval/n_prompts"] == 16 and -1.0 <= m["eval/gold_reward"] <= 1.0
    assert -1.0 <= m["eval/reference_gold_reward"] <= 1.0
    validation = set(task.split_prompts("validation"))
    assert {r["prompt"] for r in result.rows} <= validation
    assert m["eval/prompts_seen_in_training"] == 0


def test_too_few_pairs_after_the_gap_filter_is_one_line(workdir):
    done = subprocess.run([sys.executable, "-m", "alignbench.cli", "train", *TINY_SENTIMENT, "data.min_gold_gap=1.99",
                           "tracking.enabled=false"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("alignbench: error: only ") and "gold_gap_too_small=" in last and "need at least 8" in last
    assert "Traceback" not in done.stderr
