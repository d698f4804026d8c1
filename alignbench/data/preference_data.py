"""Preference data: read rows, parse them into records, drop bad ones (counted), tokenise.

Read top to bottom, one stage per section:

1. `read_rows`      — hub (`datasets.load_dataset`) or a local .jsonl/.json/.parquet/.csv file -> plain dicts.
2. `parse_rows`     — dicts -> `PreferenceRecord`s (or `UnpairedRecord`s for KTO rows), in one of four
                      formats (`detect_format`), counting dropped rows by reason.
3. `filter_records` — drops records whose prompt does not fit the token budget.
4. `split_records`, `to_unpaired`, `log_drops`, `require_enough`.
5. `tokenize_pairs`, `tokenize_unpaired`, `build_sequences`, `prompt_ids` — tensors for training.

`load_preference_data` runs stages 1-4 for a `data=` config with source hub or local
(the built-in task makes its records in `alignbench.task`).

Formats (`detect_format`):

- ``pairs``    — ``prompt``, ``chosen``, ``rejected`` strings.
- ``hh``       — ``chosen``, ``rejected`` strings only: whole Anthropic HH-RLHF transcripts
                 ("\\n\\nHuman: ...\\n\\nAssistant: ..."). The prompt is the shared prefix up to and
                 including the last "\\n\\nAssistant:"; the responses are the rest (raw, e.g. " Sure...").
- ``chat``     — ``chosen``, ``rejected`` are lists of ``{role, content}`` messages ending in an
                 assistant message. Either the lists hold the whole conversation (UltraFeedback;
                 a ``prompt`` string column, if present, is ignored) or, TRL's explicit form,
                 ``prompt`` is itself a message list and ``chosen``/``rejected`` hold the reply.
                 The prompt is rendered from every message but the final assistant one with
                 ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` when the
                 tokenizer has a chat template. Otherwise (see `render_prompt`) the fallback is
                 "User: hi\\n\\nAssistant:" (roles capitalised, turns joined by a blank line) and
                 the responses get one leading space, like HH transcripts.
- ``unpaired`` — ``prompt``, ``completion``, ``label`` (bool): TRL's KTO format (strings or messages).

Responses are kept as raw text; EOS is appended at tokenisation, never stored in a record.

Drop reasons (Counter keys): ``missing_field`` (a needed column is absent/None, or the prompt
is empty), ``empty_response`` (a response is blank), ``chosen_equals_rejected`` (identical
responses, also when identical after truncation to ``max_length``), ``bad_format`` (wrong
types, no/unshared "\\n\\nAssistant:" prefix, last message not from the assistant, label not
a boolean, chat template error), ``prompt_too_long`` (from `filter_records`).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignbench.data.records import PreferenceRecord, UnpairedRecord

FORMATS = ("pairs", "hh", "chat", "unpaired")
HH_ASSISTANT = "\n\nAssistant:"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class DataError(ValueError):
    """Unusable data: a missing file, an unknown format, or too few usable rows."""


# --------------------------------------------------------------------------------------------
# 1. Reading rows
# --------------------------------------------------------------------------------------------

def _cfg(data_cfg, key: str, default=None):
    """`data_cfg.get(key)` for dicts and OmegaConf nodes; a '???' value is a one-line DataError."""
    try:
        value = data_cfg.get(key, default)
    except Exception as e:  # omegaconf.MissingMandatoryValue for `path: ???`
        raise DataError(f"data.{key} is required but not set ({type(e).__name__})") from None
    return default if value is None else value


def read_rows(data_cfg) -> list[dict]:
    """Rows of `data_cfg.split` (hub) or of the local file, capped at `data_cfg.max_rows`."""
    return read_split(data_cfg, _cfg(data_cfg, "split"))


def read_split(data_cfg, split: str | None) -> list[dict]:
    """Like `read_rows` but for the named split (e.g. `data_cfg.eval_split`)."""
    source = _cfg(data_cfg, "source")
    path = _cfg(data_cfg, "path")
    max_rows = _cfg(data_cfg, "max_rows")
    if path is None:
        raise DataError("data.path is required but not set")
    if source == "hub":
        return _read_hub(str(path), _cfg(data_cfg, "subset"), split, max_rows)
    if source == "local":
        rows = _read_local(Path(str(path)).expanduser())
        return rows if max_rows is None else rows[: int(max_rows)]
    raise DataError(f"data.source must be 'hub' or 'local' here, got {source!r}")


def _read_hub(path: str, subset: str | None, split: str | None, max_rows: int | None) -> list[dict]:
    import datasets

    where = f"{path!r}" + (f" (subset {subset!r})" if subset else "")
    try:
        ds = datasets.load_dataset(path, subset, split=split)
    except Exception as e:  # not found, offline, unknown split: one line naming the dataset
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"could not load dataset {where} split {split!r}: {type(e).__name__}: {msg}") from None
    if isinstance(ds, datasets.DatasetDict):  # split=None: take 'train', or the only split
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"dataset {where} has splits {sorted(ds)}; set data.split")
    if max_rows is not None:
        ds = ds.select(range(min(int(max_rows), len(ds))))
    return ds.to_list()


def _read_local(path: Path) -> list[dict]:
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"unknown data file type {path.suffix!r} for {path}; use one of {', '.join(LOCAL_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        rows = _read_json_lines(path)
    elif path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = _read_json_lines(path)  # a .json file holding JSON lines
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of objects or JSON lines, got a {type(rows).__name__}")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()  # nested message lists stay plain lists/dicts
    else:  # .csv: every cell is text; an empty cell is "" (so a blank response counts as empty_response)
        import pandas as pd

        rows = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
    return rows


def _read_json_lines(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


# --------------------------------------------------------------------------------------------
# 2. Parsing rows into records
# --------------------------------------------------------------------------------------------

def detect_format(row: dict) -> str:
    """'pairs' | 'hh' | 'chat' | 'unpaired' from one row's columns and value types."""
    if "completion" in row and "label" in row:
        return "unpaired"
    if "chosen" in row and "rejected" in row:
        sample = row["chosen"] if row["chosen"] is not None else row["rejected"]
        if isinstance(sample, (list, tuple)) or isinstance(row.get("prompt"), (list, tuple)):
            return "chat"
        return "pairs" if "prompt" in row else "hh"
    raise DataError(
        f"cannot detect the data format from columns {sorted(row)}: expected prompt/chosen/rejected, "
        "chosen/rejected (hh), chosen/rejected message lists (chat) or prompt/completion/label (unpaired)")


