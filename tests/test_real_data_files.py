"""Real files at their real sizes: long multi-turn conversations in every supported format train end
to end at the external-data defaults; files that cannot be read get one line; a pathological row is
measured and dropped before anything is built from it. The files come from tests/data/make_files.py."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from alignbench.config import compose
from alignbench.data.parsing import parse_rows
from alignbench.training.settings import length_limits
from alignbench.data.preparing import read_split_rows, sft_corpus
from alignbench.data.records import DataError
from alignbench.tracking.null import NullTracker
from helpers import count_calls, local_source

_spec = importlib.util.spec_from_file_location("make_files", Path(__file__).parent / "data" / "make_files.py")
make_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_files)

# A whole run in seconds on these files; the lengths (train.max_length, max_prompt_length,
# data.long_prompts) stay at data=local's defaults, the point of these tests.
TINY = ["model.sft.steps=2", "model.sft.batch_size=4", "train.max_steps=2", "train.batch_size=2",
        "train.warmup_steps=1", "train.log_every=1", "eval.n_prompts=2", "eval.max_new_tokens=4",
        "eval.every_n_steps=0", "eval.n_pref_pairs=4", "eval.batch_size=16",
        "judge=reward_model", "judge.path=trained", "+method.reward_model.steps=2", "+method.reward_model.batch_size=2"]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny sequence-classification reward model saved with save_pretrained: KTO rows have no pairs
    to train the `judge.path=trained` reward model on."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from helpers import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer(300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge")
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    return {**make_files.write_format_files(out, n=24), **make_files.write_bad_files(out)}


def test_the_maker_writes_long_multi_turn_conversations_the_same_way_twice(tmp_path):
    a = make_files.write_format_files(tmp_path / "a", n=30)
    b = make_files.write_format_files(tmp_path / "b", n=30)
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in ("hh", "chat", "kto", "csv"))
    records, drops = parse_rows([json.loads(line) for line in a["hh"].read_text().splitlines()])
    assert len(records) == 30 and not drops
    turns = sorted(r.prompt.count("\n\nHuman:") for r in records)
    assert turns[0] == 1 and turns[-1] >= 5  # one to eight human turns
    assert sorted(len(r.prompt) for r in records)[15] > 500  # the median prompt: hundreds of tokens
    rows = make_files.hh_rows(2300, 100)
    assert len(rows) == 2300 and len({r["chosen"] for r in rows}) > 2200  # varied: few repeats


SLOW = pytest.mark.slow  # ~10 s each on 2 cores: the hh-rlhf case (the issue's) stays in the default suite


@pytest.mark.parametrize("kind, method", [("hh", "dpo"), pytest.param("chat", "dpo", marks=SLOW),
                                          pytest.param("kto", "kto", marks=SLOW), pytest.param("csv", "ipo", marks=SLOW),
                                          pytest.param("parquet", "simpo", marks=SLOW)])
def test_each_format_trains_end_to_end_at_the_external_data_lengths(workdir, files, judge_dir, kind, method):
    from alignbench.training.run import train

    judge = [f"judge.path={judge_dir}"] if kind == "kto" else []
    cfg = compose([f"method={method}", "data=local", f"data.path={files[kind]}", *TINY, *judge])
    assert (cfg.train.max_length, cfg.train.max_prompt_length, cfg.data.long_prompts) == (192, 128, "truncate_left")
    tracker = NullTracker()
    result = train(cfg, tracker)
    assert 0.0 <= result.metrics["eval/win_rate"] <= 1.0 and result.metrics["eval/kl"] == result.metrics["eval/kl"]
    assert tracker.params["data.n_train"] == (38 if kind == "kto" else 20)  # 80% of the prompts; nothing dropped
    assert not [k for k in tracker.params if k.startswith("data.dropped.")]
    assert tracker.params["data.truncated.prompt"] > 0  # long conversations keep their last turns


def test_unreadable_files_get_one_line_naming_file_place_and_expectation(files):
    expected = {"latin-1": ("line 6, byte", "not UTF-8", "latin-1"), "binary": ("byte ", "binary data"),
                "gzip": ("byte 0", "gzip"), "json array": (":1:", "JSON array", "one JSON object per line"),
                "parquet schema": ("columns ['answer', 'question']", "expected prompt/chosen/rejected")}
    for kind, parts in expected.items():
        with pytest.raises(DataError) as err:
            read_split_rows(local_source(files[kind]), seed=0)
        message = str(err.value)
        assert "\n" not in message and message.startswith(str(files[kind])), message
        assert "expected" in message and all(p in message for p in parts), message


def test_a_latin1_file_exits_2_with_one_line(workdir, files, capsys):
    from alignbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "data=local", f"data.path={files['latin-1']}", "judge=reward_model", "tracking.enabled=false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alignbench: error: ") and "latin1.jsonl" in err[0] and "UTF-8" in err[0]


def test_a_10mb_prompt_is_dropped_before_tokenizer_sft_or_split_and_counted(workdir, monkeypatch):
    from alignbench.models import loading
    from alignbench.training.run import train

    path = workdir / "with_huge.jsonl"
    rows = make_files.hh_rows(200, 7)
    huge = "\n\nHuman: " + "why " * 2_500_000 + "\n\nAssistant:"  # a 10 MB prompt
    rows.insert(57, {"chosen": huge + " Because.", "rejected": huge + " No."})
    make_files.write_jsonl(path, rows)
    t0 = time.perf_counter()
    split = read_split_rows(local_source(path, max_row_chars=100_000), seed=0)
    assert time.perf_counter() - t0 < 5 and split.drops["row_too_long"] == 1  # measured in characters, not tokens
    assert sum(map(len, (split.train, split.validation, split.test))) == 200
    without = workdir / "without.jsonl"
    make_files.write_jsonl(without, rows[:57] + rows[58:])
    limits = length_limits(compose(["data=local", f"data.path={without}"]))
    same = read_split_rows(local_source(without, max_row_chars=100_000), seed=0)
    assert sft_corpus(split, limits, 8000) == sft_corpus(same, limits, 8000)  # the rest of the run is the same run
    tokenizer_texts = count_calls(monkeypatch, loading, "train_tokenizer")
    tracker = NullTracker()
    train(compose(["data=local", f"data.path={path}", *TINY, "train.max_length=96", "train.max_prompt_length=64"]),
          tracker)
    assert tracker.params["data.dropped.row_too_long"] == 1
    assert max(len(t) for t in tokenizer_texts[0][0]) < 20_000  # the tokenizer never saw it
