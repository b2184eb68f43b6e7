"""The report's sections and its conclusions, built from :class:`RunData` (recorded values only).

Conclusions are sentences computed from the numbers in the manifests and results.json (deltas,
significance flags, ratios), in a fixed order, so two runs' reports can be compared line by line and no
sentence can claim more than the data shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eval.report import plots
from eval.report.collect import UPSTREAM, RunData
from eval.report.doc import (
    NR,
    Bullets,
    Figure,
    Para,
    Section,
    Table,
    flatten,
    fmt_bytes,
    fmt_count,
    fmt_float,
    fmt_frac,
    fmt_int,
    fmt_p,
    fmt_pct,
    fmt_seconds,
    fmt_sig,
    fmt_value,
    get,
    kv_table,
    num,
)

SECTION_IDS = [
    "summary",
    "data",
    "mix",
    "tokenizer",
    "training",
    "benchmarks",
    "quantization",
    "plan",
    "conclusions",
]
"""Every report has all of these, in this order (a section with no data says so)."""

_LOWER_IS_BETTER = ("bpb", "bits_per_byte", "perplexity", "loss", "nll", "byte_perplexity", "word_perplexity")


# ----------------------------------------------------------------------------------------- metric helpers


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


def _sig_word(sig: bool | None) -> str:
    return {True: "significant", False: "not significant", None: "significance not recorded"}[sig]


# ------------------------------------------------------------------------------------------- conclusions


def _kind_summary(data: RunData, rows: list[dict[str, Any]], kind: str, alpha: float) -> str | None:
    """``domain bits-per-byte -12.3% (significant)`` for the bpb rows of one source kind."""
    mine = [r for r in rows if r.get("kind") == "bpb" and data.source_kind(row_target(r)) == kind]
    pcts = [(r, delta_pct(r)) for r in mine]
    pcts = [(r, p) for r, p in pcts if p is not None]
    if not pcts:
        return None
    if len(pcts) == 1:
        r, p = pcts[0]
        return f"{kind} bits-per-byte {p:+.1f}% ({_sig_word(is_significant(r, alpha))})"
    mean = sum(p for _, p in pcts) / len(pcts)
    n_sig = sum(1 for r, _ in pcts if is_significant(r, alpha))
    return f"{kind} bits-per-byte {mean:+.1f}% (mean over {len(pcts)} sources; significant on {n_sig})"


def conclusions(data: RunData, alpha: float) -> list[str]:
    out: list[str] = []
    rows = data.metric_rows()

    # 1. the user's question: better on the domain? how much general ability lost?
    parts = [s for s in (_kind_summary(data, rows, k, alpha) for k in ("domain", "general")) if s]
    if parts:
        out.append("Adapted vs base: " + ", ".join(parts) + ".")
    dom = [r for r in rows if r.get("kind") == "bpb" and data.source_kind(row_target(r)) == "domain"]
    gen = [r for r in rows if r.get("kind") == "bpb" and data.source_kind(row_target(r)) == "general"]
    if dom:
        better = [r for r in dom if (delta_pct(r) or 0) < 0 and is_significant(r, alpha)]
        worse = [r for r in dom if (delta_pct(r) or 0) > 0 and is_significant(r, alpha)]
        if better and not worse:
            out.append(
                f"The adapted model is significantly better than the base on the domain held-out text "
                f"({len(better)} of {len(dom)} domain sources)."
            )
        elif worse:
            out.append(
                f"The adapted model is significantly WORSE than the base on {len(worse)} of {len(dom)} "
                "domain sources: adaptation did not work as intended."
            )
        else:
            out.append("No significant difference between adapted and base on the domain held-out text.")
    if gen:
        worse = [r for r in gen if (delta_pct(r) or 0) > 0 and is_significant(r, alpha)]
        if worse:
            worst = max(worse, key=lambda r: delta_pct(r) or 0)
            out.append(
                f"General ability was lost: general bits-per-byte rose significantly on {len(worse)} of "
                f"{len(gen)} general sources (worst: {row_target(worst)} {delta_pct(worst):+.1f}%)."
            )
        else:
            out.append("No significant loss on general held-out text (bits-per-byte did not rise significantly).")

    # 2. per-metric details
    for r in rows:
        base, adapted = num(r.get("base")), num(r.get("adapted"))
        if base is None or adapted is None:
            continue
        p = delta_pct(r)
        sig = is_significant(r, alpha)
        direction = ""
        if adapted != base:
            good = (adapted < base) == lower_is_better(r)
            direction = " better" if good else " worse"
        pv = f", p={fmt_p(r.get('p_value'))}" if num(r.get("p_value")) is not None else ""
        pct = f" ({p:+.1f}%)" if p is not None else ""
        out.append(
            f"{row_label(r)}: {fmt_float(base)} -> {fmt_float(adapted)}{pct},{direction} "
            f"({_sig_word(sig)}{pv})."
        )

    # 3. training dynamics
    xs, ys = plots.series(data.metrics, "step", "loss")
    if len(ys) >= 2:
        out.append(
            f"Training loss {ys[0]:.3f} -> {ys[-1]:.3f} over {fmt_int(data.m('train').get('steps') or xs[-1])} "
            f"steps ({fmt_count(data.m('train').get('tokens'))} tokens)."
        )
    for key in plots.monitor_keys(data.monitor):
        mx, my = plots.series(data.monitor, "step", key)
        if len(my) >= 2 and my[0] != 0:
            out.append(
                f"During training, validation {key} went {my[0]:.4f} -> {my[-1]:.4f} "
                f"({100 * (my[-1] - my[0]) / abs(my[0]):+.1f}%) between steps {fmt_int(mx[0])} and {fmt_int(mx[-1])}."
            )

    # 4. data, mix, tokenizer
    totals = _clean_totals(data)
    if totals.get("docs_in"):
        kept_docs = 100 * totals["kept"] / totals["docs_in"]
        s = f"Cleaning kept {fmt_int(totals['kept'])} of {fmt_int(totals['docs_in'])} documents ({kept_docs:.1f}%)"
        if totals.get("bytes_in"):
            s += f" and {100 * totals['kept_bytes'] / totals['bytes_in']:.1f}% of bytes"
        reasons = totals.get("rejected") or {}
        if reasons:
            top = max(reasons, key=lambda k: reasons[k])
            s += f"; most frequent rejection: {top} ({fmt_int(reasons[top])})"
        out.append(s + ".")
    target = num(get(data.m("mix"), "mix", "target_domain_fraction"))
    achieved = num(get(data.m("mix"), "mix", "achieved_domain_fraction"))
    if target is not None and achieved is not None:
        out.append(
            f"Mix domain fraction achieved {100 * achieved:.2f}% vs target {100 * target:.2f}% "
            f"({100 * (achieved - target):+.2f} pp)."
        )
    decon = get(data.m("mix"), "decontamination")
    if isinstance(decon, dict) and decon:
        total = sum(num(v) or 0 for v in decon.values())
        out.append(f"Decontamination against {len(decon)} eval task(s) dropped {fmt_int(total)} document(s).")
    red = num(data.m("tokenizer").get("domain_token_reduction"))
    if red is not None:
        pct = red * 100 if abs(red) <= 1 else red
        out.append(
            f"Tokenizer ({data.m('tokenizer').get('mode', NR)}): domain text needs {pct:.1f}% fewer tokens "
            "than with the base tokenizer."
            if pct >= 0
            else f"Tokenizer ({data.m('tokenizer').get('mode', NR)}): domain text needs {-pct:.1f}% MORE tokens "
            "than with the base tokenizer."
        )

    # 5. quantization
    q = data.quantization_rows()
    ref = next((r for r in q if str(r.get("precision")) in ("fp32", "float32")), q[0] if q else None)
    bkey = _quant_bpb_key(data, q)
    for r in q:
        if r is ref:
            continue
        bits = []
        m0, m1 = num(ref.get("bytes_in_memory")), num(r.get("bytes_in_memory"))
        if m0 and m1:
            bits.append(f"{m0 / m1:.2f}x smaller in memory than {ref.get('precision')}")
        b0, b1 = (num(ref.get(bkey)), num(r.get(bkey))) if bkey else (None, None)
        if b0 and b1 is not None:
            bits.append(f"{bkey} {100 * (b1 - b0) / b0:+.2f}%")
        if bits:
            out.append(f"{r.get('precision')}: " + ", ".join(bits) + ".")

    # 6. plan vs measured
    for label, planned, measured in plan_pairs(data):
        if planned:
            out.append(f"{label}: measured {measured[1]} vs planned {planned[1]} ({measured[0] / planned[0]:.2f}x).")
    return out


# ----------------------------------------------------------------------------------------------- helpers


def _clean_totals(data: RunData) -> dict[str, Any]:
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


def _quant_bpb_key(data: RunData, rows: list[dict[str, Any]]) -> str | None:
    """The quantization table's bits-per-byte column to headline: a domain source's if present."""
    keys = [k for r in rows for k, v in r.items() if k not in _QUANT_FIXED and num(v) is not None]
    keys = list(dict.fromkeys(keys))
    if not keys:
        return None
    for k in keys:
        name = k.removeprefix("bpb_").removeprefix("bpb.").removesuffix("_bpb")
        if data.source_kind(name) == "domain":
            return k
    return keys[0]


_QUANT_FIXED = ("precision", "bytes_in_memory", "bytes_on_disk", "dtype", "method", "library", "seconds")


def _quant_columns(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with nested ``bpb: {source: x}`` flattened, and the extra (metric) columns in order."""
    flat = []
    for r in rows:
        f = dict(r)
        for k, v in r.items():
            if isinstance(v, dict):
                del f[k]
                for sk, sv in v.items():
                    f[f"{k} {sk}" if k != "bpb" else f"bpb {sk}"] = sv
        flat.append(f)
    cols = list(dict.fromkeys(k for f in flat for k in f if k not in _QUANT_FIXED))
    return flat, cols


