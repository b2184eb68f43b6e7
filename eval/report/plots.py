"""The report's plots as PNG bytes (matplotlib's Agg canvas: no display, no global backend switch).

Each function takes recorded values only and returns None when there is nothing to draw, so the caller
writes "not recorded" instead of an empty chart.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from dapt.eval.report.doc import num

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
# Rejection reasons: anything but the green used for "kept".
_REJECT_COLORS = [
    "#ff7f0e",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#1f77b4",
]


def _figure(width: float = 7.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    # No metadata: identical inputs give byte-identical PNGs (and reports).
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def thin(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """Every k-th point so at most ``max_points`` remain, always keeping the last one."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    step = -(-n // max_points)
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        idx[-1] = n - 1
    return [xs[i] for i in idx], [ys[i] for i in idx]


def series(rows: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) pairs from rows that have both as finite numbers, sorted by x."""
    pts = sorted((num(r.get(x)), num(r.get(y))) for r in rows if num(r.get(x)) is not None)
    pts = [(a, b) for a, b in pts if b is not None]
    return [a for a, _ in pts], [b for _, b in pts]


def funnel_plot(sources: dict[str, dict[str, Any]], dpi: int) -> bytes | None:
    """Per source: kept documents and rejected documents stacked by reason."""
    names = [n for n, s in sources.items() if num(s.get("docs_in")) is not None]
    if not names:
        return None
    reasons = sorted({r for n in names for r in (sources[n].get("rejected") or {})})
    fig = _figure(7.0, 0.7 + 0.55 * len(names) + 0.25 * len(reasons))
    ax = fig.add_subplot()
    left = [0.0] * len(names)
    kept = [num(sources[n].get("kept")) or 0.0 for n in names]
    ax.barh(names, kept, color="#2ca02c", label="kept")
    left = kept
    for i, reason in enumerate(reasons):
        vals = [num((sources[n].get("rejected") or {}).get(reason)) or 0.0 for n in names]
        ax.barh(
            names, vals, left=left, color=_REJECT_COLORS[i % len(_REJECT_COLORS)], label=f"rejected: {reason}"
        )
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("documents")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Data funnel: documents in, kept and rejected by reason", fontsize=10)
    return _png(fig, dpi)


def mix_plot(per_source: dict[str, dict[str, Any]], dpi: int) -> bytes | None:
    """Tokens available vs tokens used per source (log scale: corpora differ by orders of magnitude)."""
    names = [n for n, s in per_source.items() if num(s.get("tokens_used")) is not None]
    if not names:
        return None
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    xs = range(len(names))
    avail = [num(per_source[n].get("tokens_available")) or 0.0 for n in names]
    used = [num(per_source[n].get("tokens_used")) or 0.0 for n in names]
    ax.bar([x - 0.2 for x in xs], avail, width=0.4, label="available", color="#9ecae1")
    ax.bar([x + 0.2 for x in xs], used, width=0.4, label="used in the mix", color="#1f77b4")
    ax.set_xticks(list(xs), [f"{n}\n({per_source[n].get('kind', '?')})" for n in names], fontsize=8)
    ax.set_ylabel("tokens")
    if max(avail + used) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Mix: tokens available and used per source", fontsize=10)
    return _png(fig, dpi)


def fertility_plot(fertility: dict[str, dict[str, dict[str, Any]]], dpi: int) -> bytes | None:
    """Tokens per word per source, one bar per tokenizer."""
    sources = [s for s, v in fertility.items() if isinstance(v, dict)]
    toks = sorted({t for s in sources for t, v in fertility[s].items() if isinstance(v, dict)})
    if not sources or not toks:
        return None
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    width = 0.8 / len(toks)
    drew = False
    for j, tok in enumerate(toks):
        vals = [num((fertility[s].get(tok) or {}).get("tokens_per_word")) for s in sources]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(sources))]
        pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None]
        if pts:
            drew = True
            ax.bar([p[0] for p in pts], [p[1] for p in pts], width=width, label=tok, color=_COLORS[j % 8])
    if not drew:
        return None
    ax.set_xticks(list(range(len(sources))), sources, fontsize=8)
    ax.set_ylabel("tokens per word (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title("Tokenizer fertility per source", fontsize=10)
    return _png(fig, dpi)


def loss_plot(metrics: list[dict[str, Any]], max_points: int, dpi: int) -> bytes | None:
    """Training loss over steps, with the learning rate on a second axis when recorded."""
    xs, ys = series(metrics, "step", "loss")
    if not xs:
        return None
    xs, ys = thin(xs, ys, max_points)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(xs, ys, color="#1f77b4", lw=1.2, label="training loss", marker="." if len(xs) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    lx, ly = series(metrics, "step", "lr")
    if lx:
        lx, ly = thin(lx, ly, max_points)
        ax2 = ax.twinx()
        ax2.plot(lx, ly, color="#ff7f0e", lw=0.8, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    else:
        ax.legend(fontsize=8)
    ax.set_title("Training loss", fontsize=10)
    return _png(fig, dpi)


def monitor_keys(monitor: list[dict[str, Any]]) -> list[str]:
    """The bits-per-byte series in monitor.jsonl (domain_bpb, general_bpb, and any per-source ones)."""
    keys: list[str] = []
    for row in monitor:
        for k, v in row.items():
            if k.endswith("bpb") and num(v) is not None and k not in keys:
                keys.append(k)
    order = {"domain_bpb": 0, "general_bpb": 1}
    return sorted(keys, key=lambda k: (order.get(k, 2), k))


def monitor_plot(monitor: list[dict[str, Any]], max_points: int, dpi: int) -> bytes | None:
    """Domain and general validation bits-per-byte over steps: adaptation and forgetting on one chart."""
    keys = monitor_keys(monitor)
    if not keys:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, k in enumerate(keys):
        xs, ys = thin(*series(monitor, "step", k), max_points)
        ax.plot(xs, ys, lw=1.4, marker="o" if len(xs) < 40 else None, ms=3, label=k, color=_COLORS[i % 8])
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits per byte")
    ax.legend(fontsize=8)
    ax.set_title("Validation bits-per-byte during training (domain vs general)", fontsize=10)
    return _png(fig, dpi)


def delta_plot(
    labels: list[str], pcts: list[float | None], better: list[bool], significant: list[bool | None], dpi: int
) -> bytes | None:
    """Relative change adapted vs base per metric: green where the adapted model is better (lower
    bits-per-byte, higher accuracy), red where worse; hatched bars are not significant."""
    pts = [p for p in zip(labels, pcts, significant, better, strict=True) if p[1] is not None]
    if not pts:
        return None
    fig = _figure(7.0, 0.9 + 0.4 * len(pts))
    ax = fig.add_subplot()
    names = [p[0] for p in pts]
    vals = [p[1] for p in pts]
    colors = ["#2ca02c" if p[3] else "#d62728" for p in pts]
    bars = ax.barh(names, vals, color=colors)
    for bar, p in zip(bars, pts, strict=True):
        if p[2] is not True:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    ax.axvline(0, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("change vs base (%): green better, red worse, hatched not significant", fontsize=9)
    ax.set_title("Benchmarks: relative change of the adapted model vs the base", fontsize=10)
    return _png(fig, dpi)


def quant_plot(rows: list[dict[str, Any]], bpb_key: str | None, dpi: int) -> bytes | None:
    """Size on disk and in memory per precision, with bits-per-byte on a second axis."""
    names = [str(r.get("precision")) for r in rows]
    mem = [num(r.get("bytes_in_memory")) for r in rows]
    disk = [num(r.get("bytes_on_disk")) for r in rows]
    if not names or all(v is None for v in mem + disk):
        return None
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    ax.bar(
        [x - 0.2 for x in xs], [(v or 0) / 2**20 for v in mem], width=0.4, label="in memory", color="#9ecae1"
    )
    ax.bar(
        [x + 0.2 for x in xs], [(v or 0) / 2**20 for v in disk], width=0.4, label="on disk", color="#1f77b4"
    )
    ax.set_xticks(xs, names)
    ax.set_ylabel("MiB")
    handles, labels = ax.get_legend_handles_labels()
    if bpb_key:
        bpb = [num(r.get(bpb_key)) for r in rows]
        pts = [(x, v) for x, v in zip(xs, bpb, strict=True) if v is not None]
        if pts:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="#d62728", label=bpb_key)
            ax2.set_ylabel("bits per byte")
            ax2.ticklabel_format(axis="y", useOffset=False)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=len(labels))
    ax.set_title("Quantized variants of the adapted model", fontsize=10)
    return _png(fig, dpi)


def sweep_plot(sweep: dict[str, Any], measured: dict[str, float] | None, dpi: int) -> bytes | None:
    """The sweep's proxy points and fitted curves per budget, domain and general side by side, with the
    recommended fraction and, when a run was made there, its measured validation bits-per-byte."""
    curves, trials = sweep.get("curves") or {}, sweep.get("trials") or []
    if not curves or not trials:
        return None
    rec = sweep.get("recommendation") or {}
    target = rec.get("tokens")
    fig = _figure(width=9.0, height=3.6)
    for i, side in enumerate(("domain", "general")):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, (budget, pts) in enumerate(
            sorted((curves.get(side) or {}).items(), key=lambda kv: float(kv[0]))
        ):
            color = _COLORS[j % 8]
            is_target = target is not None and float(budget) == float(target)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                lw=1.2,
                ls="--" if is_target else "-",
                color=color,
                label=f"{int(float(budget)):,} tokens" + (" (target, predicted)" if is_target else ""),
            )
            here = [t for t in trials if int(t["budget"]) == int(float(budget))]
            ax.scatter(
                [t["achieved_fraction"] for t in here], [t[f"{side}_bpb"] for t in here], s=14, color=color
            )
        if rec.get("domain_fraction") is not None:
            ax.axvline(float(rec["domain_fraction"]), color="#444", lw=0.8, ls=":", label="recommended")
        if measured and measured.get(side) is not None and rec.get("domain_fraction") is not None:
            ax.scatter(
                [rec["domain_fraction"]], [measured[side]], marker="*", s=90, color="black", label="measured"
            )
        ax.set_xlabel("domain fraction")
        ax.set_ylabel(f"{side} validation bits per byte")
        ax.set_title(f"{side.capitalize()} side: proxy runs and fitted law", fontsize=10)
        ax.legend(fontsize=7)
    return _png(fig, dpi)
