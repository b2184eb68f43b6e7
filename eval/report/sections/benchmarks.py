"""Benchmarks: every row of the eval stage's results, base vs adapted with significance; tasks that could
not run; the bits-per-byte cross-check against lm-eval; the evaluation settings."""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.doc import (
    NR,
    Bullets,
    Figure,
    Para,
    Section,
    Table,
    flatten,
    fmt_float,
    fmt_p,
    fmt_pct,
    fmt_value,
    get,
    kv_table,
    num,
)
from dapt.eval.report.results import (
    Sig,
    adjusted,
    delta_pct,
    lower_is_better,
    row_label,
    row_target,
    small_pct,
)
from dapt.eval.report.sections.base import Inputs, missing

ID, TITLE = "benchmarks", "Benchmarks: base vs adapted"


def _pm(v: Any, se: Any) -> str:
    return fmt_float(v) + (f" ± {fmt_float(se)}" if num(se) is not None else "")


def _comparison(rows: list[dict[str, Any]], sigs: list[Sig]) -> Table:
    trs = []
    for r, s in zip(rows, sigs, strict=True):
        sig = s.significant
        trs.append(
            [
                row_label(r),
                fmt_value(r.get("kind")),
                row_target(r),
                _pm(r.get("base"), r.get("base_stderr")),
                _pm(r.get("adapted"), r.get("adapted_stderr")),
                fmt_float(r.get("delta")),
                f"[{fmt_float(r['ci_low'])}, {fmt_float(r['ci_high'])}]"
                if num(r.get("ci_low")) is not None and num(r.get("ci_high")) is not None
                else NR,
                fmt_pct(delta_pct(r), 2, signed=True),
                fmt_p(s.p),
                fmt_p(s.p_adjusted) + (f" ({s.family_size})" if s.p_adjusted is not None else ""),
                {True: "yes *", False: "no", None: NR}[sig],
                "lower" if lower_is_better(r) else "higher",
            ]
        )
    return Table(
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
            "Holm p (tests)",
            "significant",
            "better",
        ],
        trs,
        caption=(
            "Base vs adapted (± standard error; CI and p from a paired bootstrap over items, shifted null; "
            "Holm p adjusted within the row's family)"
        ),
        numeric=[False, False, False, True, True, True, True, True, True, True, False, False],
    )


def unavailable_tasks(results: Any, eval_manifest: dict[str, Any]) -> dict[str, Any]:
    """Configured tasks that could not be evaluated, with the reason the eval stage recorded."""
    status = get(results, "tasks")
    out: dict[str, Any] = {}
    if isinstance(status, dict):
        out = {
            k: get(v, "error", default=get(v, "status"))
            for k, v in status.items()
            if isinstance(v, dict) and v.get("status") != "ok"
        }
    if not out and isinstance(eval_manifest.get("tasks_unavailable"), dict):
        out = dict(eval_manifest["tasks_unavailable"])
    return out


def _crosscheck(check: dict[str, Any]) -> Table:
    def speedup(v: Any) -> str:
        return f"{fmt_float(get(v, 'speedup'), 2)}x" if num(get(v, "speedup")) is not None else NR

    return Table(
        ["source", "dapt bpb", "lm-eval bpb", "relative difference", "dapt s", "lm-eval s", "speed-up"],
        [
            [
                src,
                fmt_float(get(v, "dapt_bpb")),
                fmt_float(get(v, "lmeval_bpb")),
                small_pct(get(v, "rel_diff")) if num(get(v, "rel_diff")) is not None else NR,
                fmt_float(get(v, "dapt_seconds"), 2),
                fmt_float(get(v, "lmeval_seconds"), 2),
                speedup(v),
            ]
            for src, v in check.items()
            if isinstance(v, dict)
        ],
        caption="Cross-check: dapt's bits-per-byte vs lm-eval loglikelihood_rolling (adapted model)",
    )


def build(inp: Inputs) -> Section:
    data, alpha = inp.data, inp.alpha
    s = Section(ID, TITLE)
    rows = data.metric_rows()
    if not rows:
        return s.add(missing("Benchmark results (eval results.json)"))
    sigs = adjusted(data, rows, alpha)
    s.add(
        _comparison(rows, sigs),
        Para(
            f"* significant: the Holm-adjusted p-value is below {alpha}. Families (the rows behind one "
            "conclusion): the per-source bits-per-byte rows of one source kind, each pooled row alone, all "
            "task metrics together; '(tests)' is the family's size. p-value is the single-row paired "
            "bootstrap p (shifted null, two-sided).",
            kind="note",
        ),
    )
    pcts = [delta_pct(r) for r in rows]
    better = [
        p is not None and p != 0 and (p < 0) == lower_is_better(r) for p, r in zip(pcts, rows, strict=True)
    ]
    sig = [x.significant for x in sigs]
    png = plots.delta_plot([row_label(r) for r in rows], pcts, better, sig, inp.dpi)
    if png:
        s.add(Figure("benchmarks.png", png, "Relative change adapted vs base per metric."))
    models = get(data.results, "models")
    if isinstance(models, dict) and models:
        s.add(kv_table([(k, fmt_value(v)) for k, v in flatten(models).items()], caption="Models evaluated"))
    unavailable = unavailable_tasks(data.results, data.m("eval"))
    if unavailable:
        s.add(
            Para(
                "Configured tasks that could not be evaluated (no number is reported for them):", kind="note"
            ),
            Bullets([f"{k}: {fmt_value(v)}" for k, v in unavailable.items()]),
        )
    check = get(data.results, "crosscheck")
    if isinstance(check, dict) and check:
        s.add(_crosscheck(check))
    settings = get(data.results, "settings")
    if isinstance(settings, dict) and settings:
        s.add(
            kv_table([(k, fmt_value(v)) for k, v in flatten(settings).items()], caption="Evaluation settings")
        )
    return s
