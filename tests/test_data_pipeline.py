"""alignbench.data.reading, .parsing, .tokenizing, .preparing: reading, parsing, dropping, splitting and
tokenising preference data."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alignbench.data.parsing import detect_format, parse_rows
from alignbench.config import CONF_DIR
from alignbench.data.preparing import (load_preference_data, log_drops, read_split_rows, require_enough, split_records,
                                       to_unpaired)
from alignbench.data.reading import read_rows, read_split
from alignbench.data.records import DataError, PreferenceRecord, UnpairedRecord
from alignbench.training.settings import data_source
from alignbench.data.measuring import CHARS_PER_TOKEN, LengthLimits, bound_characters, drop_huge_rows, text_chars
from alignbench.data.tokenizing import (build_sequences, filter_records, fit_prompt, prompt_ids, tokenize_pairs,
                                        tokenize_unpaired)
from helpers import local_source

PAIRS = [
    {"prompt": "Review the film:", "chosen": " It was great.", "rejected": " It was bad."},
    {"prompt": "Review the food:", "chosen": " Lovely soup.", "rejected": " Cold soup."},
    {"prompt": "Review the book:", "chosen": " A fun story.", "rejected": " A sad story."},
]

HH_PROMPT = ("\n\nHuman: What is a good book to read?\n\nAssistant: What kind of books do you like?"
             "\n\nHuman: Happy stories with a good ending.\n\nAssistant:")
HH_ROW = {
    "chosen": HH_PROMPT + " Try The Hobbit, it is a fun story with a happy ending.",
    "rejected": HH_PROMPT + " Books are boring.",
}

SIMPLE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------ reading

def _write(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_read_local_file_types(tmp_path, suffix):
    path = _write(tmp_path / f"prefs{suffix}", PAIRS)
    rows = read_rows(local_source(path))
    assert rows == PAIRS
    assert all(type(r) is dict for r in rows)
    assert read_rows(local_source(path, max_rows=2)) == PAIRS[:2]


def test_read_json_lines_in_dot_json_and_blank_lines(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    assert read_rows(local_source(path)) == PAIRS[:2]


def test_read_parquet_keeps_message_lists_plain(tmp_path):
    row = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    path = _write(tmp_path / "chat.parquet", [row])
    rows = read_rows(local_source(path))
    assert rows == [row]
    assert type(rows[0]["chosen"]) is list


def test_read_csv_labels_and_empty_cells(tmp_path):
    path = _write(tmp_path / "kto.csv", [{"prompt": "Q", "completion": "", "label": True},
                                         {"prompt": "Q", "completion": "NA", "label": False}])
    rows = read_rows(local_source(path))
    assert rows == [{"prompt": "Q", "completion": "", "label": "True"},
                    {"prompt": "Q", "completion": "NA", "label": "False"}]  # "NA" stays text
    records, drops = parse_rows(rows)
    assert records == [UnpairedRecord("Q", "NA", False)]
    assert drops == Counter(empty_response=1)


def test_read_local_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="not found.*nope.jsonl"):
        read_rows(local_source(missing))
    txt = tmp_path / "prefs.txt"
    txt.write_text("hello")
    with pytest.raises(DataError, match=r"unknown data file type '\.txt'"):
        read_rows(local_source(txt))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="bad.jsonl:2: invalid JSON"):
        read_rows(local_source(bad))
    with pytest.raises(DataError, match="data.source"):
        read_rows(local_source(bad, source="ftp"))
    with pytest.raises(DataError, match="data.path is required"):
        data_source(OmegaConf.create({"source": "local", "path": None}))


def test_read_missing_mandatory_path_from_omegaconf():
    cfg = OmegaConf.load(CONF_DIR / "data" / "local.yaml")  # path: ???
    with pytest.raises(DataError, match=r"^data.path is required but not set \(data.path=/path/to/file.jsonl\)$"):
        data_source(cfg)


def test_read_hub_code_path_on_local_dataset_dir(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    ds_dir = tmp_path / "my_dataset"
    ds_dir.mkdir()
    _write(ds_dir / "train.jsonl", PAIRS)
    _write(ds_dir / "test.jsonl", PAIRS[:1])
    cfg = local_source(ds_dir, source="hub", split="train", max_rows=2)
    assert read_rows(cfg) == PAIRS[:2]
    assert read_split(cfg, "test") == PAIRS[:1]
    with pytest.raises(DataError, match="could not load dataset .*split 'validation'"):
        read_split(cfg, "validation")


# ------------------------------------------------------------------------------ formats

def test_detect_format():
    assert detect_format(PAIRS[0]) == "pairs"
    assert detect_format(HH_ROW) == "hh"
    assert detect_format({"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}],
                          "rejected": [{"role": "assistant", "content": "b"}]}) == "chat"
    assert detect_format({"chosen": [], "rejected": []}) == "chat"
    assert detect_format({"prompt": "x", "completion": "y", "label": True}) == "unpaired"
    with pytest.raises(DataError, match="cannot detect the data format from columns \\['answer', 'question'\\]"):
        detect_format({"question": "q", "answer": "a"})


def test_parse_pairs_counts_every_drop_reason():
    rows = PAIRS + [
        {"chosen": "a", "rejected": "b"},                             # missing_field (no prompt)
        {"prompt": "p", "chosen": None, "rejected": "b"},             # missing_field
        {"prompt": "  ", "chosen": "a", "rejected": "b"},             # missing_field (empty prompt)
        {"prompt": "p", "chosen": "   ", "rejected": "b"},            # empty_response
        {"prompt": "p", "chosen": "a", "rejected": ""},               # empty_response
        {"prompt": "p", "chosen": " same", "rejected": "same "},      # chosen_equals_rejected
        {"prompt": "p", "chosen": 3, "rejected": "b"},                # bad_format
    ]
    records, drops = parse_rows(rows)  # auto: the majority of rows are pairs
    assert records == [PreferenceRecord(**r) for r in PAIRS]
    assert drops == Counter(missing_field=3, empty_response=2, chosen_equals_rejected=1, bad_format=1)


def test_parse_rows_rejects_unknown_format_and_handles_empty():
    with pytest.raises(DataError, match="data.format"):
        parse_rows(PAIRS, fmt="sharegpt")
    assert parse_rows([]) == ([], Counter())


def test_parse_hh_two_turn_transcript():
    records, drops = parse_rows([HH_ROW])
    assert drops == Counter()
    (r,) = records
    assert r.prompt == HH_PROMPT
    assert r.prompt.endswith("\n\nAssistant:")
    assert "What kind of books do you like?" in r.prompt  # the first assistant turn is context
    assert r.chosen == " Try The Hobbit, it is a fun story with a happy ending."
    assert r.rejected == " Books are boring."


def test_parse_hh_bad_rows():
    rows = [
        HH_ROW,
        # the dialogues differ before the final assistant turn
        {"chosen": HH_PROMPT + " Yes.", "rejected": HH_PROMPT.replace("Happy", "Sad") + " No."},
        # no assistant turn at all
        {"chosen": "\n\nHuman: hi there", "rejected": "\n\nHuman: hello"},
        # rejected has an extra turn, so its last assistant turn is elsewhere
        {"chosen": HH_PROMPT + " Yes.", "rejected": HH_PROMPT + " No.\n\nHuman: why?\n\nAssistant: Because."},
        # nothing after the last marker
        {"chosen": HH_PROMPT + " Yes.", "rejected": HH_PROMPT + "  "},
        {"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"]},
        {"chosen": HH_ROW["chosen"]},
    ]
    records, drops = parse_rows(rows, fmt="hh")
    assert len(records) == 1
    assert drops == Counter(bad_format=3, empty_response=1, chosen_equals_rejected=1, missing_field=1)


def _conv(user, reply, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def test_parse_chat_fallback_rendering_without_template(tiny_tokenizer):
    assert not tiny_tokenizer.chat_template
    row = {"prompt": "How was the film?",  # UltraFeedback: prompt string + whole conversations
           "chosen": _conv("How was the film?", "Great acting.", system="Be kind."),
           "rejected": _conv("How was the film?", "Bad.", system="Be kind.")}
    records, drops = parse_rows([row], tokenizer=tiny_tokenizer)
    assert drops == Counter()
    assert records == [PreferenceRecord("System: Be kind.\n\nUser: How was the film?\n\nAssistant:",
                                        " Great acting.", " Bad.")]
    # no tokenizer at all renders the same way
    assert parse_rows([row])[0] == records


def test_parse_chat_with_chat_template(tiny_tokenizer):
    tiny_tokenizer.chat_template = SIMPLE_TEMPLATE
    multi_turn = _conv("hi", "hello") + [{"role": "user", "content": "a joke?"}]
    rows = [
        {"chosen": multi_turn + [{"role": "assistant", "content": "Knock knock."}],
         "rejected": multi_turn + [{"role": "assistant", "content": "No."}]},
        # TRL explicit prompt: prompt messages + reply-only lists
        {"prompt": [{"role": "user", "content": "hi"}],
         "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        # prompt string + reply-only lists: the prompt is the user turn
        {"prompt": "hi", "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "bye"}]},
    ]
    records, drops = parse_rows(rows, tokenizer=tiny_tokenizer)
    assert drops == Counter()
    assert records[0] == PreferenceRecord(
        "<|user|>hi\n<|assistant|>hello\n<|user|>a joke?\n<|assistant|>", "Knock knock.", "No.")
    assert records[1] == PreferenceRecord("<|user|>hi\n<|assistant|>", "hello", "go away")
    assert records[2] == PreferenceRecord("<|user|>hi\n<|assistant|>", "hello", "bye")


def test_parse_chat_bad_rows(tiny_tokenizer):
    good = {"chosen": _conv("hi", "hello"), "rejected": _conv("hi", "bye")}
    rows = [
        good,
        {"chosen": _conv("hi", "hello"), "rejected": _conv("hey", "bye")},            # bad_format
        {"chosen": _conv("hi", "hello")[:1], "rejected": _conv("hi", "bye")[:1]},     # bad_format (user last)
        {"chosen": [{"role": "user"}], "rejected": _conv("hi", "bye")},               # bad_format
        {"chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},                        # missing_field (no prompt)
        {"chosen": _conv("hi", " "), "rejected": _conv("hi", "bye")},                 # empty_response
        {"chosen": _conv("hi", "same"), "rejected": _conv("hi", "same")},             # chosen_equals_rejected
        {"chosen": None, "rejected": _conv("hi", "bye")},                             # missing_field
    ]
    records, drops = parse_rows(rows, tokenizer=tiny_tokenizer)
    assert records == [PreferenceRecord("User: hi\n\nAssistant:", " hello", " bye")]
    assert drops == Counter(bad_format=3, missing_field=2, empty_response=1, chosen_equals_rejected=1)


def test_chat_template_errors_drop_the_row(tiny_tokenizer):
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    rows = [{"chosen": _conv("hi", "a", system="s"), "rejected": _conv("hi", "b", system="s")}]
    assert parse_rows(rows, tokenizer=tiny_tokenizer) == ([], Counter(bad_format=1))


def test_parse_unpaired():
    rows = [
        {"prompt": "p1", "completion": "good", "label": True},
        {"prompt": "p1", "completion": "bad", "label": False},
        {"prompt": "p2", "completion": "ok", "label": 1},
        {"prompt": "p2", "completion": "fine", "label": "false"},
        {"prompt": "p3", "completion": "?", "label": "maybe"},      # bad_format
        {"prompt": "p3", "completion": "", "label": True},          # empty_response
        {"prompt": "p3", "completion": None, "label": True},        # missing_field
        {"prompt": "p3", "completion": "x", "label": None},         # missing_field
        {"prompt": [{"role": "user", "content": "hi"}],             # conversational KTO row
         "completion": [{"role": "assistant", "content": "hello"}], "label": True},
    ]
    records, drops = parse_rows(rows)
    assert records == [
        UnpairedRecord("p1", "good", True), UnpairedRecord("p1", "bad", False),
        UnpairedRecord("p2", "ok", True), UnpairedRecord("p2", "fine", False),
        UnpairedRecord("User: hi\n\nAssistant:", " hello", True),
    ]
    assert drops == Counter(bad_format=1, empty_response=1, missing_field=2)


# ------------------------------------------------------------------------------ filtering, splitting

def test_filter_records_drops_prompts_that_do_not_fit(tiny_tokenizer):
    short = PreferenceRecord("Review the film:", " It was great.", " It was bad.")
    long = PreferenceRecord("Review the film: " * 10, " It was great.", " It was bad.")
    n_short = len(ids(tiny_tokenizer, short.prompt)) + 1  # + BOS
    kept, drops, cut = filter_records([short, long], tiny_tokenizer, max_length=64, max_prompt_length=n_short)
    assert kept == [short]
    assert drops == Counter(prompt_too_long=1) and cut == Counter()
    # max_length leaves no response token
    kept, drops, _ = filter_records([short], tiny_tokenizer, max_length=n_short, max_prompt_length=64)
    assert kept == [] and drops == Counter(prompt_too_long=1)
    # one response token left: " It" for both, so the pair would carry no signal
    kept, drops, _ = filter_records([short], tiny_tokenizer, max_length=n_short + 1, max_prompt_length=64)
    assert kept == [] and drops == Counter(chosen_equals_rejected=1)
    # unpaired records are filtered on the prompt only
    unpaired = to_unpaired([short, long])
    kept, drops, _ = filter_records(unpaired, tiny_tokenizer, max_length=64, max_prompt_length=n_short)
    assert kept == unpaired[:2] and drops == Counter(prompt_too_long=2)


def test_filter_records_truncate_left_keeps_long_prompts_and_counts_cuts(tiny_tokenizer):
    short = PreferenceRecord("Review the film:", " Great acting, fun story.", " Bad acting, sad story.")
    long = PreferenceRecord("Review the film: " * 10, short.chosen, short.rejected)
    n_short = len(ids(tiny_tokenizer, short.prompt)) + 1
    kept, drops, cut = filter_records([short, long], tiny_tokenizer, max_length=n_short + 2,
                                      max_prompt_length=n_short, long_prompts="truncate_left")
    assert kept == [short, long] and drops == Counter()
    assert cut == Counter(prompt=1, response=2)  # both responses run past the 2 tokens left
    out = tokenize_pairs(kept, tiny_tokenizer, max_length=n_short + 2, max_prompt_length=n_short)
    assert out["prompt_lengths"].tolist() == [n_short, n_short]
    long_ids = [tiny_tokenizer.bos_token_id] + ids(tiny_tokenizer, long.prompt)
    assert out["chosen_input_ids"][1, :n_short].tolist() == [long_ids[0]] + long_ids[-(n_short - 1):]
    assert out["chosen_response_mask"].sum(1).tolist() == [2, 2]  # never a prompt token in the response


def test_fit_prompt_keeps_bos_and_the_last_tokens():
    assert fit_prompt([1, 5, 6, 7, 8], 3, bos=1) == [1, 7, 8]
    assert fit_prompt([5, 6, 7, 8], 3, bos=1) == [6, 7, 8]  # no leading BOS: only the last tokens
    assert fit_prompt([1, 5], 3, bos=1) == [1, 5]


def test_bound_characters_and_huge_rows():
    limits = LengthLimits(max_length=4, max_prompt_length=2, long_prompts="truncate_left")
    budget = CHARS_PER_TOKEN * 2
    long = PreferenceRecord("a" * (budget + 7) + "END", "x" * 500, "y")
    (cut,), drops = bound_characters([long], limits)
    assert drops == Counter() and cut.prompt == ("a" * (budget + 7) + "END")[-budget:] and cut.prompt.endswith("END")
    assert cut.chosen == "x" * CHARS_PER_TOKEN * 4 and cut.rejected == "y"
    kept, drops = bound_characters([long, PreferenceRecord("p", "a", "b")], LengthLimits(4, 2, "drop"))
    assert [r.prompt for r in kept] == ["p"] and drops == Counter(prompt_too_long=1)
    unpaired = UnpairedRecord("p", "z" * 500, True)
    assert bound_characters([unpaired], limits)[0][0].completion == "z" * CHARS_PER_TOKEN * 4
    rows = [{"prompt": "p", "chosen": [{"role": "assistant", "content": "c" * 50}], "rejected": "r"}, {"prompt": "q"}]
    assert text_chars(rows[0]) == 1 + 9 + 50 + 1  # the strings inside message lists count too
    assert drop_huge_rows(rows, 20) == ([rows[1]], Counter(row_too_long=1))
    assert drop_huge_rows(rows, None) == (rows, Counter())
    with pytest.raises(DataError, match="data.long_prompts=keep"):
        LengthLimits(4, 2, "keep")


def test_sft_steps_stop_after_max_epochs():
    from alignbench.models.builtin import sft_steps
    from alignbench.models.settings import SFTSettings

    sft = SFTSettings(enabled=True, steps=400, batch_size=48, lr=1e-3, n_examples=8000, max_epochs=3, config_json="{}")
    assert sft_steps(sft, 8000) == 400  # the built-in task: 2.4 passes, every step runs
    assert sft_steps(sft, 1840) == 115  # ceil(3 * 1840 / 48)
    assert sft_steps(dataclasses.replace(sft, max_epochs=None), 10) == 400


def test_to_unpaired_counts_and_order():
    pairs = [PreferenceRecord(**r) for r in PAIRS]
    unpaired = to_unpaired(pairs)
    assert len(unpaired) == 2 * len(pairs)
    assert sum(u.desirable for u in unpaired) == len(pairs)
    for i, p in enumerate(pairs):
        assert unpaired[2 * i] == UnpairedRecord(p.prompt, p.chosen, True)
        assert unpaired[2 * i + 1] == UnpairedRecord(p.prompt, p.rejected, False)


def test_split_records_seeded_and_disjoint():
    records = [PreferenceRecord(f"prompt {i}", "a", "b") for i in range(100)]
    train, validation, test = split_records(records, 0.1, 0.05, seed=0)
    assert (len(train), len(validation), len(test)) == (85, 10, 5)
    assert split_records(records, 0.1, 0.05, seed=0) == (train, validation, test)
    assert split_records(records, 0.1, 0.05, seed=1)[1] != validation
    sets = [{r.prompt for r in part} for part in (train, validation, test)]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert sorted(train + validation + test, key=lambda r: int(r.prompt.split()[1])) == records
    # at least one held-out record per set, at least one train record
    assert [len(s) for s in split_records(records[:3], 0.01, 0.01, seed=0)] == [1, 1, 1]
    assert [len(s) for s in split_records(records[:3], 0.9, 0.9, seed=0)] == [1, 1, 1]
    assert [len(s) for s in split_records(records[:2], 0.5, 0.5, seed=0)] == [1, 1, 0]
    assert split_records(records[:3], 0.0, 0.0, seed=0) == (records[:3], [], [])


def test_split_keeps_a_prompts_unpaired_examples_together():
    unpaired = to_unpaired([PreferenceRecord(f"p{i}", "a", "b") for i in range(20)])
    train, validation, test = split_records(unpaired, 0.25, 0.1, seed=3)
    assert (len(train), len(validation), len(test)) == (26, 10, 4)
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in validation + test})


def test_log_drops_and_require_enough(capsys, caplog):
    drops = Counter(empty_response=3, bad_format=1)
    metrics = log_drops(drops, 100)
    assert metrics == {"data/total": 100, "data/kept": 96, "data/dropped/bad_format": 1,
                       "data/dropped/empty_response": 3}
    assert "kept 96 of 100 rows; dropped: bad_format=1, empty_response=3" in capsys.readouterr().out
    with caplog.at_level(logging.INFO):
        log_drops(Counter(), 5, logging.getLogger("test"), prefix="data/eval")
    assert "data/eval: kept 5 of 5 rows; dropped: none" in caplog.text

    records = [PreferenceRecord("p", "a", "b")] * 5
    require_enough(records, 5, drops)
    with pytest.raises(DataError) as err:
        require_enough(records, 8, drops)
    assert str(err.value).startswith("only 5 usable rows of 9 after dropping: empty_response=3, bad_format=1")


# ------------------------------------------------------------------------------ end to end

def test_load_preference_data_local(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"Review {i}:", "chosen": " good", "rejected": " bad"} for i in range(20)]
    rows += [{"prompt": "Review x:", "chosen": "", "rejected": " bad"}, {"prompt": "p" * 300, "chosen": "a", "rejected": "b"}]
    path = _write(tmp_path / "prefs.jsonl", rows)
    rows = read_split_rows(local_source(path), seed=0)
    data = load_preference_data(rows, tiny_tokenizer, max_length=32, max_prompt_length=16)
    assert data.format == "pairs" and data.paired
    # 21 prompts a row can be kept under (the empty response's row stays in train, to be counted
    # there): 2 validation, 2 test; train keeps 16 of its 18 rows
    assert (len(data.train), len(data.validation), len(data.test)) == (16, 2, 2)
    assert data.drops == Counter(empty_response=1, prompt_too_long=1)
    assert data.metrics["data/kept"] == 16 and data.metrics["data/dropped/prompt_too_long"] == 1
    assert data.metrics["data/validation/kept"] == 2 and data.metrics["data/test"] == 2
    again = load_preference_data(read_split_rows(local_source(path), seed=0), tiny_tokenizer, max_length=32,
                                 max_prompt_length=16)
    assert (again.validation, again.test) == (data.validation, data.test)
    assert data.held_out("test") == data.test

    with pytest.raises(DataError, match="only 16 usable rows of 18 after dropping"):
        load_preference_data(rows, tiny_tokenizer, max_length=32, max_prompt_length=16, min_records=21)


def test_too_few_rows_after_dropping(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "p", "chosen": "", "rejected": "b"}] * 6 + PAIRS
    path = _write(tmp_path / "prefs.csv", rows)
    with pytest.raises(DataError) as err:
        load_preference_data(read_split_rows(local_source(path), seed=0), tiny_tokenizer,
                             max_length=64, max_prompt_length=32)
    assert "only 1 usable rows of 7 after dropping: empty_response=6" in str(err.value)  # 2 prompts held out


# ------------------------------------------------------------------------------ tensors

def test_tokenize_pairs_masks(tiny_tokenizer):
    tok = tiny_tokenizer
    records = [PreferenceRecord(**r) for r in PAIRS]
    out = tokenize_pairs(records, tok, max_length=64, max_prompt_length=32)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    n = len(records)
    for side in ("chosen", "rejected"):
        input_ids = out[f"{side}_input_ids"]
        attn, resp = out[f"{side}_attention_mask"], out[f"{side}_response_mask"]
        assert input_ids.shape == attn.shape == resp.shape == out["chosen_input_ids"].shape
        assert input_ids.dtype == torch.long and input_ids.shape[0] == n
        for i, r in enumerate(records):
            p, y = ids(tok, r.prompt), ids(tok, getattr(r, side))
            assert resp[i].sum().item() == len(y) + 1  # response tokens + EOS
            assert attn[i].sum().item() == 1 + len(p) + len(y) + 1
            length = attn[i].sum().item()
            assert input_ids[i, :length].tolist() == [bos] + p + y + [eos]
            assert input_ids[i, length:].eq(pad).all()
            assert resp[i, : 1 + len(p)].eq(0).all() and resp[i, length:].eq(0).all()
            assert out["prompt_lengths"][i].item() == 1 + len(p)


def test_tokenize_pairs_truncation_keeps_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    r = PreferenceRecord("Review the film:", " It was great and the acting was fun." * 3, " Bad.")
    p = [tok.bos_token_id] + ids(tok, r.prompt)
    max_length = len(p) + 5
    out = tokenize_pairs([r], tok, max_length=max_length, max_prompt_length=len(p))
    chosen = out["chosen_input_ids"][0]
    assert out["chosen_attention_mask"][0].sum().item() == max_length
    assert chosen[: len(p)].tolist() == p  # the prompt is intact
    assert chosen[len(p):].tolist() == ids(tok, r.chosen)[:5]  # the response is cut (EOS with it)
    assert out["chosen_response_mask"][0].sum().item() == 5
    assert out["rejected_response_mask"][0].sum().item() == len(ids(tok, " Bad.")) + 1
    # a prompt over max_prompt_length (kept by long_prompts=truncate_left) keeps BOS and its last tokens
    cut = tokenize_pairs([r], tok, max_length=64, max_prompt_length=len(p) - 1)
    assert cut["prompt_lengths"].tolist() == [len(p) - 1]
    assert cut["chosen_input_ids"][0, : len(p) - 1].tolist() == [p[0]] + p[2:]


def test_tokenize_does_not_double_bos_from_chat_template(tiny_tokenizer):
    tiny_tokenizer.chat_template = "<|bos|>" + SIMPLE_TEMPLATE
    (record,), _ = parse_rows([{"chosen": _conv("hi", "hello"), "rejected": _conv("hi", "bye")}],
                              tokenizer=tiny_tokenizer)
    out = tokenize_pairs([record], tiny_tokenizer, 64, 32)
    row = out["chosen_input_ids"][0].tolist()
    assert row[0] == tiny_tokenizer.bos_token_id and row[1] != tiny_tokenizer.bos_token_id


def test_tokenize_unpaired_and_mismatched_sequences(tiny_tokenizer):
    tok = tiny_tokenizer
    records = to_unpaired([PreferenceRecord(**r) for r in PAIRS])
    out = tokenize_unpaired(records, tok, max_length=64, max_prompt_length=32)
    assert out["desirable"].tolist() == [True, False] * 3
    assert out["desirable"].dtype == torch.bool
    assert out["input_ids"].shape == out["attention_mask"].shape == out["response_mask"].shape
    for i, r in enumerate(records):
        assert out["prompt_tokens"][i] == [tok.bos_token_id] + ids(tok, r.prompt)
        assert out["completion_tokens"][i] == ids(tok, r.completion) + [tok.eos_token_id]
        assert out["response_mask"][i].sum().item() == len(out["completion_tokens"][i])
        assert out["prompt_lengths"][i].item() == len(out["prompt_tokens"][i])
    # KTO's KL estimate: prompt i with completion i+1 (shifted), from the same token lists
    shifted = out["completion_tokens"][1:] + out["completion_tokens"][:1]
    input_ids, attn, resp = build_sequences(out["prompt_tokens"], shifted, tok.pad_token_id, 64)
    assert input_ids[0, : attn[0].sum()].tolist() == out["prompt_tokens"][0] + shifted[0]
    assert resp[0].sum().item() == len(shifted[0])


def test_build_sequences_errors_when_no_room():
    with pytest.raises(DataError, match="no response token"):
        build_sequences([[1, 2, 3]], [[4, 5]], pad_id=0, max_length=3)
    input_ids, attn, resp = build_sequences([[1, 2]], [[4, 5]], pad_id=0, max_length=3)
    assert input_ids.tolist() == [[1, 2, 4]] and resp.tolist() == [[0, 0, 1]] and attn.tolist() == [[1, 1, 1]]


def test_prompt_ids_left_padded(tiny_tokenizer):
    tok = tiny_tokenizer
    prompts = ["Review the film:", "Hi"]
    input_ids, attn = prompt_ids(prompts, tok, max_prompt_length=32)
    a, b = [tok.bos_token_id] + ids(tok, prompts[0]), [tok.bos_token_id] + ids(tok, prompts[1])
    width = len(a)
    assert input_ids.shape == attn.shape == (2, width)
    assert input_ids[0].tolist() == a and attn[0].eq(1).all()
    assert input_ids[1, width - len(b):].tolist() == b
    assert input_ids[1, : width - len(b)].eq(tok.pad_token_id).all()
    assert attn[1].tolist() == [0] * (width - len(b)) + [1] * len(b)
    # too long: BOS and the last tokens are kept
    input_ids, _ = prompt_ids(prompts[:1], tok, max_prompt_length=3)
    assert input_ids[0].tolist() == [tok.bos_token_id] + a[-2:]
