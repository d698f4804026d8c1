"""Preparing a hub or local data set for a method. First `read_split_rows` reads the rows, drops
rows too large to be a conversation (`measuring.drop_huge_rows`) and splits the rest BY PROMPT
into train / validation / test (seeded by task_seed, before anything is trained: the built-in
model's SFT corpus, `sft_corpus`, comes from the train rows only); then `load_preference_data`
parses each set, bounds it in characters and then in tokens (dropping or left-truncating long
prompts as `data.long_prompts` says), counts and logs what was dropped or cut, and gives
`PreparedData`. Also `split_records` (the same split over records), `to_unpaired`
(pairs -> KTO examples) and `require_enough`. The built-in task makes its records in
`alignbench.data.builtin_task`."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from alignbench.data.measuring import LengthLimits, bound_characters, drop_huge_rows
from alignbench.data.parsing import detect_rows_format, parse_rows, row_prompt
from alignbench.data.reading import DataSource, read_rows, read_split
from alignbench.data.records import DataError, PreferenceRecord, UnpairedRecord
from alignbench.data.tokenizing import filter_records


def to_unpaired(pairs: list[PreferenceRecord]) -> list[UnpairedRecord]:
    """chosen -> desirable, rejected -> undesirable; each prompt's two examples adjacent."""
    out = []
    for p in pairs:
        out.append(UnpairedRecord(p.prompt, p.chosen, True))
        out.append(UnpairedRecord(p.prompt, p.rejected, False))
    return out


