"""Conclusions: sentences computed from the recorded numbers (deltas, significance flags, ratios).

They come in a fixed order, so two runs' reports can be compared line by line, and no sentence can claim
more than the data shows. The list is computed before any section (the summary shows the headline) and
also goes into the stage's manifest and the model card.

Significance is family-wise (``results.adjusted``): a conclusion drawn over several sources ("general
ability was lost" over five general sources) uses Holm-adjusted p-values over exactly those sources, so
one source that is significant at 0.05 by chance (about a 23% chance with five under the null) does not
make a loss. Sentences name both the raw and the adjusted p.
"""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import NR, Bullets, Para, Section, fmt_count, fmt_float, fmt_int, get, num
from dapt.eval.report.results import (
    Sig,
    adjusted,
    delta_pct,
    kind_rows,
    lower_is_better,
    redundant,
    row_label,
    row_target,
    sig_word,
    small_pct,
)
from dapt.eval.report.sections.base import Inputs, missing
from dapt.eval.report.sections.funnel import clean_totals
from dapt.eval.report.sections.mix import decontamination_tasks
from dapt.eval.report.sections.plan import plan_rows
from dapt.eval.report.sections.quantization import quant_bpb_key, quant_columns
from dapt.eval.report.sections.tokenizer import token_reductions

ID, TITLE = "conclusions", "Conclusions"


def _kind_summary(data: RunData, rows: list[dict[str, Any]], kind: str, sig: dict[int, Sig]) -> str | None:
    """``domain bits-per-byte -12.3% (significant)``: the pooled row of the kind when the eval stage
    recorded one (all its held-out bytes together, as BloombergGPT reports), else the single source,
    else the mean over the sources (said so, with how many are significant after Holm)."""
    pooled = [(r, delta_pct(r)) for r in kind_rows(data, rows, kind, pooled=True)]
    pooled = [(r, p) for r, p in pooled if p is not None]
    per = [(r, delta_pct(r)) for r in kind_rows(data, rows, kind, pooled=False)]
    per = [(r, p) for r, p in per if p is not None]
    if pooled:
        r, p = pooled[0]
        n = len(r.get("sources") or []) or len(per)
        over = f"; pooled over {n} sources" if n > 1 else ""
        return f"{kind} bits-per-byte {p:+.1f}% ({sig_word(sig[id(r)].significant)}{over})"
    if not per:
        return None
    if len(per) == 1:
        r, p = per[0]
        return f"{kind} bits-per-byte {p:+.1f}% ({sig_word(sig[id(r)].significant)})"
    mean = sum(p for _, p in per) / len(per)
    n_sig = sum(1 for r, _ in per if sig[id(r)].significant)
    return (
        f"{kind} bits-per-byte {mean:+.1f}% (mean over {len(per)} sources; significant on {n_sig} "
        "after Holm correction)"
    )


def _family_note(rows: list[dict[str, Any]], sig: dict[int, Sig], sep: str = " (") -> str:
    """`` (Holm-adjusted over the 5 sources)`` when several tests stand behind one conclusion
    (``sep="; "``: the same inside parentheses already open)."""
    n = max((sig[id(r)].family_size for r in rows), default=0)
    if n < 2:
        return ""
    return f"{sep}Holm-adjusted over the {n} sources" + (")" if sep == " (" else "")


def _raw_only(rows: list[dict[str, Any]], sig: dict[int, Sig], alpha: float) -> list[dict[str, Any]]:
    """Rows significant on their own p but not after the correction: named, so the reader sees them."""
    out = []
    for r in rows:
        s = sig[id(r)]
        if s.p is not None and s.p < alpha and s.significant is False:
            out.append(r)
    return out


def _headline(data: RunData, rows: list[dict[str, Any]], alpha: float, sig: dict[int, Sig]) -> list[str]:
    """The user's question: better on the domain? how much general ability lost?"""
    out: list[str] = []
    parts = [s for s in (_kind_summary(data, rows, k, sig) for k in ("domain", "general")) if s]
    if parts:
        out.append("Adapted vs base: " + ", ".join(parts) + ".")
    dom = kind_rows(data, rows, "domain", pooled=False) or kind_rows(data, rows, "domain", pooled=True)
    gen = kind_rows(data, rows, "general", pooled=False) or kind_rows(data, rows, "general", pooled=True)
    dom = [r for r in dom if delta_pct(r) is not None]
    gen = [r for r in gen if delta_pct(r) is not None]
    if dom:
        better = [r for r in dom if (delta_pct(r) or 0) < 0 and sig[id(r)].significant]
        worse = [r for r in dom if (delta_pct(r) or 0) > 0 and sig[id(r)].significant]
        note = _family_note(dom, sig)
        if better and not worse:
            out.append(
                f"The adapted model is significantly better than the base on the domain held-out text "
                f"({len(better)} of {len(dom)} domain sources{_family_note(dom, sig, '; ')})."
            )
        elif worse:
            out.append(
                f"The adapted model is significantly WORSE than the base on {len(worse)} of {len(dom)} "
                f"domain sources{note}: adaptation did not work as intended."
            )
        else:
            out.append(
                "No significant difference between adapted and base on the domain held-out text"
                + _not_after_holm(dom, sig, alpha)
                + "."
            )
    if gen:
        worse = [r for r in gen if (delta_pct(r) or 0) > 0 and sig[id(r)].significant]
        if worse:
            worst = max(worse, key=lambda r: delta_pct(r) or 0)
            out.append(
                f"General ability was lost: general bits-per-byte rose significantly on {len(worse)} of "
                f"{len(gen)} general sources "
                f"(worst: {row_target(worst)} {delta_pct(worst):+.1f}%{_family_note(gen, sig, '; ')})."
            )
        else:
            rose = [r for r in gen if (delta_pct(r) or 0) > 0]
            out.append(
                "No significant loss on general held-out text (bits-per-byte did not rise significantly"
                + _not_after_holm(rose, sig, alpha)
                + ")."
            )
    return out