def plan_pairs(data: RunData) -> list[tuple[str, tuple[float, str] | None, tuple[float, str]]]:
    """(quantity, planned, measured) for the quantities both the planner and the trainer recorded.

    The planner's key names are matched by meaning (peak memory in bytes, throughput, time) so the
    comparison survives renames; a quantity is listed only when both sides have a number.
    """
    train = data.m("train")
    plan = train.get("plan")
    if not isinstance(plan, dict):
        return []
    flat = {k: num(v) for k, v in flatten(plan).items()}
    flat = {k: v for k, v in flat.items() if v is not None}

    def find(pred: Callable[[str], bool]) -> tuple[str, float] | None:
        for k, v in flat.items():
            if pred(k.lower()):
                return k, v
        return None

    out: list[tuple[str, tuple[float, str] | None, tuple[float, str]]] = []
    peak = num(train.get("peak_memory_bytes"))
    if peak:
        hit = find(lambda k: ("peak" in k or "total" in k) and "bytes" in k and "per_gpu" not in k) or find(
            lambda k: "bytes" in k and ("per_rank" in k or "per_device" in k or "per_gpu" in k)
        )
        if hit:
            out.append(("Peak memory per worker", (hit[1], fmt_bytes(hit[1])), (peak, fmt_bytes(peak))))
    tps = num(train.get("tokens_per_s"))
    if tps:
        hit = find(lambda k: "tokens_per_s" in k)
        if hit:
            out.append(("Throughput (tokens/s)", (hit[1], fmt_sig(hit[1])), (tps, fmt_sig(tps))))
    wall = num(train.get("wall_seconds"))
    if wall:
        hit = find(lambda k: k.endswith("seconds") and ("train" in k or "time" in k or "wall" in k))
        if hit is None:
            h = find(lambda k: k.endswith("hours") and ("train" in k or "time" in k or "wall" in k))
            hit = (h[0], h[1] * 3600) if h else None
        if hit:
            out.append(("Training time", (hit[1], fmt_seconds(hit[1])), (wall, fmt_seconds(wall))))
    mfu = num(train.get("mfu"))
    if mfu:
        hit = find(lambda k: k.split(".")[-1] == "mfu" or k.endswith("mfu_assumed"))
        if hit:
            out.append(("MFU", (hit[1], f"{hit[1]:.3f}"), (mfu, f"{mfu:.3f}")))
    return out


