"""Held-out prompts are never trained on: the built-in task's train / validation / test prompt sets
are disjoint by construction, a data set is split by prompt before anything is trained, every run
logs `eval/prompts_seen_in_training` (0), and `seed` vs `task_seed` move what they should."""

from __future__ import annotations

import json

import pytest

from alignbench.config import ConfigError, compose, validate
from alignbench.data import builtin_task as task
from alignbench.data.preparing import (SplitRows, distinct_prompts, load_preference_data, read_split_rows,
                                       split_by_prompt)
from alignbench.tracking.null import NullTracker
from helpers import FAST, local_source

# ------------------------------------------------------------------------------ the built-in task


def test_builtin_prompt_sets_are_disjoint_and_cover_every_opener_and_subject_in_train():
    sets = {split: task.split_prompts(split) for split in task.SPLITS}
    assert {k: len(v) for k, v in sets.items()} == {"train": 192, "validation": 64, "test": 64}
    assert all(len(set(v)) == len(v) for v in sets.values())
    train, validation, test = (set(sets[s]) for s in task.SPLITS)
    assert not train & validation and not train & test and not validation & test
    assert len(train | validation | test) == len(task.OPENERS) * len(task.SUBJECTS) == 320
    for opener in task.OPENERS:
        assert any(p.startswith(opener + " ") for p in train), opener
    for subject in task.SUBJECTS:
        assert any(p.endswith(f" {subject}.\n") for p in train), subject
    assert all(task.prompt_topic(p) in task.TOPICS for p in train | validation | test)


def test_builtin_draws_stay_in_their_split():
    train, validation = set(task.split_prompts("train")), set(task.split_prompts("validation"))
    assert set(task.make_prompts(2000, 0)) == train  # 2000 draws cover all 192
    assert set(task.make_prompts(500, 0, "validation")) <= validation
    assert set(task.sft_prompts(3000, 0)) <= train
    assert [p for p, _ in task.sft_corpus(50, 1)] == task.sft_prompts(50, 1)
    chosen = task.eval_prompts("test", 100, 0)
    assert len(chosen) == len(set(chosen)) == 64 and set(chosen) == set(task.split_prompts("test"))
    assert task.eval_prompts("validation", 10, 0) == task.eval_prompts("validation", 64, 0)[:10]


def test_builtin_run_logs_no_prompt_seen_in_training(workdir):
    from alignbench.training.run import train

    tracker = NullTracker()
    result = train(compose(FAST), tracker)
    evals = [m for _, m in tracker.metrics if "eval/win_rate" in m]
    once = [(step, m["eval/prompts_seen_in_training"]) for step, m in tracker.metrics
            if "eval/prompts_seen_in_training" in m]
    assert len(evals) == 2 and once == [(0, 0)]  # logged once, before the evaluations (every one shares it)
    assert result.metrics["eval/prompts_seen_in_training"] == 0
    assert tracker.params["eval.split"] == "validation"
    assert tracker.params["eval.n_prompts_distinct"] == compose(FAST).eval.n_prompts
    validation = set(task.split_prompts("validation"))
    assert {r["prompt"] for r in result.rows} <= validation


def test_seed_moves_training_only_and_task_seed_moves_the_task(workdir):
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import load_builtin_task

    base, other_seed, other_task = (load_builtin_task(run_settings(compose([*FAST, *extra])))
                                    for extra in ([], ["seed=1"], ["task_seed=1"]))
    assert other_seed.models.key == base.models.key
    assert other_seed.train_records == base.train_records and other_seed.eval_records == base.eval_records
    assert other_seed.eval_prompts == base.eval_prompts
    assert other_task.models.key != base.models.key
    assert other_task.train_records != base.train_records and other_task.eval_records != base.eval_records
    assert other_task.eval_prompts != base.eval_prompts
    assert set(other_task.eval_prompts) <= set(task.split_prompts("validation"))
    assert other_task.prompts_seen_in_training == 0
    on_test = load_builtin_task(run_settings(compose([*FAST, "eval.split=test"])))
    assert set(on_test.eval_prompts) <= set(task.split_prompts("test"))
    assert {r.prompt for r in base.eval_records} <= set(task.split_prompts("validation"))


def test_eval_temperature_other_than_one_is_rejected():
    with pytest.raises(ConfigError, match=r"^eval\.temperature=0\.7: must be 1\.0"):
        validate(compose(["eval.temperature=0.7"]))
    with pytest.raises(ConfigError, match=r"^eval\.split=train: must be validation or test"):
        validate(compose(["eval.split=train"]))
    with pytest.raises(ConfigError, match=r"^eval\.samples_per_prompt=0"):
        validate(compose(["eval.samples_per_prompt=0"]))


