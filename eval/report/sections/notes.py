"""Missing inputs: what the report looked for and did not find (only when something was missing)."""

from __future__ import annotations

from dapt.eval.report.doc import Bullets, Para, Section
from dapt.eval.report.sections.base import Inputs

ID, TITLE = "notes", "Missing inputs"


def build(inp: Inputs) -> Section | None:
    if not inp.data.problems:
        return None
    return Section(ID, TITLE).add(
        Para("The report was rendered, but these inputs were missing or unreadable:", kind="note"),
        Bullets(list(dict.fromkeys(inp.data.problems))),
    )