# ---------------------------------------------------------------------------------------------- sections


def _missing(what: str) -> Para:
    return Para(f"{what}: {NR}.", kind="note")


def summary_section(data: RunData, concl: list[str]) -> Section:
    s = Section("summary", "Run summary")
    tok, train, mix = data.m("tokenizer"), data.m("train"), data.m("mix")
    cfg = data.cfg
    base = get(tok, "base", "model")
    if base is None and getattr(cfg.model, "name_or_path", None):
        base = cfg.model.name_or_path
    if base is None and getattr(cfg.model, "from_config", None) is not None:
        fc = cfg.model.from_config
        base = f"random init from config ({fc.model_type}, {fc.num_hidden_layers} layers, hidden {fc.hidden_size})"
    kinds = [src.kind for src in cfg.sources]
    pairs = [
        ("Run", data.run_name),
        ("Base model", fmt_value(base)),
        ("Parameters", fmt_count(data.n_params)),
        (
            "Sources",
            f"{kinds.count('domain')} domain, {kinds.count('general')} general: "
            + ", ".join(f"{src.name} ({src.kind})" for src in cfg.sources),
        ),
        ("Tokenizer", f"{fmt_value(tok.get('mode'))}, vocabulary {fmt_int(tok.get('vocab_size'))}"),
        (
            "Mix domain fraction",
            f"target {fmt_frac(get(mix, 'mix', 'target_domain_fraction'), 2)}, "
            f"achieved {fmt_frac(get(mix, 'mix', 'achieved_domain_fraction'), 2)}",
        ),
        ("Training tokens", f"{fmt_count(train.get('tokens'))} in {fmt_int(train.get('steps'))} steps"),
        (
            "Compute",
            f"{fmt_value(train.get('device'))}, {fmt_int(train.get('num_workers'))} worker(s), "
            f"{fmt_value(train.get('sharding'))}, {fmt_value(train.get('precision'))}",
        ),
        ("Training wall time", fmt_seconds(train.get("wall_seconds"))),
        ("Headline", concl[0] if concl else NR),
    ]
    s.add(kv_table(pairs))
    rows = []
    for stage in UPSTREAM:
        m = data.manifests.get(stage)
        if m is None:
            rows.append([stage, "missing", NR, NR])
            continue
        rows.append(
            [stage, fmt_value(m.get("started")), fmt_seconds(m.get("seconds")), str(m.get("fingerprint", NR))[:12]]
        )
    s.add(Table(["stage", "started", "seconds", "fingerprint"], rows, caption="Stages", numeric=[False] * 4))
    versions = next((m.get("versions") for m in data.manifests.values() if isinstance(m.get("versions"), dict)), None)
    rev = next((m.get("git_revision") for m in data.manifests.values() if m.get("git_revision")), None)
    if versions:
        s.add(Para("Software: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; dapt revision {rev or NR}."))
    return s


