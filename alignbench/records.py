"""Canonical records every data source is converted to."""

from __future__ import annotations

from dataclasses import dataclass


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