def _not_after_holm(rows: list[dict[str, Any]], sig: dict[int, Sig], alpha: float) -> str:
    """``; raw p < 0.05 on wiki (p=0.030), not after Holm over 5 sources (adjusted p=0.150)``, or ""."""
    raw = _raw_only(rows, sig, alpha)
    if not raw:
        return ""
    n = max(sig[id(r)].family_size for r in raw)
    names = ", ".join(f"{row_target(r)} ({sig[id(r)].p_text()})" for r in raw)
    return f"; raw p < {alpha:g} on {names}, not significant after Holm correction over {n} sources"


def _per_metric(rows: list[dict[str, Any]], sig: dict[int, Sig]) -> list[str]:
    """One sentence per row with both values (a pooled row over a single source repeats that source's),
    its family-wise significance and both p-values."""
    out: list[str] = []
    for r in rows:
        if redundant(r):
            continue
        base, adapted = num(r.get("base")), num(r.get("adapted"))
        if base is None or adapted is None:
            continue
        p = delta_pct(r)
        direction = ""
        if adapted != base:
            direction = " better" if (adapted < base) == lower_is_better(r) else " worse"
        s = sig[id(r)]
        pv = f", {s.p_text()}" if s.p is not None else ""
        pct = f" ({p:+.1f}%)" if p is not None else ""
        out.append(
            f"{row_label(r)}: {fmt_float(base)} -> {fmt_float(adapted)}{pct}{',' + direction if direction else ''} "
            f"({sig_word(s.significant)}{pv})."
        )
    return out


def _eval_status(data: RunData) -> list[str]:
    out: list[str] = []
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
                    f"Cross-check on {src}: dapt's bits-per-byte is within {small_pct(rel)} of lm-eval's "
                    f"loglikelihood_rolling and {speed:.1f}x {'faster' if speed >= 1 else 'slower'}."
                )
    return out


def _training(data: RunData) -> list[str]:
    out: list[str] = []
    train = data.m("train")
    xs, ys = plots.series(data.metrics, "step", "loss")
    if len(ys) >= 2:
        steps = train.get("steps") or xs[-1]
        tokens = train.get("tokens")
        extra = f" ({fmt_count(tokens)} tokens)" if num(tokens) is not None else ""
        out.append(f"Training loss {ys[0]:.3f} -> {ys[-1]:.3f} over {fmt_int(steps)} steps{extra}.")
    for key in plots.monitor_keys(data.monitor):
        mx, my = plots.series(data.monitor, "step", key)
        if len(my) >= 2 and my[0] != 0:
            out.append(
                f"During training, validation {key} went {my[0]:.4f} -> {my[-1]:.4f} "
                f"({100 * (my[-1] - my[0]) / abs(my[0]):+.1f}%) between steps {fmt_int(mx[0])} and {fmt_int(mx[-1])}."
            )
    if train.get("early_stopped") is True:
        out.append(
            f"Training stopped early at step {fmt_int(train.get('steps'))} of {fmt_int(train.get('planned_steps'))} "
            "planned: the forgetting monitor's general bits-per-byte exceeded the configured regression limit."
        )
    return out


def _data(data: RunData) -> list[str]:
    """Cleaning, mix, decontamination, tokenizer."""
    out: list[str] = []
    totals = clean_totals(data)
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
    return out


def _quantization(data: RunData) -> list[str]:
    out: list[str] = []
    q, _ = quant_columns(data.quantization_rows())
    ref = next((r for r in q if str(r.get("precision")) in ("fp32", "float32")), q[0] if q else None)
    bkey = quant_bpb_key(data, q)
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
    return out


def _plan(data: RunData) -> list[str]:
    out: list[str] = []
    for r in plan_rows(data):
        (pv, pt), (mv, mt) = r["planned"], r["measured"]
        if r["comparable"] and not (r["label"] == "Training tokens" and pv == mv):
            out.append(f"{r['label']}: measured {mt} vs planned {pt} ({mv / pv:.2f}x).")
    return out


def conclusions(data: RunData, alpha: float) -> list[str]:
    rows = data.metric_rows()
    sig = {id(r): s for r, s in zip(rows, adjusted(data, rows, alpha), strict=True)}
    return [
        *_headline(data, rows, alpha, sig),
        *_per_metric(rows, sig),
        *_eval_status(data),
        *_training(data),
        *_data(data),
        *_quantization(data),
        *_plan(data),
    ]


def build(inp: Inputs) -> Section:
    concl = inp.conclusions
    return Section(ID, TITLE).add(
        Bullets(concl) if concl else missing("Conclusions (no comparable numbers were recorded)"),
        Para(
            "Every sentence above is computed from the recorded numbers; none is written by hand.",
            kind="note",
        ),
    )
