"""How the report writes values: numbers and p-values as the tables show them, param values, durations,
file-name slugs. Leaf module shared by the analysis, the figures and the templates."""

from __future__ import annotations

import math
import re


def fmt(v, digits: int = 3) -> str:
    """Numbers as the tables show them (the tests compare against MLflow with this)."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "—"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
        return f"{f:.{digits}g}" if abs(f) < 1e-3 else f"{f:.4g}"
    return f"{f:.{digits}f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def number(x) -> float:
    """`x` as a float; NaN when it is not a number (a missing metric)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def text(v) -> str:
    """`v` as logged; "" for a missing value (None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown_text(v) -> str:
    """A model's text as the report shows it: control characters (which a browser draws as boxes)
    written as visible escapes such as `\\x01`; newlines and tabs kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text(v))


def short_value(v) -> str:
    """A param value for the tables: floats to 4 significant digits, anything else as logged."""
    s = text(v)
    try:
        f = float(s)
    except ValueError:
        return s
    return s if re.fullmatch(r"-?\d+", s) else f"{f:.4g}"


def duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "not recorded (sweep still running?)"
    seconds = float(seconds)
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{seconds:.1f} s"


def slug(s: str) -> str:
    """`s` made safe as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("._") or "x"
