"""Mix ratio from data: the proxy sweep behind an ``auto`` domain fraction (only when there was one)."""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.doc import (
    NR,
    Figure,
    Para,
    Section,
    Table,
    fmt_float,
    fmt_frac,
    fmt_int,
    get,
    kv_table,
    num,
)
from dapt.eval.report.sections.base import Inputs

ID, TITLE = "sweep", "Mix ratio: the proxy sweep"


def measured_at_recommendation(inp: Inputs) -> dict[str, float] | None:
    """The trained run's last validation bits-per-byte per side (its forgetting monitor scores the same
    windows the sweep's trials were scored on), or None without a monitor."""
    rows = [r for r in inp.data.monitor if isinstance(r, dict)]
    if not rows:
        return None
    last = rows[-1]
    return {side: num(last.get(f"{side}_bpb")) for side in ("domain", "general")}


def build(inp: Inputs) -> Section | None:
    sweep = inp.data.m("sweep")
    if not sweep:
        return None
    rec: dict[str, Any] = sweep.get("recommendation") or {}
    measured = measured_at_recommendation(inp)
    blocks: list[Any] = [
        Para(
            f"The domain fraction of this run was chosen by `dapt sweep`: {fmt_int(len(sweep.get('trials') or []))} "
            "short proxy runs of the base model over domain fractions and token budgets, scored on the "
            "validation split, a law fitted per side, and the fraction with the largest predicted domain gain "
            f"whose predicted general regression stays under the limit. Recommendation: {rec.get('reason', NR)}."
        )
    ]
    trained_tokens = num(get(inp.data.m("train"), "tokens"))

    def pred(side: str) -> str:
        value, ci = num(rec.get(f"predicted_{side}_bpb")), rec.get(f"predicted_{side}_bpb_interval")
        text = fmt_float(value, 4)
        return text + (f" [{fmt_float(ci[0], 4)}, {fmt_float(ci[1], 4)}]" if ci else "")

    def error(side: str) -> str:
        value = num(rec.get(f"predicted_{side}_bpb"))
        got = (measured or {}).get(side)
        if value is None or got is None:
            return NR
        return f"{fmt_float(got, 4)} ({100 * (got - value) / value:+.2f}% vs predicted)"

    if (
        trained_tokens
        and num(rec.get("tokens"))
        and abs(trained_tokens - num(rec["tokens"])) > 0.05 * trained_tokens
    ):
        blocks.append(
            Para(
                f"This run trained {fmt_int(trained_tokens)} tokens, not the {fmt_int(num(rec['tokens']))} the "
                "recommendation predicts for: measured and predicted are not at the same budget.",
                kind="note",
            )
        )
    blocks.append(
        kv_table(
            [
                ("Recommended domain fraction", fmt_frac(num(rec.get("domain_fraction")), 1)),
                ("At tokens", fmt_int(num(rec.get("tokens")))),
                ("Feasible", "yes" if rec.get("feasible") else "no"),
                ("Binding constraints", ", ".join(rec.get("binding") or []) or "none"),
                ("Predicted domain bpb (interval)", pred("domain")),
                ("Predicted general bpb (interval)", pred("general")),
                ("Measured domain bpb, this run's last monitor row", error("domain")),
                ("Measured general bpb, this run's last monitor row", error("general")),
                ("Tokens this run trained", fmt_int(trained_tokens)),
                (
                    "Sweep cost (trial tokens / target tokens)",
                    fmt_float(num(get(sweep, "cost", "fraction_of_target_run")), 3),
                ),
            ]
        )
    )
    if isinstance(sweep.get("compute_budget"), dict):
        blocks.extend(budget_blocks(sweep["compute_budget"], rec))
    rows = []
    for side in ("domain", "general"):
        fit, loo = get(sweep, "fit", side) or {}, get(sweep, "loo", side) or {}
        rows.append(
            [
                side,
                str(fit.get("form", NR)),
                fmt_float(num(fit.get("rel_rmse")), 4),
                fmt_frac(num(loo.get("mean_abs_rel_error")), 2),
                fmt_frac(num(loo.get("max_abs_rel_error")), 2),
            ]
        )
    blocks.append(
        Table(
            ["side", "law", "relative RMSE", "leave-one-out mean |error|", "leave-one-out max |error|"],
            rows,
            caption="Fits: leave-one-out refits predict each proxy point from the others.",
        )
    )
    scaling = sweep.get("scaling")
    if isinstance(scaling, dict):
        blocks.extend(scaling_blocks(scaling))
    png = plots.sweep_plot(sweep, measured, inp.dpi)
    if png:
        blocks.append(
            Figure(
                "sweep.png",
                png,
                "Proxy runs (points) and the fitted law (lines) per budget; dashed: the target budget.",
            )
        )
    return Section(ID, TITLE, blocks)