def data_section(data: RunData, dpi: int) -> Section:
    s = Section("data", "Data funnel")
    m = data.m("clean")
    sources = m.get("sources") if isinstance(m.get("sources"), dict) else {}
    if not sources:
        return s.add(_missing("Per-source cleaning counts (clean manifest `sources`)"))
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
    t = _clean_totals(data)
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
    s.add(
        Table(
            ["source", "kind", "docs in", "bytes in", "kept", "kept bytes", "kept %", "rejected", "dup. clusters", "PII redactions"],
            rows,
            caption="Documents and bytes in, kept and rejected, per source",
            numeric=[False, False] + [True] * 8,
        )
    )
    # Reconciliation: every document is either kept or rejected with a reason.
    bad = []
    for name, v in sources.items():
        if not isinstance(v, dict) or num(v.get("docs_in")) is None or num(v.get("kept")) is None:
            continue
        rej = sum(num(x) or 0 for x in (v.get("rejected") or {}).values())
        if num(v["docs_in"]) != num(v["kept"]) + rej:
            bad.append(f"{name} ({fmt_int(v['docs_in'])} in != {fmt_int(v['kept'])} kept + {fmt_int(rej)} rejected)")
    s.add(
        Para(
            "Counts reconcile: documents in = kept + rejected for every source."
            if not bad
            else "Counts do NOT reconcile for: " + "; ".join(bad),
            kind="note",
        )
    )
    reasons = sorted({r for v in sources.values() if isinstance(v, dict) for r in (v.get("rejected") or {})})
    if reasons:
        names = list(sources)
        s.add(
            Table(
                ["reason", *names],
                [[r, *[fmt_int(get(sources, n, "rejected", r, default=0)) for n in names]] for r in reasons],
                caption="Rejected documents by reason",
            )
        )
    pii_types = sorted({p for v in sources.values() if isinstance(v, dict) for p in (v.get("pii") or {})})
    if pii_types:
        names = list(sources)
        s.add(
            Table(
                ["PII type", *names],
                [[p, *[fmt_int(get(sources, n, "pii", p, default=0)) for n in names]] for p in pii_types],
                caption="PII redactions by type",
            )
        )
    png = plots.funnel_plot({k: v for k, v in sources.items() if isinstance(v, dict)}, dpi)
    if png:
        s.add(Figure("funnel.png", png, "Documents kept and rejected by reason, per source."))
    return s