def held_out_counts(n_prompts: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(validation, test) prompt counts: round(fraction * n_prompts), at least one for a fraction
    > 0, shrunk (the larger first) until at least one prompt is left for training."""
    counts = [max(1, round(f * n_prompts)) if f > 0 else 0 for f in (validation_fraction, test_fraction)]
    while counts[0] + counts[1] > max(n_prompts - 1, 0):
        counts[1 if counts[1] >= counts[0] else 0] -= 1
    return counts[0], counts[1]


def _partition(items: list, prompt_of: Callable, validation: set, test: set) -> tuple[list, list, list]:
    """(train, validation, test) items by their prompt's set; input order kept within each."""
    sets = ([], [], [])
    for item in items:
        prompt = prompt_of(item)
        sets[1 if prompt in validation else 2 if prompt in test else 0].append(item)
    return sets


def split_by_prompt(items: list, prompt_of: Callable, validation_fraction: float, test_fraction: float,
                    seed: int) -> tuple[list, list, list]:
    """Seeded (train, validation, test) split over distinct prompts: all items of one prompt go to
    one set. Items whose prompt is None (rows that parsing will drop) stay in train."""
    prompts = [p for p in dict.fromkeys(prompt_of(x) for x in items) if p is not None]
    n_val, n_test = held_out_counts(len(prompts), validation_fraction, test_fraction)
    drawn = random.Random(f"split-{seed}").sample(prompts, n_val + n_test)
    return _partition(items, prompt_of, set(drawn[:n_val]), set(drawn[n_val:]))


def halve_by_prompt(items: list, prompt_of: Callable, seed: int) -> tuple[list, list]:
    """(validation, test): a held-out split (a hub `eval_split`) halved by prompt, seeded.
    Items whose prompt is None go to validation, where parsing counts them as dropped."""
    prompts = [p for p in dict.fromkeys(prompt_of(x) for x in items) if p is not None]
    shuffled = random.Random(f"halve-{seed}").sample(prompts, len(prompts))
    rest, validation, test = _partition(items, prompt_of, set(shuffled[: (len(prompts) + 1) // 2]),
                                        set(shuffled[(len(prompts) + 1) // 2:]))
    return rest + validation, test


def split_records(records: list, validation_fraction: float, test_fraction: float,
                  seed: int) -> tuple[list, list, list]:
    """`split_by_prompt` over records: (train, validation, test), no prompt in two sets."""
    return split_by_prompt(records, lambda r: r.prompt, validation_fraction, test_fraction, seed)


def distinct_prompts(records: list) -> list[str]:
    return list(dict.fromkeys(r.prompt for r in records))


def log_drops(drops: Counter, total: int, logger=None, prefix: str = "data",
              truncated: Counter | None = None) -> dict[str, int]:
    """Logs kept/dropped (and cut) counts (logger.info, or print) and returns them as metrics:
    {'data/total': 100, 'data/kept': 97, 'data/dropped/empty_response': 3, 'data/truncated/prompt': 40}."""
    dropped, truncated = sum(drops.values()), truncated or Counter()
    metrics = {f"{prefix}/total": total, f"{prefix}/kept": total - dropped}
    metrics.update({f"{prefix}/dropped/{reason}": n for reason, n in sorted(drops.items())})
    metrics.update({f"{prefix}/truncated/{part}": n for part, n in sorted(truncated.items())})
    detail = ", ".join(f"{reason}={n}" for reason, n in sorted(drops.items())) or "none"
    message = f"{prefix}: kept {total - dropped} of {total} rows; dropped: {detail}"
    if truncated:
        message += "; cut to fit: " + ", ".join(f"{part}={n}" for part, n in sorted(truncated.items()))
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
class SplitRows:
    """A data set's raw rows split by prompt, before anything is parsed with a tokenizer or trained."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    format: str
    drops: Counter = field(default_factory=Counter)  # rows dropped before the split (row_too_long)


@dataclass
class PreparedData:
    """Train / validation / test records ready for a method, and what was dropped on the way."""

    train: list
    validation: list
    test: list
    format: str
    drops: Counter = field(default_factory=Counter)
    metrics: dict[str, int] = field(default_factory=dict)
    truncated: Counter = field(default_factory=Counter)  # train records cut to fit: prompt (left), response

    @property
    def paired(self) -> bool:
        return not self.train or isinstance(self.train[0], PreferenceRecord)

    def held_out(self, split: str) -> list:
        """The records of `validation` or `test`."""
        return {"validation": self.validation, "test": self.test}[split]


def read_split_rows(source: DataSource, seed: int, logger=None) -> SplitRows:
    """Read a hub or local data set and split its rows by prompt (seeded by task_seed).

    Held out: `source.eval_split` (hub), halved by prompt into validation and test, when set;
    otherwise `validation_fraction` and `test_fraction` of the prompts."""
    fmt = source.format
    rows, huge = drop_huge_rows(read_rows(source), source.max_row_chars)
    if not rows:
        raise DataError(f"no usable rows in {source.path!r}"
                        + (f" ({huge['row_too_long']} over data.max_row_chars)" if huge else ""))
    if huge:
        (logger.info if logger is not None else print)(
            f"data: dropped {huge['row_too_long']} rows over data.max_row_chars={source.max_row_chars} "
            "characters before parsing (row_too_long)")
    if fmt == "auto":
        try:
            fmt = detect_rows_format(rows)
        except DataError as e:
            raise DataError(f"{source.path}: {e}") from None

    def prompt_of(row):
        return row_prompt(row, fmt)

    if source.eval_split:
        if source.source != "hub":
            raise DataError("data.eval_split is only for hub datasets; use data.validation_fraction and "
                            "data.test_fraction for a local file")
        held_out_rows, held_out_huge = drop_huge_rows(read_split(source, source.eval_split), source.max_row_chars)
        validation, test = halve_by_prompt(held_out_rows, prompt_of, seed)
        return SplitRows(rows, validation, test, fmt, huge + held_out_huge)
    train, validation, test = split_by_prompt(rows, prompt_of, source.validation_fraction, source.test_fraction, seed)
    return SplitRows(train, validation, test, fmt, huge)


def parse_bounded(rows: list[dict], fmt: str, tokenizer, limits: LengthLimits) -> tuple[list, Counter]:
    """Rows parsed into records (the plain rendering, or `tokenizer`'s chat template) with text past any token budget
    cut or dropped in characters (`measuring.bound_characters`): what every later stage reads."""
    records, drops = parse_rows(rows, fmt, tokenizer)
    records, too_long = bound_characters(records, limits)
    return records, drops + too_long


def sft_corpus(rows: SplitRows, limits: LengthLimits, n: int) -> list[tuple[str, str]]:
    """The built-in model's SFT corpus on a data set: (prompt, preferred response) of the TRAIN rows
    (the DPO paper's recipe; KTO rows: the desirable completions), in the plain rendering (the model's
    tokenizer does not exist yet), bounded like every other stage's records, at most `n`."""
    records, drops = parse_bounded(rows.train, rows.format, None, limits)
    require_enough(records, 8, drops + rows.drops)  # a file with nothing usable: a clear error before SFT
    return [(r.prompt, r.chosen) if isinstance(r, PreferenceRecord) else (r.prompt, r.completion)
            for r in records if getattr(r, "desirable", True)][:n]


def _usable_records(rows: list[dict], fmt: str, tokenizer, limits: LengthLimits, logger, prefix: str,
                    held_out_prompts: frozenset = frozenset(),
                    dropped_before: Counter | None = None) -> tuple[list, Counter, Counter, dict[str, int]]:
    """One set's rows parsed and filtered: (records, drops by reason, truncations, the logged metrics).

    Records whose prompt is in `held_out_prompts` are dropped (`prompt_in_held_out_set`): rows the
    plain-rendering split kept apart can still meet after a chat template, and a hub's own
    train and test splits can share prompts; neither may be trained on."""
    records, drops = parse_bounded(rows, fmt, tokenizer, limits)
    records, too_long, truncated = filter_records(records, tokenizer, limits.max_length, limits.max_prompt_length,
                                                  limits.long_prompts)
    drops += too_long + (dropped_before or Counter())
    if held_out_prompts:
        kept = [r for r in records if r.prompt not in held_out_prompts]
        if len(kept) < len(records):
            drops["prompt_in_held_out_set"] += len(records) - len(kept)
        records = kept
    total = len(rows) + sum((dropped_before or Counter()).values())
    return records, drops, truncated, log_drops(drops, total, logger, prefix, truncated)


def load_preference_data(rows: SplitRows, tokenizer, *, max_length: int, max_prompt_length: int,
                         long_prompts: str = "drop", min_records: int = 8, logger=None) -> PreparedData:
    """Parse, bound, filter and count drops (and cuts) of each set of `rows` (`read_split_rows`).
    Rows dropped before the split are counted with train's. Raises DataError when fewer than
    min_records train records remain, or when validation or test has none."""
    limits = LengthLimits(max_length, max_prompt_length, long_prompts)
    validation, _, _, metrics = _usable_records(rows.validation, rows.format, tokenizer, limits, logger,
                                                "data/validation")
    test, _, _, test_metrics = _usable_records(rows.test, rows.format, tokenizer, limits, logger, "data/test")
    held_out = frozenset(distinct_prompts(validation + test))
    train, drops, truncated, train_metrics = _usable_records(rows.train, rows.format, tokenizer, limits, logger,
                                                             "data", held_out, rows.drops)
    require_enough(train, min_records, drops)
    for name, records in (("validation", validation), ("test", test)):
        if not records:
            raise DataError(f"no usable {name} rows: set data.eval_split or larger data.validation_fraction "
                            "and data.test_fraction")
    metrics.update(test_metrics | train_metrics)
    metrics.update({"data/train": len(train), "data/validation": len(validation), "data/test": len(test)})
    return PreparedData(train, validation, test, rows.format, drops, metrics, truncated)