BUDGET_ROWS = 8
"""Candidate budgets shown (evenly spaced over the grid, the chosen one always among them)."""


def budget_blocks(budget: dict[str, Any], rec: dict[str, Any]) -> list[Any]:
    """What the compute budget buys, how much of it the recommendation spends, and what each budget on
    the way would have given: the table shows where more tokens stop paying."""
    given = ", ".join(f"{k.replace('_', ' ')} {num(v):.4g}" for k, v in (budget.get("given") or {}).items())
    rate = ""
    if num(budget.get("gpu_hours")) is not None and num(budget.get("mfu")) is not None:
        rate = (
            f" ({num(budget['gpu_hours']):.4g} GPU-hours at {fmt_frac(num(budget['mfu']), 0)} MFU, "
            f"{budget.get('mfu_source') or 'assumed'})"
        )
    text = (
        f"Compute budget: {given or NR}{rate}, {num(budget.get('flops')) or 0:.3g} FLOPs at "
        f"{fmt_int(num(budget.get('flops_per_token')))} FLOPs per token: at most "
        f"{fmt_int(num(budget.get('max_tokens')))} tokens. The recommendation trains "
        f"{fmt_int(num(budget.get('recommended_tokens')))} of them "
        f"({fmt_frac(num(budget.get('fraction_spent')), 1)} of the budget)."
    )
    cands = [c for c in rec.get("candidates") or [] if isinstance(c, dict)]
    if len(cands) > BUDGET_ROWS:
        step = (len(cands) - 1) / (BUDGET_ROWS - 1)
        keep = {round(i * step) for i in range(BUDGET_ROWS)}
        keep |= {i for i, c in enumerate(cands) if c.get("tokens") == rec.get("tokens")}
        cands = [c for i, c in enumerate(cands) if i in keep]
    rows = [
        [
            fmt_int(num(c.get("tokens"))) + (" (chosen)" if c.get("tokens") == rec.get("tokens") else ""),
            fmt_frac(num(c.get("best_fraction")), 1),
            fmt_frac(num(c.get("best_gain")), 2),
            fmt_frac(num(c.get("best_regression")), 2),
            fmt_frac(num(c.get("max_fraction_by_repetition")), 1),
        ]
        for c in cands
    ]
    return [
        Para(text),
        Table(
            [
                "tokens",
                "best fraction",
                "predicted domain gain",
                "predicted general change",
                "largest fraction the repetition cap allows",
            ],
            rows,
            caption="Token budgets up to the compute budget, each at its best feasible fraction.",
        ),
    ]


def scaling_blocks(scaling: dict[str, Any]) -> list[Any]:
    """Chinchilla approach 3 on the run's own grid next to the published fits: exponents and the
    compute-optimal split at the same compute (E, A, B depend on the loss unit and data)."""
    rows = []
    for label, entry in [
        *((f"this run, {side} bpb", scaling.get(side) or {}) for side in ("domain", "general")),
        *((str(get(v, "fit", "label") or k), v) for k, v in (scaling.get("published") or {}).items()),
    ]:
        fit, opt = entry.get("fit") or {}, entry.get("compute_optimal") or {}
        rows.append(
            [
                label,
                fmt_float(num(fit.get("alpha")), 3),
                fmt_float(num(fit.get("beta")), 3),
                fmt_int(num(opt.get("params"))),
                fmt_int(num(opt.get("tokens"))),
                fmt_float(num(opt.get("tokens_per_param")), 1),
            ]
        )
    return [
        Para(
            f"Scaling fit (Chinchilla approach 3) from {fmt_int(len(scaling.get('points') or []))} runs of "
            f"{fmt_int(len({p.get('params') for p in scaling.get('points') or []}))} sizes, and the compute-optimal "
            f"size and tokens at {fmt_float(num(scaling.get('flops')), 3)} FLOPs (this run's model has "
            f"{fmt_int(num(scaling.get('model_params')))} parameters)."
        ),
        Table(
            ["fit", "alpha", "beta", "optimal parameters", "optimal tokens", "tokens per parameter"],
            rows,
            caption="Published fits are in nats per token on web text: compare exponents and the split.",
        ),
    ]
