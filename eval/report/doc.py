"""A tiny document model (sections of paragraphs, tables, figures) and the number formatting it uses.

The report is built once as data and rendered twice (HTML and Markdown), so the two can never disagree
about a number. Every formatter returns :data:`NR` ("not recorded") for a missing value instead of
guessing one: a report that invents a number is worse than one with a hole in it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NR = "not recorded"


@dataclass
class Para:
    text: str
    kind: str = "text"
    """``text`` or ``note`` (rendered muted: why something is missing, how a number was computed)."""


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None
    numeric: list[bool] | None = None
    """Per column: right-align (numbers). Defaults to every column but the first."""


@dataclass
class Figure:
    name: str
    """File name of the PNG next to report.md (and the alt text's anchor in the HTML)."""
    png: bytes
    caption: str


@dataclass
class Pre:
    """Preformatted text recorded by a stage (e.g. the planner's own table), shown verbatim."""

    text: str
    caption: str | None = None


Block = Para | Bullets | Table | Figure | Pre


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


# ---------------------------------------------------------------------------------------------- formatting


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, non-numeric, NaN, bool)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_int(value: Any) -> str:
    f = num(value)
    return NR if f is None else f"{round(f):,}"


def fmt_float(value: Any, digits: int = 4) -> str:
    """Fixed decimals for values around 1 (bits-per-byte, accuracy), scientific when tiny or huge."""
    f = num(value)
    if f is None:
        return NR
    if f != 0 and (abs(f) < 10 ** (-digits) or abs(f) >= 1e7):
        return f"{f:.{max(digits - 1, 1)}e}"
    return f"{f:.{digits}f}"


def fmt_sig(value: Any, sig: int = 3) -> str:
    """Significant digits (learning rates, throughputs)."""
    f = num(value)
    if f is None:
        return NR
    if 10**sig <= abs(f) < 1e15:
        return f"{f:,.0f}"  # 1,523 rather than 1.52e+03
    return f"{f:.{sig}g}"


def fmt_pct(value: Any, digits: int = 1, signed: bool = False) -> str:
    """``value`` is already a percentage (12.3 -> "12.3%")."""
    f = num(value)
    if f is None:
        return NR
    return f"{f:+.{digits}f}%" if signed else f"{f:.{digits}f}%"


def fmt_frac(value: Any, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    f = num(value)
    return NR if f is None else f"{100 * f:.{digits}f}%"


def fmt_bytes(value: Any) -> str:
    f = num(value)
    if f is None:
        return NR
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(f) >= scale:
            return f"{f / scale:.2f} {unit}"
    return f"{round(f)} B"


def fmt_count(value: Any) -> str:
    """Large counts (tokens, parameters) with a suffix: 1.23M, 4.5B."""
    f = num(value)
    if f is None:
        return NR
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(f) >= scale:
            return f"{f / scale:.3g}{unit}"
    return f"{round(f)}"


def fmt_seconds(value: Any) -> str:
    f = num(value)
    if f is None:
        return NR
    if f < 1:
        return f"{f:.2g} s"
    if f < 120:
        return f"{f:.1f} s"
    if f < 7200:
        return f"{f / 60:.1f} min"
    return f"{f / 3600:.2f} h"


def fmt_p(value: Any) -> str:
    f = num(value)
    if f is None:
        return NR
    return "<0.001" if f < 0.001 else f"{f:.3f}"


def fmt_value(value: Any) -> str:
    """Any scalar from a manifest: numbers formatted, lists joined, None as "not recorded"."""
    if value is None:
        return NR
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return fmt_sig(value, 4)
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()) if value else "(none)"
    return str(value)


def get(obj: Any, *path: str | int, default: Any = None) -> Any:
    """``obj[path[0]][path[1]]...`` or ``default`` when any step is missing (manifests evolve)."""
    node = obj
    for key in path:
        in_dict = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node)
        if not (in_dict or in_list):
            return default
        node = node[key]
    return node


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a.b.c`` keys with scalar (or list-of-scalar) leaves."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def kv_table(pairs: Iterable[tuple[str, str]], caption: str | None = None) -> Table:
    return Table(["", "value"], [[k, v] for k, v in pairs], caption=caption, numeric=[False, False])
