"""The report's sections, one module per section, and the ordered registry that builds them.

Each module has ``ID``, ``TITLE`` and ``build(Inputs) -> Section | None`` and reads only recorded values
(:class:`~dapt.eval.report.collect.RunData`). :data:`REGISTRY` is the order of the report; adding a
section is one module and one line here. The conclusions are computed first, from the same numbers,
because the summary shows the headline one.
"""

from __future__ import annotations

from typing import Any

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import Section
from dapt.eval.report.results import significance_level
from dapt.eval.report.sections import (
    benchmarks,
    conclusions,
    funnel,
    mix,
    notes,
    plan,
    quantization,
    summary,
    sweep,
    tokenizer,
    training,
)
from dapt.eval.report.sections.base import Builder, Inputs

REGISTRY: tuple[tuple[str, Builder], ...] = tuple(
    (m.ID, m.build)
    for m in (
        summary,
        funnel,
        mix,
        sweep,
        tokenizer,
        training,
        benchmarks,
        quantization,
        plan,
        conclusions,
        notes,
    )
)
"""Every section in report order; all but ``notes`` (only when inputs were missing) and ``sweep`` (only
when the mix fraction came from `dapt sweep`) always render."""

SECTION_IDS = [sid for sid, _ in REGISTRY if sid not in (notes.ID, sweep.ID)]
"""Every report has all of these, in this order (a section with no data says so)."""


def build(data: RunData, rcfg: Any) -> tuple[list[Section], list[str]]:
    """All sections in :data:`REGISTRY` order, and the conclusions."""
    alpha = significance_level(data, rcfg)
    inp = Inputs(
        data=data,
        alpha=alpha,
        dpi=rcfg.plot_dpi,
        max_points=rcfg.max_curve_points,
        conclusions=conclusions.conclusions(data, alpha),
    )
    sections = [s for _, build_section in REGISTRY if (s := build_section(inp)) is not None]
    return sections, inp.conclusions


__all__ = ["REGISTRY", "SECTION_IDS", "Inputs", "build"]