def mix_section(data: RunData, dpi: int) -> Section:
    s = Section("mix", "Mix: achieved vs target")
    m = data.m("mix")
    mix = m.get("mix") if isinstance(m.get("mix"), dict) else {}
    if not m:
        return s.add(_missing("Mix manifest"))
    target, achieved = num(mix.get("target_domain_fraction")), num(mix.get("achieved_domain_fraction"))
    s.add(
        kv_table(
            [
                ("Domain fraction (tokens), target", fmt_frac(target, 2)),
                ("Domain fraction (tokens), achieved", fmt_frac(achieved, 2)),
                (
                    "Difference",
                    f"{100 * (achieved - target):+.2f} pp" if target is not None and achieved is not None else NR,
                ),
                ("Total training tokens", fmt_int(m.get("total_tokens"))),
                ("Packed blocks", f"{fmt_int(m.get('n_blocks'))} x {fmt_int(num(m.get('seq_len')))} (+1) tokens"),
            ]
        )
    )
    per = mix.get("per_source") if isinstance(mix.get("per_source"), dict) else {}
    if per:
        used_total = sum(num(v.get("tokens_used")) or 0 for v in per.values() if isinstance(v, dict))
        rows = []
        for name, v in per.items():
            v = v if isinstance(v, dict) else {}
            used = num(v.get("tokens_used"))
            rows.append(
                [
                    name,
                    fmt_value(v.get("kind") or data.source_kind(name)),
                    fmt_int(v.get("tokens_available")),
                    fmt_int(used),
                    fmt_frac(used / used_total, 2) if used is not None and used_total else NR,
                    fmt_float(v.get("epochs"), 3),
                    fmt_int(v.get("docs")),
                ]
            )
        s.add(
            Table(
                ["source", "kind", "tokens available", "tokens used", "share of mix", "epochs", "docs"],
                rows,
                caption="Tokens per source",
                numeric=[False, False, True, True, True, True, True],
            )
        )
        png = plots.mix_plot({k: v for k, v in per.items() if isinstance(v, dict)}, dpi)
        if png:
            s.add(Figure("mix.png", png, "Tokens available and used per source (log scale)."))
    else:
        s.add(_missing("Per-source token counts (mix manifest `mix.per_source`)"))
    decon = m.get("decontamination")
    if isinstance(decon, dict):
        if decon:
            s.add(
                Table(
                    ["eval task", "documents dropped"],
                    [[k, fmt_int(v)] for k, v in decon.items()],
                    caption="Decontamination (13-gram overlap with eval tasks)",
                )
            )
        else:
            s.add(Para("Decontamination: no eval task texts were configured, nothing checked.", kind="note"))
    else:
        s.add(_missing("Decontamination counts"))
    return s


def tokenizer_section(data: RunData, dpi: int) -> Section:
    s = Section("tokenizer", "Tokenizer fertility")
    m = data.m("tokenizer")
    if not m:
        return s.add(_missing("Tokenizer manifest"))
    red = num(m.get("domain_token_reduction"))
    added = m.get("added_tokens")
    s.add(
        kv_table(
            [
                ("Mode", fmt_value(m.get("mode"))),
                ("Vocabulary size", fmt_int(m.get("vocab_size"))),
                ("Added tokens", fmt_int(len(added)) if isinstance(added, list) else fmt_int(added)),
                ("Base tokenizer", fmt_value(get(m, "base", "tokenizer") or get(m, "base", "model"))),
                (
                    "Domain token reduction vs base",
                    NR if red is None else (fmt_frac(red, 2) if abs(red) <= 1 else fmt_pct(red, 2)),
                ),
            ]
        )
    )
    fert = m.get("fertility") if isinstance(m.get("fertility"), dict) else {}
    fert = {k: v for k, v in fert.items() if isinstance(v, dict)}
    if not fert:
        return s.add(_missing("Fertility per source (tokenizer manifest `fertility`)"))
    toks = list(dict.fromkeys(t for v in fert.values() for t, x in v.items() if isinstance(x, dict)))
    rows = []
    for src, v in fert.items():
        row = [src, fmt_value(data.source_kind(src))]
        for t in toks:
            row += [fmt_float(get(v, t, "tokens_per_word"), 3), fmt_float(get(v, t, "bytes_per_token"), 3)]
        rows.append(row)
    headers = ["source", "kind"] + [h for t in toks for h in (f"{t} tokens/word", f"{t} bytes/token")]
    s.add(Table(headers, rows, caption="Tokens per word and bytes per token on held-out text"))
    png = plots.fertility_plot(fert, dpi)
    if png:
        s.add(Figure("fertility.png", png, "Tokens per word per source and tokenizer (lower is better)."))
    return s