# ------------------------------------------------------------------------------ a data set

LONG_DIALOGUE = ("\n\nHuman: I am planning a trip to the mountains next month with my family and two dogs."
                 "\n\nAssistant: That sounds lovely. Do you know which area you would like to visit?"
                 "\n\nHuman: Somewhere with easy trails, a lake, and a cabin that allows pets. Ideas?"
                 "\n\nAssistant: Many national forests have pet-friendly cabins near lakes."
                 "\n\nHuman: Which one would you pick for {name}?\n\nAssistant:")


def hh_rows_with_repeated_prompts() -> list[dict]:
    """hh transcripts: 30 prompts (10 long multi-turn ones), each in 1-4 rows with different replies."""
    rows = []
    for i in range(30):
        prompt = LONG_DIALOGUE.format(name=f"family {i}") if i % 3 == 0 else f"\n\nHuman: Tell me about place {i}.\n\nAssistant:"
        for j in range(1 + i % 4):
            rows.append({"chosen": prompt + f" A good answer number {j}.", "rejected": prompt + f" Bad {j}."})
    return rows


def test_a_file_with_repeated_prompts_splits_by_prompt(tmp_path, tiny_tokenizer):
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in hh_rows_with_repeated_prompts()))
    source = local_source(path, validation_fraction=0.2, test_fraction=0.2)
    rows = read_split_rows(source, seed=0)
    assert rows.format == "hh" and len(rows.train) + len(rows.validation) + len(rows.test) == 73
    data = load_preference_data(rows, tiny_tokenizer, max_length=400, max_prompt_length=300)
    sets = [set(distinct_prompts(part)) for part in (data.train, data.validation, data.test)]
    assert [len(s) for s in sets] == [18, 6, 6]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert any("\n\nHuman: Which one" in p for p in sets[1] | sets[2])  # long prompts are held out too
    assert len(data.train) + len(data.validation) + len(data.test) == 73  # every row of a prompt kept together
    assert read_split_rows(source, seed=0) == rows and read_split_rows(source, seed=1) != rows


def test_train_rows_sharing_a_held_out_prompt_are_dropped(tiny_tokenizer):
    rows = [{"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(10)]
    split = SplitRows(rows[:8] + [dict(rows[8], chosen=" sure")], [rows[8]], [rows[9]], "pairs")
    data = load_preference_data(split, tiny_tokenizer, max_length=32, max_prompt_length=16)
    assert len(data.train) == 8 and data.drops["prompt_in_held_out_set"] == 1
    assert "q8" not in distinct_prompts(data.train)


def test_split_by_prompt_keeps_unparseable_rows_in_train():
    items = [("a", 1), ("b", 2), (None, 3), ("a", 4), ("c", 5), ("d", 6)]
    train, validation, test = split_by_prompt(items, lambda x: x[0], 0.25, 0.25, seed=0)
    assert (None, 3) in train and len(validation) + len(test) in (2, 3)
    assert ({x[0] for x in validation} | {x[0] for x in test}).isdisjoint({x[0] for x in train})


def test_local_file_run_never_evaluates_on_a_training_prompt(workdir):
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import load_data_set

    path = workdir / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in hh_rows_with_repeated_prompts()))
    overrides = [*(o for o in FAST if not o.startswith("data.")),  # the built-in task's sizes
                 "data=local", f"data.path={path}", "data.validation_fraction=0.2", "data.test_fraction=0.2",
                 "train.max_prompt_length=160", "train.max_length=200"]
    loaded = load_data_set(run_settings(compose(overrides)))
    assert loaded.prompts_seen_in_training == 0 and not loaded.drops
    train = set(distinct_prompts(loaded.train_records))
    assert len(train) == 18 and len(loaded.eval_prompts) == 6
    assert train.isdisjoint(loaded.eval_prompts) and train.isdisjoint(distinct_prompts(loaded.eval_records))
    on_test = load_data_set(run_settings(compose([*overrides, "eval.split=test"])))
    assert set(on_test.eval_prompts).isdisjoint(loaded.eval_prompts) and on_test.prompts_seen_in_training == 0
    assert on_test.models.key == loaded.models.key  # the split, and so the SFT corpus, does not depend on eval.split