def _detect_rows_format(rows: list[dict], sample: int = 200) -> str:
    """The most common per-row format among the first rows (a few odd rows are dropped later)."""
    votes = Counter()
    for row in rows[:sample]:
        try:
            votes[detect_format(row)] += 1
        except DataError:
            pass
    if not votes:
        detect_format(rows[0])  # raises with the columns named
    return votes.most_common(1)[0][0]


class _Drop(Exception):
    """A row is dropped; `reason` is the Counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _text(row: dict, key: str, *, response: bool) -> str:
    value = row.get(key)
    if value is None:
        raise _Drop("missing_field")
    if not isinstance(value, str):
        raise _Drop("bad_format")
    if not value.strip():
        raise _Drop("empty_response" if response else "missing_field")
    return value


def _distinct(chosen: str, rejected: str) -> None:
    if chosen.strip() == rejected.strip():
        raise _Drop("chosen_equals_rejected")


def _parse_pairs(row: dict, tokenizer=None) -> PreferenceRecord:
    prompt = _text(row, "prompt", response=False)
    chosen = _text(row, "chosen", response=True)
    rejected = _text(row, "rejected", response=True)
    _distinct(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected)


def _parse_hh(row: dict, tokenizer=None) -> PreferenceRecord:
    chosen = _text(row, "chosen", response=True)
    rejected = _text(row, "rejected", response=True)
    _distinct(chosen, rejected)
    cut = chosen.rfind(HH_ASSISTANT)
    if cut == -1 or rejected.rfind(HH_ASSISTANT) != cut:
        raise _Drop("bad_format")  # no assistant turn, or the last turns are not at the same place
    cut += len(HH_ASSISTANT)
    prompt = chosen[:cut]
    if rejected[:cut] != prompt:
        raise _Drop("bad_format")  # the dialogues differ before the final assistant turn
    chosen_resp, rejected_resp = chosen[cut:], rejected[cut:]
    if not chosen_resp.strip() or not rejected_resp.strip():
        raise _Drop("empty_response")
    return PreferenceRecord(prompt, chosen_resp, rejected_resp)


def _messages(value) -> list[dict]:
    """A validated list of {role, content} string messages."""
    if not isinstance(value, (list, tuple)):
        raise _Drop("bad_format")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _Drop("bad_format")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt_messages(prompt) -> list[dict]:
    """The `prompt` column as messages: a message list, or a string as one user turn."""
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise _Drop("missing_field")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return _messages(prompt)


def _split_reply(conversation: list[dict]) -> tuple[list[dict], str]:
    """(context messages, final assistant content) of a conversation."""
    if not conversation or conversation[-1]["role"] != "assistant":
        raise _Drop("bad_format")
    reply = conversation[-1]["content"]
    if not reply.strip():
        raise _Drop("empty_response")
    return conversation[:-1], reply


def render_prompt(messages: list[dict], tokenizer=None) -> tuple[str, str]:
    """(prompt text, response prefix) for a conversation that the assistant answers next.

    With a chat template: `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`
    and no response prefix. Without one (or no tokenizer), the documented fallback:
    "System: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\nUser: ...\\n\\nAssistant:" with response prefix " ".
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), ""
        except Exception:  # jinja2 TemplateError, e.g. "roles must alternate" or "system role not supported"
            raise _Drop("bad_format") from None
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(turns + ["Assistant:"]), " "


