"""The report's sections and its conclusions, built from :class:`RunData` (recorded values only).

Conclusions are sentences computed from the numbers in the manifests and results.json (deltas,
significance flags, ratios), in a fixed order, so two runs' reports can be compared line by line and no
sentence can claim more than the data shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.collect import UPSTREAM, RunData
from dapt.eval.report.doc import (
    NR,
    Bullets,
    Figure,
    Para,
    Pre,
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


def _sig_word(sig: bool | None) -> str:
    return {True: "significant", False: "not significant", None: "significance not recorded"}[sig]


# ------------------------------------------------------------------------------------------- conclusions


def _small_pct(fraction: float) -> str:
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


def _kind_summary(data: RunData, rows: list[dict[str, Any]], kind: str, alpha: float) -> str | None:
    """``domain bits-per-byte -12.3% (significant)``: the pooled row of the kind when the eval stage
    recorded one (all its held-out bytes together, as BloombergGPT reports), else the single source,
    else the mean over the sources (said so)."""
    pooled = [(r, delta_pct(r)) for r in kind_rows(data, rows, kind, pooled=True)]
    pooled = [(r, p) for r, p in pooled if p is not None]
    per = [(r, delta_pct(r)) for r in kind_rows(data, rows, kind, pooled=False)]
    per = [(r, p) for r, p in per if p is not None]
    if pooled:
        r, p = pooled[0]
        n = len(r.get("sources") or []) or len(per)
        over = f"; pooled over {n} sources" if n > 1 else ""
        return f"{kind} bits-per-byte {p:+.1f}% ({_sig_word(is_significant(r, alpha))}{over})"
    if not per:
        return None
    if len(per) == 1:
        r, p = per[0]
        return f"{kind} bits-per-byte {p:+.1f}% ({_sig_word(is_significant(r, alpha))})"
    mean = sum(p for _, p in per) / len(per)
    n_sig = sum(1 for r, _ in per if is_significant(r, alpha))
    return f"{kind} bits-per-byte {mean:+.1f}% (mean over {len(per)} sources; significant on {n_sig})"


def conclusions(data: RunData, alpha: float) -> list[str]:
    out: list[str] = []
    rows = data.metric_rows()

    # 1. the user's question: better on the domain? how much general ability lost?
    parts = [s for s in (_kind_summary(data, rows, k, alpha) for k in ("domain", "general")) if s]
    if parts:
        out.append("Adapted vs base: " + ", ".join(parts) + ".")
    dom = kind_rows(data, rows, "domain", pooled=False) or kind_rows(data, rows, "domain", pooled=True)
    gen = kind_rows(data, rows, "general", pooled=False) or kind_rows(data, rows, "general", pooled=True)
    dom = [r for r in dom if delta_pct(r) is not None]
    gen = [r for r in gen if delta_pct(r) is not None]
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
            out.append(
                "No significant loss on general held-out text (bits-per-byte did not rise significantly)."
            )

    # 2. per-metric details (a pooled row over a single source repeats that source's row: skipped)
    for r in rows:
        if redundant(r):
            continue
        base, adapted = num(r.get("base")), num(r.get("adapted"))
        if base is None or adapted is None:
            continue
        p = delta_pct(r)
        sig = is_significant(r, alpha)
        direction = ""
        if adapted != base:
            good = (adapted < base) == lower_is_better(r)
            direction = " better" if good else " worse"
        pv = ""
        if num(r.get("p_value")) is not None:
            p_text = fmt_p(r.get("p_value"))
            pv = f", p{p_text}" if p_text.startswith("<") else f", p={p_text}"
        pct = f" ({p:+.1f}%)" if p is not None else ""
        out.append(
            f"{row_label(r)}: {fmt_float(base)} -> {fmt_float(adapted)}{pct},{direction} "
            f"({_sig_word(sig)}{pv})."
        )

    status = get(data.results, "tasks")
    if isinstance(status, dict):
        bad = [k for k, v in status.items() if isinstance(v, dict) and v.get("status") != "ok"]
        if bad:
            out.append(f"{len(bad)} configured task(s) could not be evaluated: {', '.join(bad)}.")
    check = get(data.results, "crosscheck")
    if isinstance(check, dict):
        for src, v in check.items():
            rel, speed = num(get(v, "rel_diff")), num(get(v, "speedup"))
            if rel is not None and speed is not None:
                out.append(
                    f"Cross-check on {src}: dapt's bits-per-byte is within {_small_pct(rel)} of lm-eval's "
                    f"loglikelihood_rolling and {speed:.1f}x {'faster' if speed >= 1 else 'slower'}."
                )

    # 3. training dynamics
    xs, ys = plots.series(data.metrics, "step", "loss")
    if len(ys) >= 2:
        steps = data.m("train").get("steps") or xs[-1]
        tokens = data.m("train").get("tokens")
        extra = f" ({fmt_count(tokens)} tokens)" if num(tokens) is not None else ""
        out.append(f"Training loss {ys[0]:.3f} -> {ys[-1]:.3f} over {fmt_int(steps)} steps{extra}.")
    for key in plots.monitor_keys(data.monitor):
        mx, my = plots.series(data.monitor, "step", key)
        if len(my) >= 2 and my[0] != 0:
            out.append(
                f"During training, validation {key} went {my[0]:.4f} -> {my[-1]:.4f} "
                f"({100 * (my[-1] - my[0]) / abs(my[0]):+.1f}%) between steps {fmt_int(mx[0])} and {fmt_int(mx[-1])}."
            )

    train = data.m("train")
    if train.get("early_stopped") is True:
        out.append(
            f"Training stopped early at step {fmt_int(train.get('steps'))} of {fmt_int(train.get('planned_steps'))} "
            "planned: the forgetting monitor's general bits-per-byte exceeded the configured regression limit."
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
    checked, unchecked = decontamination_tasks(data)
    if checked:
        decon = get(data.m("mix"), "decontamination")
        total = sum(num(decon.get(t)) or 0 for t in checked)
        line = f"Decontamination against {len(checked)} eval task(s) dropped {fmt_int(total)} training document(s)"
        out.append(line + (f"; NOT checked (no item text): {', '.join(unchecked)}." if unchecked else "."))
    elif unchecked:
        out.append(f"Decontamination was NOT done: no item text for {', '.join(unchecked)}.")
    tok = data.m("tokenizer")
    for name, red in token_reductions(tok).items():
        side = f"{100 * red:.1f}% fewer" if red >= 0 else f"{-100 * red:.1f}% MORE"
        out.append(
            f"Tokenizer ({tok.get('mode', NR)}): domain held-out text needs {side} tokens with the {name} "
            "tokenizer than with the base tokenizer."
        )

    # 5. quantization
    q, _ = _quant_columns(data.quantization_rows())
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
    for r in plan_rows(data):
        (pv, pt), (mv, mt) = r["planned"], r["measured"]
        if r["comparable"] and not (r["label"] == "Training tokens" and pv == mv):
            out.append(f"{r['label']}: measured {mt} vs planned {pt} ({mv / pv:.2f}x).")
    return out


# ----------------------------------------------------------------------------------------------- helpers


def decontamination_tasks(data: RunData) -> tuple[list[str], list[str]]:
    """(tasks the mix stage checked training text against, tasks it could not check).

    A task counts as checked only when the mix stage used some of its item texts
    (``decontamination_info.texts_used``); an unreachable task has none and is listed as unchecked.
    """
    m = data.m("mix")
    decon = m.get("decontamination")
    if not isinstance(decon, dict):
        return [], []
    used = get(m, "decontamination_info", "texts_used")
    used = used if isinstance(used, dict) else {}
    checked = [t for t in decon if t not in used or (num(used.get(t)) or 0) > 0]
    return checked, [t for t in decon if t not in checked]


def token_reductions(tok_manifest: dict[str, Any]) -> dict[str, float]:
    """``{tokenizer: fraction}`` of fewer domain tokens than the base tokenizer (positive = fewer).

    The tokenizer stage records a dict per non-base tokenizer; a bare number (an older manifest) is
    taken as the reduction of the stage's own output tokenizer.
    """
    red = tok_manifest.get("domain_token_reduction")
    if isinstance(red, dict):
        return {str(k): v for k, v in ((k, num(v)) for k, v in red.items()) if v is not None}
    v = num(red)
    if v is None:
        return {}
    name = {"extend": "extended", "replace": "trained"}.get(str(tok_manifest.get("mode")), "adapted")
    return {name: v / 100 if abs(v) > 1 else v}


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
    if "bpb all-domain" in keys:  # the eval stage's pooled domain bits-per-byte
        return "bpb all-domain"
    for k in keys:
        name = k.removeprefix("bpb ").removeprefix("bpb_").removeprefix("bpb.").removesuffix("_bpb")
        if data.source_kind(name) == "domain":
            return k
    return keys[0]


_QUANT_FIXED = (
    "precision",
    "bytes_in_memory",
    "bytes_on_disk",
    "disk_format",
    "dtype",
    "method",
    "library",
    "seconds",
)


def _quant_columns(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
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
    cols = list(dict.fromkeys(k for f in flat for k in f if k not in _QUANT_FIXED))
    return flat, cols


def _is_cpu(device: Any) -> bool:
    return isinstance(device, str) and device.strip().lower().startswith("cpu")


def plan_rows(data: RunData) -> list[dict[str, Any]]:
    """Planned vs measured, for the quantities both the planner and the trainer recorded.

    Each row: ``label``, ``planned``/``measured`` as (value, text), ``comparable`` and a ``note``. The
    planner's keys are looked up by their known names first (``memory.total`` is
    ``train.plan.memory.estimate``'s predicted peak per GPU; ``compute.*`` comes from
    ``compute_plan``), then by meaning, so the comparison survives renames. A ratio is only called
    comparable when both sides measure the same thing: on CPU the trainer's peak memory is the process's
    peak RSS (runtime included) and the plan's time assumes a GPU, so those rows are shown with a note
    and no ratio, and they never become a conclusion.
    """
    train = data.m("train")
    plan = train.get("plan")
    if not isinstance(plan, dict):
        return []
    flat = {k.lower(): num(v) for k, v in flatten(plan).items()}
    flat = {k: v for k, v in flat.items() if v is not None}

    def find(exact: tuple[str, ...], pred: Callable[[str], bool] = lambda k: False) -> float | None:
        for k in exact:
            if k in flat:
                return flat[k]
        return next((v for k, v in flat.items() if pred(k)), None)

    cpu = _is_cpu(train.get("device"))
    gpu = get(plan, "gpu", "name")
    assumed = f"the plan assumes {gpu}" if isinstance(gpu, str) else "the plan assumes a GPU"
    used = f"the run used {fmt_value(train.get('device'))}"
    out: list[dict[str, Any]] = []

    def add(
        label: str,
        planned: float | None,
        measured: float | None,
        fmt: Callable[[Any], str],
        note: str = "",
        comparable: bool = True,
    ) -> None:
        if planned is None or measured is None:
            return
        out.append(
            {
                "label": label,
                "planned": (planned, fmt(planned)),
                "measured": (measured, fmt(measured)),
                "comparable": comparable and planned != 0,
                "note": note,
            }
        )

    add(
        "Parameters",
        find(("memory.inputs.params", "params", "n_params", "compute.params")),
        num(data.n_params),
        fmt_int,
    )
    planned_tokens = find(("compute.tokens",))
    tokens = num(train.get("tokens"))
    same_tokens = planned_tokens == tokens
    add(
        "Training tokens",
        planned_tokens,
        tokens,
        fmt_int,
        ""
        if same_tokens
        else "the run trained a different number of tokens than planned (data size or early stop)",
    )
    peak = find(
        ("memory.total", "memory.peak_bytes", "peak_memory_bytes", "memory.peak", "peak_bytes"),
        lambda k: (
            "mem" in k
            and k.split(".")[-1] in ("total", "peak", "total_bytes", "peak_bytes", "peak_bytes_per_rank")
            and "model_states" not in k
            and "offload" not in k
        ),
    )
    add(
        "Peak memory per worker",
        peak,
        num(train.get("peak_memory_bytes")),
        fmt_bytes,
        "on CPU the measured value is the process's peak RSS, which includes the Python and PyTorch "
        "runtime; the plan predicts tensor memory"
        if cpu
        else "",
        comparable=not cpu,
    )
    hours = find(("compute.wall_clock_hours", "wall_clock_hours"), lambda k: k.endswith("wall_clock_hours"))
    tps = find(("compute.tokens_per_s", "tokens_per_s"), lambda k: k.endswith("tokens_per_s"))
    if tps is None and hours and planned_tokens:
        tps = planned_tokens / (hours * 3600)  # the plan's own throughput: its tokens over its time
    add(
        "Throughput (tokens/s)",
        tps,
        num(train.get("tokens_per_s")),
        fmt_sig,
        f"{assumed}; {used}" if cpu else "",
        comparable=not cpu,
    )
    secs = num(train.get("train_seconds")) or num(train.get("wall_seconds"))
    time_note = (
        f"{assumed}; {used}" if cpu else ("" if same_tokens else "different token counts: see throughput")
    )
    add(
        "Training time",
        hours * 3600 if hours is not None else None,
        secs,
        fmt_seconds,
        time_note,
        comparable=not cpu and same_tokens,
    )
    add(
        "MFU",
        find(("compute.mfu", "mfu"), lambda k: k.split(".")[-1] == "mfu"),
        num(train.get("mfu")),
        lambda v: f"{100 * v:.1f}%",
        "the planned MFU is an assumption" if get(plan, "compute", "mfu_source") == "assumed" else "",
    )
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
        ("Headline", next((c for c in concl if c.startswith("Adapted vs base:")), NR)),
    ]
    s.add(kv_table(pairs))
    rows = []
    for stage in UPSTREAM:
        m = data.manifests.get(stage)
        if m is None:
            rows.append([stage, "missing", NR, NR])
            continue
        rows.append(
            [
                stage,
                fmt_value(m.get("started")),
                fmt_seconds(m.get("seconds")),
                str(m.get("fingerprint", NR))[:12],
            ]
        )
    s.add(Table(["stage", "started", "seconds", "fingerprint"], rows, caption="Stages", numeric=[False] * 4))
    versions = next(
        (m.get("versions") for m in data.manifests.values() if isinstance(m.get("versions"), dict)), None
    )
    rev = next((m.get("git_revision") for m in data.manifests.values() if m.get("git_revision")), None)
    if versions:
        s.add(
            Para(
                "Software: "
                + ", ".join(f"{k} {v}" for k, v in versions.items())
                + f"; dapt revision {rev or NR}."
            )
        )
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
            bad.append(
                f"{name} ({fmt_int(v['docs_in'])} in != {fmt_int(v['kept'])} kept + {fmt_int(rej)} rejected)"
            )
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
                    f"{100 * (achieved - target):+.2f} pp"
                    if target is not None and achieved is not None
                    else NR,
                ),
                ("Total training tokens", fmt_int(m.get("total_tokens"))),
                (
                    "Packed blocks",
                    f"{fmt_int(m.get('n_blocks'))} x {fmt_int(num(m.get('seq_len')))} (+1) tokens",
                ),
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
                    fmt_int(v.get("docs_used")),
                ]
            )
        s.add(
            Table(
                [
                    "source",
                    "kind",
                    "tokens available",
                    "tokens used",
                    "share of mix",
                    "epochs",
                    "docs available",
                    "docs packed",
                ],
                rows,
                caption="Tokens per source",
                numeric=[False, False, True, True, True, True, True, True],
            )
        )
        png = plots.mix_plot({k: v for k, v in per.items() if isinstance(v, dict)}, dpi)
        if png:
            s.add(Figure("mix.png", png, "Tokens available and used per source (log scale)."))
    else:
        s.add(_missing("Per-source token counts (mix manifest `mix.per_source`)"))
    table = mix.get("table")
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        s.add(
            Table(
                ["quantity", "target", "achieved"],
                [
                    [
                        str(r.get("quantity", NR)),
                        fmt_frac(r.get("target"), 2)
                        if "fraction" in str(r.get("quantity"))
                        else fmt_int(r.get("target")),
                        fmt_frac(r.get("achieved"), 2)
                        if "fraction" in str(r.get("quantity"))
                        else fmt_int(r.get("achieved")),
                    ]
                    for r in table
                ],
                caption="Target vs achieved (tokens)",
            )
        )
    notes = mix.get("notes")
    if mix.get("shortfall"):
        s.add(Para(f"Shortfall: {fmt_value(mix.get('shortfall'))}", kind="note"))
    if isinstance(notes, list) and notes:
        s.add(Bullets([str(n) for n in notes]))
    decon = m.get("decontamination")
    info = m.get("decontamination_info") if isinstance(m.get("decontamination_info"), dict) else {}
    ngram = num(info.get("ngram"))
    how = f"{int(ngram)}-word n-gram overlap" if ngram else "n-gram overlap"
    if info.get("skipped"):
        s.add(Para(f"Decontamination skipped: {fmt_value(info['skipped'])}", kind="note"))
    if isinstance(decon, dict):
        if decon:
            used = info.get("texts_used") if isinstance(info.get("texts_used"), dict) else {}
            s.add(
                Table(
                    ["eval task", "item texts used", "training documents dropped"],
                    [[k, fmt_int(used.get(k)), fmt_int(v)] for k, v in decon.items()],
                    caption=f"Decontamination ({how} with eval task texts)",
                )
            )
        elif not info.get("skipped"):
            s.add(Para("Decontamination: no eval task texts were configured, nothing checked.", kind="note"))
    else:
        s.add(_missing("Decontamination counts"))
    by_src = [
        (name, get(info, "dropped_by_source", name), get(m, "near_dedup", "dropped_by_source", name))
        for name in (per or {})
    ]
    if any(a is not None or b is not None for _, a, b in by_src):
        s.add(
            Table(
                ["source", "contaminated docs dropped", "near-duplicates of held-out docs dropped"],
                [[n, fmt_int(a), fmt_int(b)] for n, a, b in by_src],
                caption="Training documents removed by the mix stage",
            )
        )
    return s


def tokenizer_section(data: RunData, dpi: int) -> Section:
    s = Section("tokenizer", "Tokenizer fertility")
    m = data.m("tokenizer")
    if not m:
        return s.add(_missing("Tokenizer manifest"))
    reds = token_reductions(m)
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
                    ", ".join(f"{k}: {fmt_frac(v, 2)}" for k, v in reds.items()) if reds else NR,
                ),
            ]
        )
    )
    fert = m.get("fertility") if isinstance(m.get("fertility"), dict) else {}
    fert = {k: v for k, v in fert.items() if isinstance(v, dict)}
    if not fert:
        return s.add(_missing("Fertility per source (tokenizer manifest `fertility`)"))
    toks = list(dict.fromkeys(t for v in fert.values() for t, x in v.items() if isinstance(x, dict)))
    # Change in token count vs the base tokenizer, for the tokenizers that have one other than the base.
    changed = {
        t
        for v in fert.values()
        for t, x in v.items()
        if t != "base" and isinstance(x, dict) and num(x.get("token_change_vs_base")) is not None
    }
    rows = []
    for src, v in fert.items():
        row = [src, fmt_value(data.source_kind(src))]
        for t in toks:
            row += [fmt_float(get(v, t, "tokens_per_word"), 3), fmt_float(get(v, t, "bytes_per_token"), 3)]
            if t in changed:
                row.append(fmt_frac(get(v, t, "token_change_vs_base"), 2))
        rows.append(row)
    headers = ["source", "kind"]
    for t in toks:
        headers += [f"{t} tokens/word", f"{t} bytes/token"] + (
            [f"{t} tokens vs base"] if t in changed else []
        )
    s.add(
        Table(
            headers,
            rows,
            caption="Tokens per word and bytes per token on held-out text",
            numeric=[False, False] + [True] * (len(headers) - 2),
        )
    )
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
                (
                    "MFU",
                    f"{100 * mfu:.1f}%"
                    if mfu is not None
                    else "not recorded (no peak FLOP/s known for the device)",
                ),
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
        s.add(
            Table(
                ["hyperparameter", "value"],
                [[k, fmt_value(v)] for k, v in flatten(hp).items()],
                numeric=[False, True],
            )
        )
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
        s.add(
            Figure("monitor_bpb.png", png, "Domain and general validation bits-per-byte over training steps.")
        )
        rows = []
        for k in keys:
            xs, ys = plots.series(data.monitor, "step", k)
            change = fmt_pct(100 * (ys[-1] - ys[0]) / abs(ys[0]), 2, signed=True) if ys[0] else NR
            rows.append([k, fmt_float(ys[0]), fmt_float(ys[-1]), fmt_float(min(ys)), change])
        s.add(
            Table(
                ["series", "first", "last", "min", "change"],
                rows,
                caption="Validation bits-per-byte (monitor)",
            )
        )
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
                f"[{fmt_float(r['ci_low'])}, {fmt_float(r['ci_high'])}]"
                if num(r.get("ci_low")) is not None and num(r.get("ci_high")) is not None
                else NR,
                fmt_pct(delta_pct(r), 2, signed=True),
                fmt_p(r.get("p_value")),
                {True: "yes *", False: "no", None: NR}[sig],
                "lower" if lower_is_better(r) else "higher",
            ]
        )
    s.add(
        Table(
            [
                "metric",
                "kind",
                "source / task",
                "base",
                "adapted",
                "delta",
                "delta 95% CI",
                "delta %",
                "p-value",
                "significant",
                "better",
            ],
            trs,
            caption="Base vs adapted (± standard error; CI and p from a paired bootstrap over items)",
            numeric=[False, False, False, True, True, True, True, True, True, False, False],
        )
    )
    s.add(
        Para(
            "* significant: the eval stage's paired bootstrap over items rejected 'no difference' "
            f"(rows without a recorded flag use p < {alpha}).",
            kind="note",
        )
    )
    pcts = [delta_pct(r) for r in rows]
    better = [
        p is not None and p != 0 and (p < 0) == lower_is_better(r) for p, r in zip(pcts, rows, strict=True)
    ]
    sig = [is_significant(r, alpha) for r in rows]
    png = plots.delta_plot([row_label(r) for r in rows], pcts, better, sig, dpi)
    if png:
        s.add(Figure("benchmarks.png", png, "Relative change adapted vs base per metric."))
    models = get(data.results, "models")
    if isinstance(models, dict) and models:
        s.add(kv_table([(k, fmt_value(v)) for k, v in flatten(models).items()], caption="Models evaluated"))
    status = get(data.results, "tasks")
    unavailable: dict[str, Any] = {}
    if isinstance(status, dict):
        unavailable = {
            k: get(v, "error", default=get(v, "status"))
            for k, v in status.items()
            if isinstance(v, dict) and v.get("status") != "ok"
        }
    if not unavailable and isinstance(data.m("eval").get("tasks_unavailable"), dict):
        unavailable = dict(data.m("eval")["tasks_unavailable"])
    if unavailable:
        s.add(
            Para(
                "Configured tasks that could not be evaluated (no number is reported for them):", kind="note"
            ),
            Bullets([f"{k}: {fmt_value(v)}" for k, v in unavailable.items()]),
        )
    check = get(data.results, "crosscheck")
    if isinstance(check, dict) and check:
        s.add(
            Table(
                [
                    "source",
                    "dapt bpb",
                    "lm-eval bpb",
                    "relative difference",
                    "dapt s",
                    "lm-eval s",
                    "speed-up",
                ],
                [
                    [
                        src,
                        fmt_float(get(v, "dapt_bpb")),
                        fmt_float(get(v, "lmeval_bpb")),
                        _small_pct(get(v, "rel_diff")) if num(get(v, "rel_diff")) is not None else NR,
                        fmt_float(get(v, "dapt_seconds"), 2),
                        fmt_float(get(v, "lmeval_seconds"), 2),
                        f"{fmt_float(get(v, 'speedup'), 2)}x" if num(get(v, "speedup")) is not None else NR,
                    ]
                    for src, v in check.items()
                    if isinstance(v, dict)
                ],
                caption="Cross-check: dapt's bits-per-byte vs lm-eval loglikelihood_rolling (adapted model)",
            )
        )
    settings = get(data.results, "settings")
    if isinstance(settings, dict) and settings:
        s.add(
            kv_table([(k, fmt_value(v)) for k, v in flatten(settings).items()], caption="Evaluation settings")
        )
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
            fmt_value(r.get("disk_format")),
            *[fmt_float(r.get(c)) if num(r.get(c)) is not None else fmt_value(r.get(c)) for c in cols],
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
    png = plots.quant_plot(flat, _quant_bpb_key(data, flat), dpi)
    if png:
        s.add(Figure("quantization.png", png, "Size and bits-per-byte of the adapted model per precision."))
    return s


def _g3(v: Any) -> str:
    f = num(v)
    return NR if f is None else f"{f:.3g}"


_MEMORY_ROWS = [
    ("model_states.params", "parameters"),
    ("model_states.grads", "gradients"),
    ("model_states.optimizer", "optimizer state"),
    ("model_states.total", "model states total"),
    ("activations", "activations"),
    ("logits", "logits and loss"),
    ("buffers.unsharded_params", "unsharded parameters in flight"),
    ("buffers.unsharded_grads", "unsharded gradients in flight"),
    ("buffers.ddp_buckets", "DDP gradient buckets"),
    ("optimizer_step_temp", "optimizer step temporaries"),
    ("peak_forward_backward", "peak: forward/backward"),
    ("peak_optimizer_step", "peak: optimizer step"),
    ("total", "predicted peak per worker"),
    ("device_mem", "device memory"),
]
_COMPUTE_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("tokens", "tokens", fmt_int),
    ("flops.total", "training FLOPs", _g3),
    ("flops_per_token", "FLOPs per token", _g3),
    ("pflops_days", "petaFLOP/s-days", _g3),
    ("mfu", "MFU", fmt_frac),
    ("mfu_source", "MFU source", fmt_value),
    ("gpus", "GPUs", fmt_int),
    ("peak_flops_per_gpu", "peak FLOP/s per GPU", _g3),
    ("gpu_hours", "GPU-hours", _g3),
    ("wall_clock_hours", "wall-clock hours", _g3),
    ("cost", "cost", lambda v: f"{num(v):,.2f}" if num(v) is not None else NR),
    ("chinchilla.tokens_per_param", "tokens per parameter", _g3),
]


def plan_section(data: RunData) -> Section:
    s = Section("plan", "Memory and compute: plan vs measured")
    train = data.m("train")
    plan = train.get("plan")
    rows = plan_rows(data)
    if rows:
        table = []
        for r in rows:
            (pv, pt), (mv, mt) = r["planned"], r["measured"]
            ratio = f"{mv / pv:.2f}" if r["comparable"] else "not comparable"
            table.append([r["label"], pt, mt, ratio, r["note"]])
        s.add(
            Table(
                ["quantity", "planned", "measured", "measured / planned", "note"],
                table,
                caption="The planner's prediction next to what the run measured",
                numeric=[False, True, True, True, False],
            )
        )
    else:
        s.add(Para("No quantity was recorded by both the planner and the trainer.", kind="note"))
    if not isinstance(plan, dict) or not plan:
        return s.add(_missing("Plan (train manifest `plan`)"))
    shown: set[str] = set()
    mem = plan.get("memory")
    if isinstance(mem, dict):
        mflat = flatten(mem)
        mrows = [[label, fmt_bytes(mflat[k])] for k, label in _MEMORY_ROWS if num(mflat.get(k)) is not None]
        if "fits" in mem:
            mrows.append(["fits", fmt_value(mem.get("fits"))])
        if mrows:
            s.add(
                Table(["predicted memory (per worker)", "bytes"], mrows, caption="Predicted memory breakdown")
            )
            shown.add("memory")
    comp = plan.get("compute")
    if isinstance(comp, dict):
        cflat = flatten(comp)
        crows = [[label, f(cflat[k])] for k, label, f in _COMPUTE_ROWS if cflat.get(k) is not None]
        if crows:
            s.add(Table(["predicted compute", "value"], crows, caption="Predicted compute"))
            shown.add("compute")
    strategies = plan.get("strategies")
    if isinstance(strategies, list) and strategies and all(isinstance(x, dict) for x in strategies):
        keys = list(dict.fromkeys(k for x in strategies for k in x))
        s.add(
            Table(
                keys,
                [
                    [fmt_bytes(x.get(k)) if k == "total" else fmt_value(x.get(k)) for k in keys]
                    for x in strategies
                ],
                caption="Alternatives the planner evaluated",
                numeric=[k == "total" for k in keys],
            )
        )
        shown.add("strategies")
    if isinstance(plan.get("table"), str) and plan["table"].strip():
        s.add(Pre(plan["table"], caption="The planner's own summary (as `dapt plan` prints it)"))
        shown.add("table")
    rest = flatten({k: v for k, v in plan.items() if k not in shown})
    rest_rows = [[k, fmt_value(v)] for k, v in rest.items() if not isinstance(v, list) or len(v) <= 8]
    if rest_rows:
        s.add(
            Table(
                ["other plan entries", "value"],
                rest_rows[:60],
                caption="The rest of the plan recorded by the train stage",
                numeric=[False, True],
            )
        )
        if len(rest_rows) > 60:
            s.add(Para(f"({len(rest_rows) - 60} more plan entries in the train manifest.)", kind="note"))
    return s


def significance_level(data: RunData, rcfg: Any) -> float:
    """The eval stage's alpha when it recorded one (its ``significant`` flags use it), else the config's."""
    return num(get(data.results, "settings", "alpha")) or rcfg.significance_level


def build(data: RunData, rcfg: Any) -> tuple[list[Section], list[str]]:
    """All sections in :data:`SECTION_IDS` order, and the conclusions."""
    alpha = significance_level(data, rcfg)
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
            Para(
                "Every sentence above is computed from the recorded numbers; none is written by hand.",
                kind="note",
            ),
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
