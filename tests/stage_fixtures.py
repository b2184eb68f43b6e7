"""Small stage functions for testing the runner itself (the real stages have their own tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dapt.pipeline.stages import StageContext

CALLS: list[str] = []


def count_lines(ctx: StageContext) -> dict:
    """A 'clean'-like stage: counts lines of the source files, writes one output file."""
    CALLS.append(ctx.name)
    n = sum(len(Path(f).read_text().splitlines()) for s in ctx.cfg.sources for f in s.files())
    (ctx.out_dir / "lines.txt").write_text(f"{n}\n")
    return {"outputs": {"lines": "lines.txt"}, "counts": {"lines": n}}


def read_upstream(ctx: StageContext) -> dict:
    """A downstream stage: reads the upstream output."""
    CALLS.append(ctx.name)
    up = ctx.upstream_dir("clean")
    n = int((up / "lines.txt").read_text())
    (ctx.out_dir / "double.txt").write_text(f"{2 * n}\n")
    return {"counts": {"double": 2 * n}}


def slow_writer(ctx: StageContext) -> dict:
    """Writes half its output, signals, then sleeps so the test can kill the process mid-stage."""
    (ctx.out_dir / "part-0.txt").write_text("half\n")
    Path(os.environ["DAPT_TEST_SIGNAL"]).write_text("started\n")
    time.sleep(float(os.environ.get("DAPT_TEST_SLEEP", "60")))
    (ctx.out_dir / "part-1.txt").write_text("rest\n")
    return {"counts": {"parts": 2}}


def fail_on_input(ctx: StageContext) -> dict:
    """A stage that fails part-way on bad input, after writing some output."""
    from dapt.pipeline.errors import InputError

    (ctx.out_dir / "part-0.txt").write_text("half\n")
    raise InputError("fin.jsonl:3: no finished output of what this stage reads")