def _with_prefix(prefix: str, response: str) -> str:
    return response if not prefix or response[:1].isspace() else prefix + response


def _parse_chat(row: dict, tokenizer) -> PreferenceRecord:
    if row.get("chosen") is None or row.get("rejected") is None:
        raise _Drop("missing_field")
    chosen, rejected = _messages(row["chosen"]), _messages(row["rejected"])
    if isinstance(row.get("prompt"), (list, tuple)):  # TRL explicit prompt: messages + reply
        context = _prompt_messages(row["prompt"])
        chosen, rejected = context + chosen, context + rejected
    context, chosen_reply = _split_reply(chosen)
    rejected_context, rejected_reply = _split_reply(rejected)
    if context != rejected_context:
        raise _Drop("bad_format")  # the two conversations differ before the reply
    if not context:  # only the reply in the lists: the prompt column is the user turn
        context = _prompt_messages(row.get("prompt"))
    _distinct(chosen_reply, rejected_reply)
    prompt, prefix = render_prompt(context, tokenizer)
    return PreferenceRecord(prompt, _with_prefix(prefix, chosen_reply), _with_prefix(prefix, rejected_reply))


def _label(value) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # python or numpy bool
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise _Drop("bad_format")


def _parse_unpaired(row: dict, tokenizer) -> UnpairedRecord:
    if row.get("label") is None:
        raise _Drop("missing_field")
    desirable = _label(row["label"])
    prompt, completion = row.get("prompt"), row.get("completion")
    if completion is None:
        raise _Drop("missing_field")
    if isinstance(completion, (list, tuple)) or isinstance(prompt, (list, tuple)):
        context = _prompt_messages(prompt)
        if isinstance(completion, (list, tuple)):
            context, reply = _split_reply(context + _messages(completion))
        elif isinstance(completion, str):
            reply = completion
        else:
            raise _Drop("bad_format")
        if not reply.strip():
            raise _Drop("empty_response")
        text, prefix = render_prompt(context, tokenizer)
        return UnpairedRecord(text, _with_prefix(prefix, reply), desirable)
    return UnpairedRecord(_text(row, "prompt", response=False), _text(row, "completion", response=True), desirable)


