"""Data funnel: what the clean stage kept and rejected per source, and what the split stage held out."""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import (
    NR,
    Figure,
    Para,
    Section,
    Table,
    fmt_bytes,
    fmt_frac,
    fmt_int,
    fmt_value,
    get,
    num,
)
from dapt.eval.report.sections.base import Inputs, missing

ID, TITLE = "data", "Data funnel"


def clean_totals(data: RunData) -> dict[str, Any]:
    """Totals over sources: the manifest's ``totals`` when present, else summed from the sources."""
    m = data.m("clean")
    sources = m.get("sources") if isinstance(m.get("sources"), dict) else {}
    out: dict[str, Any] = {}
    rec = m.get("totals") if isinstance(m.get("totals"), dict) else {}
    for key in ("docs_in", "bytes_in", "kept", "kept_bytes", "duplicate_clusters"):
        v = num(rec.get(key))
        if v is None and sources:
            vals = [num(s.get(key)) for s in sources.values() if isinstance(s, dict)]
            v = sum(vals) if vals and all(x is not None for x in vals) else None  # type: ignore[misc]
        if v is not None:
            out[key] = v
    reasons: dict[str, float] = {}
    if isinstance(rec.get("rejected"), dict):
        reasons = {k: num(v) or 0 for k, v in rec["rejected"].items()}
    else:
        for s in sources.values():
            for k, v in (s.get("rejected") or {}).items() if isinstance(s, dict) else []:
                reasons[k] = reasons.get(k, 0) + (num(v) or 0)
    out["rejected"] = reasons
    return out


def _source_rows(data: RunData, sources: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, v in sources.items():
        v = v if isinstance(v, dict) else {}
        docs_in, kept = num(v.get("docs_in")), num(v.get("kept"))
        rej = v.get("rejected") if isinstance(v.get("rejected"), dict) else None
        pii = v.get("pii") if isinstance(v.get("pii"), dict) else None
        rows.append(
            [
                name,
                fmt_value(data.source_kind(name)),
                fmt_int(docs_in),
                fmt_bytes(v.get("bytes_in")),
                fmt_int(kept),
                fmt_bytes(v.get("kept_bytes")),
                fmt_frac(kept / docs_in) if docs_in and kept is not None else NR,
                fmt_int(sum(num(x) or 0 for x in rej.values())) if rej is not None else NR,
                fmt_int(v.get("duplicate_clusters")),
                fmt_int(sum(num(x) or 0 for x in pii.values())) if pii is not None else NR,
            ]
        )
    t = clean_totals(data)
    if len(sources) > 1:
        rows.append(
            [
                "total",
                "",
                fmt_int(t.get("docs_in")),
                fmt_bytes(t.get("bytes_in")),
                fmt_int(t.get("kept")),
                fmt_bytes(t.get("kept_bytes")),
                fmt_frac(t["kept"] / t["docs_in"]) if t.get("docs_in") and "kept" in t else NR,
                fmt_int(sum(t["rejected"].values())) if t.get("rejected") else NR,
                fmt_int(t.get("duplicate_clusters")),
                "",
            ]
        )
    return rows


def _reconciliation(sources: dict[str, Any]) -> Para:
    """Every document is either kept or rejected with a reason."""
    bad = []
    for name, v in sources.items():
        if not isinstance(v, dict) or num(v.get("docs_in")) is None or num(v.get("kept")) is None:
            continue
        rej = sum(num(x) or 0 for x in (v.get("rejected") or {}).values())
        if num(v["docs_in"]) != num(v["kept"]) + rej:
            bad.append(
                f"{name} ({fmt_int(v['docs_in'])} in != {fmt_int(v['kept'])} kept + {fmt_int(rej)} rejected)"
            )
    return Para(
        "Counts reconcile: documents in = kept + rejected for every source."
        if not bad
        else "Counts do NOT reconcile for: " + "; ".join(bad),
        kind="note",
    )


def _by_key_table(sources: dict[str, Any], key: str, header: str, caption: str) -> Table | None:
    """One row per rejection reason (or PII type), one column per source."""
    keys = sorted({r for v in sources.values() if isinstance(v, dict) for r in (v.get(key) or {})})
    if not keys:
        return None
    names = list(sources)
    return Table(
        [header, *names],
        [[k, *[fmt_int(get(sources, n, key, k, default=0)) for n in names]] for k in keys],
        caption=caption,
    )


def heldout_table(data: RunData) -> Table | Para:
    """Validation and test documents per source, as the split stage recorded them."""
    held, stage = data.heldout_counts()
    if not held:
        return missing("Held-out documents per source (split manifest `heldout`)")
    rows = [
        [name, fmt_value(data.source_kind(name)), fmt_int(get(v, "validation")), fmt_int(get(v, "test"))]
        for name, v in held.items()
    ]
    note = "" if stage == "split" else " (recorded by the mix stage of an older run)"
    return Table(
        ["source", "kind", "validation docs", "test docs"],
        rows,
        caption="Held-out documents per source, split off before the tokenizer and the mix saw any text"
        + note,
        numeric=[False, False, True, True],
    )


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    m = data.m("clean")
    sources = m.get("sources") if isinstance(m.get("sources"), dict) else {}
    if not sources:
        return s.add(missing("Per-source cleaning counts (clean manifest `sources`)"), heldout_table(data))
    s.add(
        Table(
            [
                "source",
                "kind",
                "docs in",
                "bytes in",
                "kept",
                "kept bytes",
                "kept %",
                "rejected",
                "dup. clusters",
                "PII redactions",
            ],
            _source_rows(data, sources),
            caption="Documents and bytes in, kept and rejected, per source",
            numeric=[False, False] + [True] * 8,
        ),
        _reconciliation(sources),
    )
    for key, header, caption in (
        ("rejected", "reason", "Rejected documents by reason"),
        ("pii", "PII type", "PII redactions by type"),
    ):
        t = _by_key_table(sources, key, header, caption)
        if t is not None:
            s.add(t)
    png = plots.funnel_plot({k: v for k, v in sources.items() if isinstance(v, dict)}, inp.dpi)
    if png:
        s.add(Figure("funnel.png", png, "Documents kept and rejected by reason, per source."))
    s.add(heldout_table(data))
    return s
