"""Reading the rows of the eval stage's ``results.json``: what a row measured, which way is better, whether
the difference is significant. Shared by the sections, the conclusions and the model card, so the three
can never disagree about a row.
"""

from __future__ import annotations

from typing import Any

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import NR, get, num

_LOWER_IS_BETTER = ("bpb", "bits_per_byte", "perplexity", "loss", "nll", "byte_perplexity", "word_perplexity")


def row_target(row: dict[str, Any]) -> str:
    """What a results row measured on: its source (bpb rows) or task (task rows)."""
    for key in ("source", "task", "dataset"):
        if row.get(key):
            return str(row[key])
    return NR


def row_metric(row: dict[str, Any]) -> str:
    return str(row.get("metric") or row.get("name") or ("bits_per_byte" if row.get("kind") == "bpb" else NR))


def row_label(row: dict[str, Any]) -> str:
    target, metric = row_target(row), row_metric(row)
    if row.get("kind") == "bpb":
        return f"bpb {target}"
    return target if metric in (NR, target) or metric in target else f"{target} {metric}"


def redundant(row: dict[str, Any]) -> bool:
    """A pooled row over a single source: the same numbers as that source's own row."""
    return bool(row.get("pooled")) and len(row.get("sources") or []) == 1


def lower_is_better(row: dict[str, Any]) -> bool:
    if row.get("kind") == "bpb":
        return True
    if isinstance(row.get("higher_is_better"), bool):
        return not row["higher_is_better"]
    metric = row_metric(row).lower()
    return any(k in metric for k in _LOWER_IS_BETTER)


def is_significant(row: dict[str, Any], alpha: float) -> bool | None:
    """The eval stage's flag; else p < alpha when a p-value was recorded; else unknown (None)."""
    if isinstance(row.get("significant"), bool):
        return row["significant"]
    p = num(row.get("p_value"))
    return None if p is None else p < alpha


def delta_pct(row: dict[str, Any]) -> float | None:
    d = num(row.get("delta_pct"))
    if d is not None:
        return d
    base, adapted = num(row.get("base")), num(row.get("adapted"))
    if base is None or adapted is None or base == 0:
        return None
    return 100.0 * (adapted - base) / abs(base)


def sig_word(sig: bool | None) -> str:
    return {True: "significant", False: "not significant", None: "significance not recorded"}[sig]


def small_pct(fraction: float) -> str:
    """A relative difference as a percentage that stays readable when tiny (2.3e-05%, not 0.00%)."""
    pct = 100 * fraction
    return f"{pct:.2f}%" if pct >= 0.01 or pct == 0 else f"{pct:.1e}%"


def row_kind(data: RunData, row: dict[str, Any]) -> str | None:
    """``domain`` / ``general`` for a bits-per-byte row (recorded by the eval stage, else the config)."""
    kind = row.get("source_kind")
    return kind if kind in ("domain", "general") else data.source_kind(row_target(row))


def kind_rows(data: RunData, rows: list[dict[str, Any]], kind: str, pooled: bool) -> list[dict[str, Any]]:
    """The bpb rows of one source kind: per-source rows, or the eval stage's pooled row(s)."""
    return [
        r
        for r in rows
        if r.get("kind") == "bpb" and row_kind(data, r) == kind and bool(r.get("pooled")) == pooled
    ]


def significance_level(data: RunData, rcfg: Any) -> float:
    """The eval stage's alpha when it recorded one (its ``significant`` flags use it), else the config's."""
    return num(get(data.results, "settings", "alpha")) or rcfg.significance_level
