"""What the clean stage shows on the console: its progress and real warnings; the detail goes to the
stage log (``<run_dir>/logs/clean.log``).

Ray Data logs to its own ``ray.data`` logger, whose console handler prints INFO and up: a line per
Ray Data job ("Dataset ... execution finished in 0.10 seconds", a dozen per run for the dedup
shuffles) and, because the stage turns Ray Data's progress bars off, a WARNING "Progress bars disabled.
To enable, set ...". While the stage runs (:func:`ray_data_logs`):

- every ``ray.data`` record at INFO and up is also written to the stage log;
- Ray Data's console handler prints only warnings and errors (:class:`ConsoleFilter`), minus the
  notices about its own progress display, which are not about the data. Every other warning, from
  Ray Data or elsewhere, still reaches the console.

Why Ray Data's own bars stay off: each of those dozen short jobs would draw its bars, and without a
terminal Ray Data logs progress lines instead. The stage draws one bar per phase over its shards
(:class:`Progress`), on stderr when that is a terminal, and prints its own warnings there (:func:`warn`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dapt.pipeline.progress import StepProgress

PROGRESS_NOTICES = "ray.data._internal.progress"
"""The logger of Ray Data's notices about its progress display (Ray 2.60: the package ``__init__``)."""


class ConsoleFilter(logging.Filter):
    """What Ray Data's console handler still prints during the stage: warnings and errors, except its
    notices about its progress display (below ERROR)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        return record.levelno >= logging.ERROR or record.name != PROGRESS_NOTICES


class ToStageLog(logging.Handler):
    """Hands records to the stage logger's own handlers (the stage log file), whatever their logger."""

    def __init__(self, stage_log: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self._stage_log = stage_log

    def emit(self, record: logging.LogRecord) -> None:
        for h in self._stage_log.handlers:
            if record.levelno >= h.level:
                h.handle(record)


def _consoles(logger: logging.Logger) -> list[logging.Handler]:
    """A logger's console handlers: stream handlers that are not files (Ray's ``PlainRayHandler``)."""
    return [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


@contextmanager
def ray_data_logs(stage_log: logging.Logger) -> Iterator[None]:
    """Ray Data's records into the stage log, only its real warnings on the console (module
    docstring); undone on exit, so nothing outlives the stage in a long-lived process."""
    import ray.data  # noqa: F401 - configures the ``ray.data`` logger and its console handler

    rd = logging.getLogger("ray.data")
    to_log = ToStageLog(stage_log)
    console = ConsoleFilter()
    consoles = _consoles(rd)
    rd.addHandler(to_log)
    for h in consoles:
        h.addFilter(console)
    try:
        yield
    finally:
        rd.removeHandler(to_log)
        for h in consoles:
            h.removeFilter(console)


def warn(stage_log: logging.Logger, message: str) -> None:
    """A warning the user must see (a file left out): in the stage log and, as one line, on stderr."""
    stage_log.warning("%s", message)
    print(f"clean: warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar over shards on stderr when it is a terminal, and the step's progress record for
    ``dapt status --watch`` (pipeline/progress.py) when given the run folder."""

    def __init__(self, total: int, desc: str, run_dir: Any = None) -> None:
        self._bar: Any = None
        self._record = StepProgress(run_dir, "clean", desc.removeprefix("clean: "), total, "shards")
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="shard", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self._record.update(n)
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