def training_section(data: RunData, max_points: int, dpi: int) -> Section:
    s = Section("training", "Training")
    t = data.m("train")
    if not t:
        return s.add(_missing("Train manifest"))
    mfu = num(t.get("mfu"))
    s.add(
        kv_table(
            [
                ("Steps", fmt_int(t.get("steps"))),
                ("Tokens", fmt_int(t.get("tokens"))),
                ("Throughput", f"{fmt_sig(t.get('tokens_per_s'))} tokens/s"),
                ("MFU", f"{100 * mfu:.1f}%" if mfu is not None else "not recorded (no peak FLOP/s known for the device)"),
                ("Peak memory per worker", fmt_bytes(t.get("peak_memory_bytes"))),
                ("Wall time", fmt_seconds(t.get("wall_seconds"))),
                ("Device", fmt_value(t.get("device"))),
                ("Workers", fmt_int(t.get("num_workers"))),
                ("Sharding", fmt_value(t.get("sharding"))),
                ("Precision", fmt_value(t.get("precision"))),
                ("Early stopped", fmt_value(t.get("early_stopped"))),
            ]
        )
    )
    hp = t.get("hyperparameters")
    if isinstance(hp, dict) and hp:
        s.add(Table(["hyperparameter", "value"], [[k, fmt_value(v)] for k, v in flatten(hp).items()], numeric=[False, True]))
    else:
        s.add(_missing("Hyperparameters"))
    png = plots.loss_plot(data.metrics, max_points, dpi)
    if png:
        xs, ys = plots.series(data.metrics, "step", "loss")
        s.add(Figure("loss.png", png, f"Training loss over {len(xs)} logged steps (learning rate dashed)."))
        s.add(
            Para(
                f"Loss: first {ys[0]:.4f} (step {fmt_int(xs[0])}), last {ys[-1]:.4f} (step {fmt_int(xs[-1])}), "
                f"minimum {min(ys):.4f}."
            )
        )
    else:
        s.add(_missing("Training loss curve (metrics.jsonl)"))
    keys = plots.monitor_keys(data.monitor)
    png = plots.monitor_plot(data.monitor, max_points, dpi)
    if png:
        s.add(Figure("monitor_bpb.png", png, "Domain and general validation bits-per-byte over training steps."))
        rows = []
        for k in keys:
            xs, ys = plots.series(data.monitor, "step", k)
            change = fmt_pct(100 * (ys[-1] - ys[0]) / abs(ys[0]), 2, signed=True) if ys[0] else NR
            rows.append([k, fmt_float(ys[0]), fmt_float(ys[-1]), fmt_float(min(ys)), change])
        s.add(Table(["series", "first", "last", "min", "change"], rows, caption="Validation bits-per-byte (monitor)"))
    else:
        s.add(_missing("Domain/general validation bits-per-byte over steps (monitor.jsonl)"))
    return s


