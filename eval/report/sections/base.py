"""What every section module gets and returns: :class:`Inputs` in, a :class:`~dapt.eval.report.doc.Section`
out (or None when the section has nothing to say at all, like the notes of a complete run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import NR, Para, Section


@dataclass(frozen=True)
class Inputs:
    data: RunData
    alpha: float
    """Significance level for rows with a p-value but no flag (see results.significance_level)."""
    dpi: int = 100
    max_points: int = 2000
    conclusions: list[str] = field(default_factory=list)
    """Computed before any section (the summary shows the headline one)."""


Builder = Callable[[Inputs], Section | None]


def missing(what: str) -> Para:
    """The note a section shows in place of a value no stage recorded."""
    return Para(f"{what}: {NR}.", kind="note")
