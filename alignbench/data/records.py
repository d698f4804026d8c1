"""Canonical records every data source is converted to, and `DataError` for data that cannot be."""

from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """Unusable data: a missing file, an unknown format, or too few usable rows."""


@dataclass(frozen=True)
class PreferenceRecord:
    """A paired preference: `chosen` is preferred over `rejected` as a reply to `prompt`."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class UnpairedRecord:
    """A KTO example: one completion labelled desirable or undesirable."""

    prompt: str
    completion: str
    desirable: bool
