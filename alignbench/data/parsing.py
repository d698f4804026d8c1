"""Parsing rows into records: `parse_rows` turns plain dicts into `PreferenceRecord`s (or
`UnpairedRecord`s for KTO rows) in one of four formats, counting the rows it drops by reason;
`row_prompt` gives one row's prompt, the key the train/validation/test split is made on.

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
a boolean, chat template error). Length drops come later: ``row_too_long`` (`measuring.drop_huge_rows`,
before parsing) and ``prompt_too_long`` (`measuring.bound_characters`, `tokenizing.filter_records`,
with ``data.long_prompts=drop``).
"""

from __future__ import annotations

from collections import Counter

from alignbench.data.records import DataError, PreferenceRecord, UnpairedRecord

FORMATS = ("pairs", "hh", "chat", "unpaired")
HH_ASSISTANT = "\n\nAssistant:"


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


def detect_rows_format(rows: list[dict], sample: int = 200) -> str:
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


def chat_prompts(prompts: list[str], tokenizer) -> list[str]:
    """Plain prompts (the built-in task's) as one user message each through `tokenizer`'s chat
    template, for a chat model; unchanged for a tokenizer without one (the built-in model's)."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    rendered = {p: render_prompt([{"role": "user", "content": p.strip()}], tokenizer)[0] for p in set(prompts)}
    return [rendered[p] for p in prompts]


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
        fmt = detect_rows_format(rows)
    parse = _parser(fmt)
    records, drops = [], Counter()
    for row in rows:
        try:
            records.append(parse(row, tokenizer))
        except _Drop as d:
            drops[d.reason] += 1
    return records, drops


def _parser(fmt: str):
    """The row parser of a concrete format; a one-line DataError for an unknown one."""
    if fmt not in FORMATS:
        raise DataError(f"data.format must be 'auto' or one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"pairs": _parse_pairs, "hh": _parse_hh, "chat": _parse_chat, "unpaired": _parse_unpaired}[fmt]


def row_prompt(row: dict, fmt: str) -> str | None:
    """A row's prompt in the plain rendering (no tokenizer), or None for a row that will be dropped.

    The key a data set is split on before any tokenizer exists: rows with the same conversation
    context share it, and so share a set."""
    try:
        return _parser(fmt)(row, None).prompt
    except _Drop:
        return None
