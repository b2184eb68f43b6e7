"""Live progress of a running stage, as small JSON files under ``<run_dir>/.progress/``.

``dapt status --watch`` runs in another process (often another terminal, or another machine that mounts
the run folder), so progress is what the stage writes as it goes, not what a bar draws on the driver's
terminal. Two files per running stage:

- ``<stage>.json``, written by the runner: the driver's pid and host, when the stage started, and
  ``failed`` with the error when it raised. Removed when the stage finishes.
- ``<stage>.step.json``, written by the code doing the work (clean's shard loop, train's rank 0, eval's
  phases): the current step's name, ``done`` of ``total`` units, from which the rate and ETA follow.

Writes are atomic and throttled (at most one per ``min_interval`` seconds, plus the last), so a step loop
of thousands of iterations costs nothing measurable.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt.pipeline.fsutil import atomic_write_json

PROGRESS_DIR = ".progress"
STALE_AFTER_S = 300.0
"""A stage record from another host whose files stopped changing this long ago counts as interrupted."""


def progress_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PROGRESS_DIR


def mark_started(run_dir: Path, stage: str) -> None:
    atomic_write_json(
        progress_dir(run_dir) / f"{stage}.json",
        {"stage": stage, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
    )
    (progress_dir(run_dir) / f"{stage}.step.json").unlink(missing_ok=True)


def mark_finished(run_dir: Path, stage: str, error: BaseException | None = None) -> None:
    """Success removes the records; a failure keeps them, marked with the error's first line."""
    record = progress_dir(run_dir) / f"{stage}.json"
    if error is None:
        record.unlink(missing_ok=True)
        (progress_dir(run_dir) / f"{stage}.step.json").unlink(missing_ok=True)
        return
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = {"stage": stage}
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    atomic_write_json(
        record, {**data, "failed": f"{type(error).__name__}: {first}"[:300], "ended": time.time()}
    )


class StepProgress:
    """``done`` of ``total`` units of one named step of a stage; ``None`` run_dir: a no-op."""

    def __init__(
        self,
        run_dir: str | Path | None,
        stage: str,
        step: str,
        total: int | None,
        unit: str,
        initial: int = 0,
        min_interval: float = 1.0,
    ) -> None:
        self.path = progress_dir(run_dir) / f"{stage}.step.json" if run_dir else None
        self.step, self.total, self.unit = step, total, unit
        self.done = self.initial = int(initial)
        self.started = time.time()
        self.min_interval = min_interval
        self._written = 0.0
        self._write(force=True)

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int, step: str | None = None) -> None:
        self.done = int(done)
        if step is not None:
            self.step = step
        self._write(force=step is not None or (self.total is not None and self.done >= self.total))

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if self.path is None or (not force and now - self._written < self.min_interval):
            return
        self._written = now
        try:
            atomic_write_json(
                self.path,
                {
                    "step": self.step,
                    "unit": self.unit,
                    "done": self.done,
                    "total": self.total,
                    "initial": self.initial,
                    "started": self.started,
                    "updated": now,
                },
            )
        except OSError:  # progress is a courtesy: a full or read-only disk must not fail the stage
            self.path = None


@contextmanager
def counting_files(
    run_dir: str | Path | None, stage: str, step: str, folder: Path, pattern: str, total: int, unit: str
) -> Iterator[None]:
    """Progress of work that Ray tasks finish by writing one file each (mix's token shards): a driver
    thread counts ``folder/pattern`` once a second, so no task has to report anything."""
    record = StepProgress(run_dir, stage, step, total, unit)
    stop = threading.Event()

    def count() -> None:
        while not stop.wait(1.0):
            record.set(len(list(folder.glob(pattern))))

    thread = threading.Thread(target=count, name=f"dapt-progress-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        record.set(len(list(folder.glob(pattern))))


@dataclass
class StageView:
    """What ``dapt status`` shows for a stage that has a progress record."""

    state: str  # running | interrupted | failed
    detail: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def describe_step(step: dict[str, Any], now: float | None = None) -> str:
    """``train: 37/64 steps, 2.10 steps/s, ETA 0:00:13`` from a step record."""
    now = time.time() if now is None else now
    done, total, unit = int(step.get("done", 0)), step.get("total"), step.get("unit", "")
    elapsed = max(1e-9, float(step.get("updated", now)) - float(step.get("started", now)))
    rate = (done - int(step.get("initial", 0))) / elapsed
    text = (
        f"{step.get('step', '')}: {done}/{total} {unit}"
        if total
        else f"{step.get('step', '')}: {done} {unit}"
    )
    if rate > 0:
        text += f", {rate:.2f} {unit}/s"
        if total:
            text += f", ETA {format_eta(max(0, total - done) / rate)}"
    return text


def stage_view(run_dir: Path, stage: str, now: float | None = None) -> StageView | None:
    """The live state of a stage from its records; None when it has none (not started, or finished)."""
    now = time.time() if now is None else now
    try:
        record = json.loads((progress_dir(run_dir) / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        step = json.loads((progress_dir(run_dir) / f"{stage}.step.json").read_text())
    except (OSError, ValueError):
        step = None
    since = format_eta(now - float(record.get("started", now)))
    if record.get("failed"):
        return StageView("failed", record["failed"])
    last = max(float(record.get("started", 0)), float((step or {}).get("updated", 0)))
    same_host = record.get("host") == socket.gethostname()
    alive = _pid_alive(int(record.get("pid", -1))) if same_host else now - last < STALE_AFTER_S
    if not alive:
        return StageView(
            "interrupted", f"driver {record.get('host')}:{record.get('pid')} is gone; rerun resumes"
        )
    return StageView("running", (describe_step(step, now) if step else "starting") + f" (for {since})")
