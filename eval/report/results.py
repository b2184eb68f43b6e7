"""Reading the rows of the eval stage's ``results.json``: what a row measured, which way is better, whether
the difference is significant. Shared by the sections, the conclusions and the model card, so the three
can never disagree about a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dapt.eval.compare import p_family
from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import NR, fmt_p, get, num
from dapt.eval.significance import holm

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
    """One row on its own: the eval stage's flag (the Holm decision since results carry ``p_adjusted``);
    else p < alpha when a p-value was recorded; else unknown (None). Sections that show a family of
    rows use :func:`adjusted` instead, which also corrects rows of older results."""
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


@dataclass(frozen=True)
class Sig:
    """A row's multiple-comparison-controlled significance."""

    significant: bool | None
    p: float | None
    """The raw (single-test) p-value."""
    p_adjusted: float | None
    """Holm-adjusted within ``family``: recorded by the eval stage, else computed here."""
    family: str
    family_size: int
    """Tests in the family (rows with a p-value)."""

    def p_text(self) -> str:
        """``p=0.030`` or, for a family of several tests, ``p=0.030, Holm-adjusted p=0.090 over 3``."""
        if self.p is None:
            return ""
        p = fmt_p(self.p)
        out = f"p{p}" if p.startswith("<") else f"p={p}"
        if self.p_adjusted is not None and self.family_size > 1:
            a = fmt_p(self.p_adjusted)
            out += f", Holm-adjusted p{a if a.startswith('<') else '=' + a} over {self.family_size}"
        return out


def adjusted(data: RunData, rows: list[dict[str, Any]], alpha: float) -> list[Sig]:
    """Per row of ``rows`` (all of them: families are formed among these), its Holm-adjusted significance.

    Families are the eval stage's (``dapt.eval.compare.p_family``): the per-source bpb rows of one source
    kind, each pooled row alone, all task metrics together. A recorded ``p_adjusted`` is used as it is;
    a family of rows from an older ``results.json`` (raw p-values only) is adjusted here with the same
    Holm procedure, so a conclusion over several sources is never drawn from one raw p < alpha."""
    fams: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        fams.setdefault(p_family(r, row_kind(data, r)), []).append(i)
    out: list[Sig | None] = [None] * len(rows)
    for fam, idx in fams.items():
        raw = [num(rows[i].get("p_value")) for i in idx]
        computed = holm(raw)
        size = sum(1 for p in raw if p is not None)
        for i, p, c in zip(idx, raw, computed, strict=True):
            r = rows[i]
            rec = num(r.get("p_adjusted"))
            padj = rec if rec is not None else c
            n = int(num(r.get("p_family_size")) or size) if rec is not None else size
            sig = padj < alpha if padj is not None else is_significant(r, alpha)
            out[i] = Sig(sig, p, padj, str(r.get("p_family") or fam), n)
    return out  # type: ignore[return-value]