def benchmarks_section(data: RunData, alpha: float, dpi: int) -> Section:
    s = Section("benchmarks", "Benchmarks: base vs adapted")
    rows = data.metric_rows()
    if not rows:
        return s.add(_missing("Benchmark results (eval results.json)"))

    def pm(v: Any, se: Any) -> str:
        return fmt_float(v) + (f" ± {fmt_float(se)}" if num(se) is not None else "")

    trs = []
    for r in rows:
        sig = is_significant(r, alpha)
        trs.append(
            [
                row_label(r),
                fmt_value(r.get("kind")),
                row_target(r),
                pm(r.get("base"), r.get("base_stderr")),
                pm(r.get("adapted"), r.get("adapted_stderr")),
                fmt_float(r.get("delta")),
                fmt_pct(delta_pct(r), 2, signed=True),
                fmt_p(r.get("p_value")),
                {True: "yes *", False: "no", None: NR}[sig],
                "lower" if lower_is_better(r) else "higher",
            ]
        )
    s.add(
        Table(
            ["metric", "kind", "source / task", "base", "adapted", "delta", "delta %", "p-value", "significant", "better"],
            trs,
            caption="Base vs adapted (± standard error; p from a paired bootstrap over items)",
            numeric=[False, False, False, True, True, True, True, True, False, False],
        )
    )
    s.add(
        Para(
            "* significant: the eval stage's paired bootstrap over items rejected 'no difference' "
            f"(rows without a recorded flag use p < {alpha})."
            ,
            kind="note",
        )
    )
    png = plots.delta_plot(rows, [row_label(r) for r in rows], dpi)
    if png:
        s.add(Figure("benchmarks.png", png, "Relative change adapted vs base per metric."))
    models = get(data.results, "models")
    if isinstance(models, dict) and models:
        s.add(kv_table([(k, fmt_value(v)) for k, v in flatten(models).items()], caption="Models evaluated"))
    skipped = get(data.results, "skipped") or get(data.results, "errors")
    if isinstance(skipped, list | dict) and skipped:
        items = skipped.items() if isinstance(skipped, dict) else enumerate(skipped)
        s.add(Para("Tasks not evaluated:", kind="note"), Bullets([f"{k}: {fmt_value(v)}" for k, v in items]))
    return s


def quantization_section(data: RunData, dpi: int) -> Section:
    s = Section("quantization", "Quantized variants")
    q = data.quantization_rows()
    if not q:
        return s.add(_missing("Quantization table (eval results.json)"))
    flat, cols = _quant_columns(q)
    rows = [
        [
            fmt_value(r.get("precision")),
            fmt_bytes(r.get("bytes_in_memory")),
            fmt_bytes(r.get("bytes_on_disk")),
            *[fmt_float(r.get(c)) if num(r.get(c)) is not None else fmt_value(r.get(c)) for c in cols],
        ]
        for r in flat
    ]
    s.add(Table(["precision", "in memory", "on disk", *cols], rows, caption="Size and quality per precision"))
    png = plots.quant_plot(flat, _quant_bpb_key(data, flat), dpi)
    if png:
        s.add(Figure("quantization.png", png, "Size and bits-per-byte of the adapted model per precision."))
    return s


def plan_section(data: RunData) -> Section:
    s = Section("plan", "Memory and compute: plan vs measured")
    train = data.m("train")
    plan = train.get("plan")
    pairs = plan_pairs(data)
    if pairs:
        s.add(
            Table(
                ["quantity", "planned", "measured", "measured / planned"],
                [[lab, p[1] if p else NR, m[1], f"{m[0] / p[0]:.2f}" if p and p[0] else NR] for lab, p, m in pairs],
                caption="The planner's prediction next to what the run measured",
            )
        )
    else:
        s.add(Para("No quantity was recorded by both the planner and the trainer.", kind="note"))
    if isinstance(plan, dict) and plan:
        flat = flatten(plan)
        rows = [[k, fmt_value(v)] for k, v in flat.items() if not isinstance(v, list) or len(v) <= 8]
        s.add(Table(["plan entry", "value"], rows[:80], caption="The plan recorded by the train stage", numeric=[False, True]))
        if len(rows) > 80:
            s.add(Para(f"({len(rows) - 80} more plan entries in the train manifest.)", kind="note"))
    else:
        s.add(_missing("Plan (train manifest `plan`)"))
    return s


def build(data: RunData, rcfg: Any) -> tuple[list[Section], list[str]]:
    """All sections in :data:`SECTION_IDS` order, and the conclusions."""
    alpha = rcfg.significance_level
    dpi = rcfg.plot_dpi
    concl = conclusions(data, alpha)
    sections = [
        summary_section(data, concl),
        data_section(data, dpi),
        mix_section(data, dpi),
        tokenizer_section(data, dpi),
        training_section(data, rcfg.max_curve_points, dpi),
        benchmarks_section(data, alpha, dpi),
        quantization_section(data, dpi),
        plan_section(data),
        Section("conclusions", "Conclusions").add(
            Bullets(concl) if concl else _missing("Conclusions (no comparable numbers were recorded)"),
            Para("Every sentence above is computed from the recorded numbers; none is written by hand.", kind="note"),
        ),
    ]
    if data.problems:
        sections.append(
            Section("notes", "Missing inputs").add(
                Para("The report was rendered, but these inputs were missing or unreadable:", kind="note"),
                Bullets(list(dict.fromkeys(data.problems))),
            )
        )
    return sections, concl