def parse_rows(rows: list[dict], fmt: str = "auto", tokenizer=None) -> tuple[list, Counter]:
    """Records from rows (`PreferenceRecord`s, or `UnpairedRecord`s for the unpaired format) and
    a Counter of dropped rows by reason. `fmt='auto'` takes the most common `detect_format`."""
    if fmt == "auto":
        if not rows:
            return [], Counter()
        fmt = _detect_rows_format(rows)
    if fmt not in FORMATS:
        raise DataError(f"data.format must be 'auto' or one of {', '.join(FORMATS)}, got {fmt!r}")
    parse = {"pairs": _parse_pairs, "hh": _parse_hh, "chat": _parse_chat, "unpaired": _parse_unpaired}[fmt]
    records, drops = [], Counter()
    for row in rows:
        try:
            records.append(parse(row, tokenizer))
        except _Drop as d:
            drops[d.reason] += 1
    return records, drops


# --------------------------------------------------------------------------------------------
# 3. Token budget
# --------------------------------------------------------------------------------------------

def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"]) if texts else []


def _prompt_tokens(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids with BOS first when the tokenizer has one (and the text does not already)."""
    bos = tokenizer.bos_token_id
    ids = _token_ids(tokenizer, prompts)
    if bos is None:
        return ids
    return [p if p[:1] == [bos] else [bos] + p for p in ids]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; responses must end with one")
    return tokenizer.eos_token_id


def _response_tokens(tokenizer, responses: list[str]) -> list[list[int]]:
    eos = _eos_id(tokenizer)
    return [r + [eos] for r in _token_ids(tokenizer, responses)]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)


def filter_records(records: list, tokenizer, max_length: int, max_prompt_length: int) -> tuple[list, Counter]:
    """Drops 'prompt_too_long' (prompt incl. BOS > max_prompt_length tokens, or no response
    token left within max_length) and, for pairs, 'chosen_equals_rejected' when truncation to
    max_length makes the two sequences identical (their loss would carry no signal)."""
    if not records:
        return [], Counter()
    prompts = _prompt_tokens(tokenizer, [r.prompt for r in records])
    paired = isinstance(records[0], PreferenceRecord)
    if paired:
        chosen = _response_tokens(tokenizer, [r.chosen for r in records])
        rejected = _response_tokens(tokenizer, [r.rejected for r in records])
    kept, drops = [], Counter()
    for i, record in enumerate(records):
        n = len(prompts[i])
        if n > max_prompt_length or n >= max_length:
            drops["prompt_too_long"] += 1
        elif paired and chosen[i][: max_length - n] == rejected[i][: max_length - n]:
            drops["chosen_equals_rejected"] += 1
        else:
            kept.append(record)
    return kept, drops


# --------------------------------------------------------------------------------------------
# 4. Splits, conversion, drop accounting
# --------------------------------------------------------------------------------------------

def to_unpaired(pairs: list[PreferenceRecord]) -> list[UnpairedRecord]:
    """chosen -> desirable, rejected -> undesirable; each prompt's two examples adjacent."""
    out = []
    for p in pairs:
        out.append(UnpairedRecord(p.prompt, p.chosen, True))
        out.append(UnpairedRecord(p.prompt, p.rejected, False))
    return out


def split_records(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded (train, eval) split over distinct prompts, so no eval prompt is seen in training.

    round(eval_fraction * n_prompts) prompts go to eval (at least one, and one fewer than all,
    when eval_fraction > 0 and there are two or more prompts). Both sides keep the input order."""
    prompts = list(dict.fromkeys(r.prompt for r in records))
    n_eval = round(eval_fraction * len(prompts))
    if eval_fraction > 0 and len(prompts) >= 2:
        n_eval = min(max(n_eval, 1), len(prompts) - 1)
    eval_prompts = set(random.Random(seed).sample(prompts, n_eval))
    train = [r for r in records if r.prompt not in eval_prompts]
    held_out = [r for r in records if r.prompt in eval_prompts]
    return train, held_out


def log_drops(drops: Counter, total: int, logger=None, prefix: str = "data") -> dict[str, int]:
    """Logs kept/dropped counts (logger.info, or print) and returns them as metrics:
    {'data/total': 100, 'data/kept': 97, 'data/dropped/empty_response': 3}."""
    dropped = sum(drops.values())
    metrics = {f"{prefix}/total": total, f"{prefix}/kept": total - dropped}
    metrics.update({f"{prefix}/dropped/{reason}": n for reason, n in sorted(drops.items())})
    detail = ", ".join(f"{reason}={n}" for reason, n in sorted(drops.items())) or "none"
    message = f"{prefix}: kept {total - dropped} of {total} rows; dropped: {detail}"
    (logger.info if logger is not None else print)(message)
    return metrics


def require_enough(records: list, min_records: int = 8, drops: Counter | None = None) -> None:
    """DataError("only N usable rows of M after dropping: reason=n, ...") below min_records."""
    if len(records) >= min_records:
        return
    drops = drops or Counter()
    total = len(records) + sum(drops.values())
    detail = ", ".join(f"{reason}={n}" for reason, n in drops.most_common()) or "nothing"
    raise DataError(f"only {len(records)} usable rows of {total} after dropping: {detail} "
                    f"(need at least {min_records})")


@dataclass
class PreparedData:
    """Train/eval records ready for a method, and what was dropped on the way."""

    train: list
    eval: list
    format: str
    drops: Counter = field(default_factory=Counter)
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return not self.train or isinstance(self.train[0], PreferenceRecord)


def load_preference_data(data_cfg, tokenizer, *, max_length: int, max_prompt_length: int, seed: int,
                         min_records: int = 8, logger=None) -> PreparedData:
    """Stages 1-4 for a hub or local `data=` config: read, parse, filter, count drops, split.

    The eval records come from `data_cfg.eval_split` (hub) when set, otherwise from a seeded
    `eval_fraction` of the prompts. Raises DataError when fewer than min_records remain."""
    fmt = _cfg(data_cfg, "format", "auto")
    rows = read_rows(data_cfg)
    if not rows:
        raise DataError(f"no rows in {_cfg(data_cfg, 'path')!r}")
    if fmt == "auto":
        fmt = _detect_rows_format(rows)

    def prepare(rows_: list[dict], prefix: str):
        records, drops = parse_rows(rows_, fmt, tokenizer)
        records, too_long = filter_records(records, tokenizer, max_length, max_prompt_length)
        drops += too_long
        return records, drops, log_drops(drops, len(rows_), logger, prefix)

    records, drops, metrics = prepare(rows, "data")
    require_enough(records, min_records, drops)
    eval_split = _cfg(data_cfg, "eval_split")
    if eval_split:
        if _cfg(data_cfg, "source") != "hub":
            raise DataError("data.eval_split is only for hub datasets; use data.eval_fraction for a local file")
        train = records
        held_out, eval_drops, eval_metrics = prepare(read_split(data_cfg, eval_split), "data/eval")
        metrics.update(eval_metrics)
    else:
        train, held_out = split_records(records, float(_cfg(data_cfg, "eval_fraction", 0.1)), seed)
    if not held_out:
        raise DataError("no usable eval rows: set data.eval_split or a larger data.eval_fraction")
    metrics.update({"data/train": len(train), "data/eval": len(held_out)})
    return PreparedData(train, held_out, fmt, drops, metrics)


# --------------------------------------------------------------------------------------------
# 5. Tensors
# --------------------------------------------------------------------------------------------

def build_sequences(prompt_tokens: list[list[int]], completion_tokens: list[list[int]], pad_id: int,
                    max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion sequences: (input_ids, attention_mask, response_mask), each [N, T].

    Completions (EOS already appended by the caller) are cut so each sequence has at most
    max_length tokens; prompts are never cut. response_mask is 1 on the completion tokens
    (aligned with input_ids: the tokens whose log-probs are summed). T is the longest sequence."""
    if len(prompt_tokens) != len(completion_tokens):
        raise ValueError(f"{len(prompt_tokens)} prompts but {len(completion_tokens)} completions")
    sequences = []
    for prompt, completion in zip(prompt_tokens, completion_tokens):
        room = max_length - len(prompt)
        if room < 1:
            raise DataError(f"a prompt of {len(prompt)} tokens leaves no response token within "
                            f"max_length={max_length}; run filter_records first")
        sequences.append((prompt, completion[:room]))
    width = max((len(p) + len(c) for p, c in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (prompt, completion) in enumerate(sequences):
        n_p, n = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = 1
    return input_ids, attention_mask, response_mask


def _checked_prompts(tokenizer, prompts: list[str], max_prompt_length: int) -> list[list[int]]:
    tokens = _prompt_tokens(tokenizer, prompts)
    longest = max((len(t) for t in tokens), default=0)
    if longest > max_prompt_length:
        raise DataError(f"a prompt has {longest} tokens > max_prompt_length={max_prompt_length}; "
                        "run filter_records first")
    return tokens


def tokenize_pairs(records: list[PreferenceRecord], tokenizer, max_length: int,
                   max_prompt_length: int) -> dict[str, torch.Tensor]:
    """[BOS] prompt + response + EOS for chosen and rejected, both padded to one width.

    Keys: chosen_input_ids, chosen_attention_mask, chosen_response_mask, the same for
    rejected_*, and prompt_lengths [N] (prompt tokens incl. BOS)."""
    prompts = _checked_prompts(tokenizer, [r.prompt for r in records], max_prompt_length)
    chosen = _response_tokens(tokenizer, [r.chosen for r in records])
    rejected = _response_tokens(tokenizer, [r.rejected for r in records])
    ids, attn, resp = build_sequences(prompts + prompts, chosen + rejected, _pad_id(tokenizer), max_length)
    n = len(records)
    return {
        "chosen_input_ids": ids[:n], "chosen_attention_mask": attn[:n], "chosen_response_mask": resp[:n],
        "rejected_input_ids": ids[n:], "rejected_attention_mask": attn[n:], "rejected_response_mask": resp[n:],
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
    }


def tokenize_unpaired(records: list[UnpairedRecord], tokenizer, max_length: int,
                      max_prompt_length: int) -> dict[str, Any]:
    """KTO examples: input_ids, attention_mask, response_mask, desirable (bool), prompt_lengths,
    plus the untruncated token lists prompt_tokens (BOS first) and completion_tokens (EOS last)
    for building mismatched (prompt_i, completion_j) sequences with `build_sequences`."""
    prompts = _checked_prompts(tokenizer, [r.prompt for r in records], max_prompt_length)
    completions = _response_tokens(tokenizer, [r.completion for r in records])
    ids, attn, resp = build_sequences(prompts, completions, _pad_id(tokenizer), max_length)
    return {
        "input_ids": ids, "attention_mask": attn, "response_mask": resp,
        "desirable": torch.tensor([r.desirable for r in records], dtype=torch.bool),
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        "prompt_tokens": prompts,
        "completion_tokens": completions,
    }


def prompt_ids(prompts: list[str], tokenizer, max_prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LEFT-padded ([BOS] prompt) input_ids and attention_mask for generation. A prompt longer than
    max_prompt_length keeps BOS and its last tokens (the ones next to the reply)."""
    rows = []
    bos = tokenizer.bos_token_id
    for p in _prompt_tokens(tokenizer, prompts):
        if len(p) > max_prompt_length:
            head = [bos] if bos is not None and p[:1] == [bos] else []
            p = head + p[len(p) - (max_prompt_length - len(head)):]
        rows.append(p)
    width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), _pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r):] = 1
    return input_ids, attention_mask
