"""Rows measured before anything is built from them: the length limits of a run (`LengthLimits`)
and the cheap, linear-time checks in characters that run before any tokenizer, SFT stage or
split sees a row.

1. `drop_huge_rows`: a raw row with more than `data.max_row_chars` characters (all its text
   together) is dropped as ``row_too_long`` right after reading: a 10 MB prompt is not a
   conversation, and no later stage should spend time on it.
2. `bound_characters`: after parsing, text that no tokenizer could fit is cut before tokenising.
   A token spans at most `CHARS_PER_TOKEN` characters (real tokenizers average 3 to 5), so a
   prompt keeps at most its last `CHARS_PER_TOKEN * max_prompt_length` characters
   (`long_prompts=truncate_left`) or is dropped as ``prompt_too_long`` (`long_prompts=drop`), and
   a response keeps at most its first `CHARS_PER_TOKEN * max_length` characters (the tokens past
   `max_length` are cut at tokenisation anyway). Either way what the model trains on is the same;
   only the time spent tokenising text that would be thrown away is saved.

The exact, token-level budget (`tokenizing.filter_records`) comes once a tokenizer exists.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from alignbench.data.records import DataError, PreferenceRecord

CHARS_PER_TOKEN = 24  # an upper bound on characters per token, for the cheap checks above
LONG_PROMPTS = ("truncate_left", "drop")


@dataclass(frozen=True)
class LengthLimits:
    """The token budget of a run and what to do with a prompt over it.

    `long_prompts`: ``truncate_left`` keeps a too-long prompt's last `max_prompt_length` tokens
    (BOS first; the turns next to the reply survive), ``drop`` drops the row (``prompt_too_long``).
    `max_row_chars`: raw rows with more characters are dropped before parsing (None: no limit)."""

    max_length: int
    max_prompt_length: int
    long_prompts: str = "drop"
    max_row_chars: int | None = None

    def __post_init__(self):
        if self.long_prompts not in LONG_PROMPTS:
            raise DataError(f"data.long_prompts={self.long_prompts}: must be one of {', '.join(LONG_PROMPTS)}")


def text_chars(value) -> int:
    """Characters of every string in a row's value (message lists and nested dicts included)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(text_chars(v) for v in value)
    return 0


def drop_huge_rows(rows: list[dict], max_row_chars: int | None) -> tuple[list[dict], Counter]:
    """(rows with at most `max_row_chars` characters of text, Counter(row_too_long=n))."""
    if max_row_chars is None:
        return rows, Counter()
    kept = [row for row in rows if text_chars(row) <= max_row_chars]
    return kept, Counter({"row_too_long": len(rows) - len(kept)} if len(kept) < len(rows) else {})


def bound_characters(records: list, limits: LengthLimits) -> tuple[list, Counter]:
    """Records with text no tokenizer could fit cut away (see the module docstring), and the
    Counter of rows dropped (``prompt_too_long``, only with ``long_prompts=drop``)."""
    max_prompt = CHARS_PER_TOKEN * limits.max_prompt_length
    max_response = CHARS_PER_TOKEN * limits.max_length
    kept, drops = [], Counter()
    for record in records:
        changes = {}
        if len(record.prompt) > max_prompt:
            if limits.long_prompts == "drop":
                drops["prompt_too_long"] += 1
                continue
            changes["prompt"] = record.prompt[-max_prompt:]
        fields = ("chosen", "rejected") if isinstance(record, PreferenceRecord) else ("completion",)
        for name in fields:
            if len(getattr(record, name)) > max_response:
                changes[name] = getattr(record, name)[:max_response]
        kept.append(dataclasses.replace(record, **changes) if changes else record)
    return kept, drops
