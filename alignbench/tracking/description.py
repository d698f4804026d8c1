"""Tables in MLflow run descriptions (`mlflow.note.content`). MLflow's UI draws a description's
Markdown tables with no borders and 1 px of padding, and its HTML sanitiser drops every attribute of
a table, so adjacent cells run together ("13.345[0.533, 26.701]-0.203"). A table here is a fenced
block of aligned plain text with ruled columns: it reads the same in the UI and as the raw tag."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^[-+]?[\d.]+(e[-+]?\d+)?$|^—$")


def text_table(head: list[str], rows: list[list[str]]) -> str:
    """`rows` under `head` as a fenced code block, one line per row, `|` between columns; columns
    whose every cell is a number (or "—") are right-aligned. Backquotes and newlines in cells are
    replaced (either would break the block)."""
    # a backquote could close the fence, a newline would break the row
    head, rows = [_cell(c) for c in head], [[_cell(c) for c in r] for r in rows]
    cols = list(zip(head, *rows)) if rows else [(h,) for h in head]
    widths = [max(len(str(c)) for c in col) for col in cols]
    numeric = [bool(rows) and all(_NUMBER.match(str(c)) for c in col[1:]) for col in cols]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).rjust(w) if num else str(c).ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join(["```", line(head), rule, *(line(r) for r in rows), "```"])


def _cell(c) -> str:
    return str(c).replace("`", "'").replace("\r", " ").replace("\n", " ")
