"""Quantized variants: size in memory and on disk and bits-per-byte of the adapted model per precision."""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import Figure, Section, Table, fmt_bytes, fmt_float, fmt_value, num
from dapt.eval.report.sections.base import Inputs, missing

ID, TITLE = "quantization", "Quantized variants"

QUANT_FIXED = (
    "precision",
    "bytes_in_memory",
    "bytes_on_disk",
    "disk_format",
    "dtype",
    "method",
    "library",
    "seconds",
)
"""Keys of a quantization row that are not a metric column."""


def quant_columns(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with nested ``bpb: {source: x}`` flattened, and the extra (metric) columns in order."""
    flat = []
    for r in rows:
        f = dict(r)
        for k, v in r.items():
            if isinstance(v, dict):
                del f[k]
                for sk, sv in v.items():
                    if k == "bpb":
                        f[f"bpb {sk}"] = sv
                    elif k == "bpb_by_kind":  # named like the pooled rows of the benchmark table
                        f[f"bpb all-{sk}"] = sv
                    else:
                        f[f"{k} {sk}"] = sv
        flat.append(f)
    cols = list(dict.fromkeys(k for f in flat for k in f if k not in QUANT_FIXED))
    return flat, cols


def quant_bpb_key(data: RunData, rows: list[dict[str, Any]]) -> str | None:
    """The quantization table's bits-per-byte column to headline: a domain source's if present."""
    keys = [k for r in rows for k, v in r.items() if k not in QUANT_FIXED and num(v) is not None]
    keys = list(dict.fromkeys(keys))
    if not keys:
        return None
    if "bpb all-domain" in keys:  # the eval stage's pooled domain bits-per-byte
        return "bpb all-domain"
    for k in keys:
        name = k.removeprefix("bpb ").removeprefix("bpb_").removeprefix("bpb.").removesuffix("_bpb")
        if data.source_kind(name) == "domain":
            return k
    return keys[0]


def metric_cell(r: dict[str, Any], col: str) -> str:
    return fmt_float(r.get(col)) if num(r.get(col)) is not None else fmt_value(r.get(col))


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    q = data.quantization_rows()
    if not q:
        return s.add(missing("Quantization table (eval results.json)"))
    flat, cols = quant_columns(q)
    rows = [
        [
            fmt_value(r.get("precision")),
            fmt_bytes(r.get("bytes_in_memory")),
            fmt_bytes(r.get("bytes_on_disk")),
            fmt_value(r.get("disk_format")),
            *[metric_cell(r, c) for c in cols],
        ]
        for r in flat
    ]
    s.add(
        Table(
            ["precision", "in memory", "on disk", "disk format", *cols],
            rows,
            caption="Size and bits-per-byte of the adapted model per precision",
            numeric=[False, True, True, False] + [True] * len(cols),
        )
    )
    png = plots.quant_plot(flat, quant_bpb_key(data, flat), inp.dpi)
    if png:
        s.add(Figure("quantization.png", png, "Size and bits-per-byte of the adapted model per precision."))
    return s
