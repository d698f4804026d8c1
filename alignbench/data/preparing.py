"""Preparing a hub or local data set for a method: `load_preference_data` reads, parses and
filters the rows, counts and logs what was dropped, and splits train from eval by prompt
(`split_records`), giving `PreparedData`. Also `to_unpaired` (pairs -> KTO examples) and
`require_enough`. The built-in task makes its records in `alignbench.data.builtin_task`."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from alignbench.data.parsing import detect_rows_format, parse_rows
from alignbench.data.reading import cfg_value, read_rows, read_split
from alignbench.data.records import DataError, PreferenceRecord, UnpairedRecord
from alignbench.data.tokenizing import filter_records


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


def _usable_records(rows: list[dict], fmt: str, tokenizer, max_length: int, max_prompt_length: int,
                    logger, prefix: str) -> tuple[list, Counter, dict[str, int]]:
    """One split's rows parsed and filtered: (records, drops by reason, the logged drop metrics)."""
    records, drops = parse_rows(rows, fmt, tokenizer)
    records, too_long = filter_records(records, tokenizer, max_length, max_prompt_length)
    drops += too_long
    return records, drops, log_drops(drops, len(rows), logger, prefix)


def load_preference_data(data_cfg, tokenizer, *, max_length: int, max_prompt_length: int, seed: int,
                         min_records: int = 8, logger=None) -> PreparedData:
    """Read, parse, filter, count drops and split a hub or local `data=` config.

    The eval records come from `data_cfg.eval_split` (hub) when set, otherwise from a seeded
    `eval_fraction` of the prompts. Raises DataError when fewer than min_records remain."""
    fmt = cfg_value(data_cfg, "format", "auto")
    rows = read_rows(data_cfg)
    if not rows:
        raise DataError(f"no rows in {cfg_value(data_cfg, 'path')!r}")
    if fmt == "auto":
        fmt = detect_rows_format(rows)
    lengths = (max_length, max_prompt_length)
    records, drops, metrics = _usable_records(rows, fmt, tokenizer, *lengths, logger, "data")
    require_enough(records, min_records, drops)
    eval_split = cfg_value(data_cfg, "eval_split")
    if eval_split:
        if cfg_value(data_cfg, "source") != "hub":
            raise DataError("data.eval_split is only for hub datasets; use data.eval_fraction for a local file")
        train = records
        eval_rows = read_split(data_cfg, eval_split)
        held_out, _, eval_metrics = _usable_records(eval_rows, fmt, tokenizer, *lengths, logger, "data/eval")
        metrics.update(eval_metrics)
    else:
        train, held_out = split_records(records, float(cfg_value(data_cfg, "eval_fraction", 0.1)), seed)
    if not held_out:
        raise DataError("no usable eval rows: set data.eval_split or a larger data.eval_fraction")
    metrics.update({"data/train": len(train), "data/eval": len(held_out)})
    return PreparedData(train, held_out, fmt, drops, metrics)
