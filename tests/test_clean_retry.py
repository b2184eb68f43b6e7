"""A clean stage whose Ray Data tasks are SIGKILLed still finishes, with the same output.

Ray Data 2.60 submits every task-pool task (reads, ``map_batches``, shuffle map and reduce) through
``ray.data._internal.remote_fn.cached_remote_fn``, whose defaults are ``max_retries=-1`` (retry
without limit) and ``retry_exceptions=[RaySystemError]``; the clean stage does not override them. So
a task whose worker process dies is resubmitted by Ray, and the stage must give exactly what an
uninterrupted run gives: every task must be safe to rerun over what a killed attempt left behind. An
exception raised by a task is not retried (``DataContext.max_errored_blocks`` is 0): the stage fails.

``dapt clean`` runs as a subprocess with its own private local Ray (no ``RAY_ADDRESS``), once
undisturbed and once while the test SIGKILLs a worker executing a Ray Data task in each of three
phases: A (``MapBatches(process_batch)``: reads a shard, writes a work shard by atomic rename), B (a
Parquet read task of the dedup) and D (``MapBatches(finalize_batch)``: writes the stage's kept and
rejected files; killed just after a task has written them, so its retry meets its own partial
output). Only processes in the subprocess's own tree are looked at or signalled.

Not covered here: a killed driver (the stage dies; the rerun resumes from finished shards:
tests/test_chaos.py, tests/test_clean_stage.py), a killed raylet or GCS (a private local Ray dies
with them), Ray Data's actors (``FooterReader``, ``_StatsActor``) and the dedup's shuffle tasks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_clean_stage import _sorted_rows, build_corpus, read_dir, write_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# (phase, what the worker's process title starts with while it executes the task), killed in this order
TARGETS = [
    ("A read and filter", "ray::MapBatches(process_batch)"),
    ("B dedup read", "ray::MapBatches(_read_meta)"),
    ("D write", "ray::MapBatches(finalize_batch)"),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_clean(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dapt.pipeline.cli", "clean", "--config", str(cfg)],
        cwd=ROOT,
        env=_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _title(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return ""
    return cmd[0] if cmd else ""


def _linked_rejected(run_dir: Path) -> list[str]:
    """The rejected files a finalize task has already hard-linked into the stage's temporary folder."""
    return sorted(p.name for p in (run_dir / ".clean.tmp" / "rejected").glob("*/part-??????.parquet"))


def _session_dir(tree: list[psutil.Process]) -> str | None:
    """The private Ray's session folder, from its GCS server's command line."""
    for p in tree:
        try:
            args = p.cmdline()
        except psutil.Error:
            continue
        for a in args:
            if a.startswith("--session-dir="):
                return a.split("=", 1)[1]
    return None


def _kill_one_task_per_phase(
    proc: subprocess.Popen, run_dir: Path, deadline: float
) -> tuple[list[dict], str | None]:
    """SIGKILL, in ``TARGETS`` order, the first worker of ``proc``'s tree seen executing each task.

    Phase D waits until a finalize task has written its files (its rejected file is linked into the
    stage folder, the task's last write), then kills every worker still executing finalize_batch: the
    one that wrote them is retried over its own output. To be quick enough, phase D polls the folder
    every millisecond and keeps the process tree from its last scan (a full scan walks every process
    of the machine); the workers run at nice 15, so the link is usually seen before the task returns.
    Returns the kills and the private Ray's session folder."""
    root = psutil.Process(proc.pid)
    pending = list(TARGETS)
    killed: list[dict] = []
    session = None
    tree: list[psutil.Process] = []
    scanned = 0.0
    t0 = time.monotonic()
    while pending and proc.poll() is None and time.monotonic() < deadline:
        phase, prefix = pending[0]
        in_d = phase.startswith("D")
        now = time.monotonic()
        if not in_d or now - scanned > 0.05:
            try:
                tree = root.children(recursive=True)
            except psutil.Error:
                break
            scanned = now
            session = session or _session_dir(tree)
        linked = _linked_rejected(run_dir) if in_d else []
        if in_d and not linked:
            time.sleep(0.001)
            continue
        hit = False
        for p in tree:
            title = _title(p)
            if not title.startswith(prefix):
                continue
            try:
                p.send_signal(signal.SIGKILL)  # psutil checks the pid was not reused
            except psutil.Error:
                continue
            at = round(time.monotonic() - t0, 2)
            killed.append({"phase": phase, "pid": p.pid, "title": title, "at_s": at, "linked": linked})
            hit = True
            if not in_d:
                break
        if hit:
            pending.pop(0)
        elif in_d:
            scanned = 0.0  # the task's worker may be newer than the last scan
        time.sleep(0.001 if pending and pending[0][0].startswith("D") else 0.02)
    return killed, session


def _outputs(run_dir: Path) -> dict:
    out = run_dir / "clean"
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "manifest": manifest,
        "kept": read_dir(out / "kept"),
        "rejected": read_dir(out / "rejected"),
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")),
    }


def _error_lines(out: str, stage_log: Path) -> list[str]:
    """Why the stage failed: the CLI's one line and the exception lines of the stage log's traceback."""
    text = out + (stage_log.read_text() if stage_log.exists() else "")
    exc = re.compile(r"^[\w.]*(Error|Exception)(\(\w+\))?: ")
    return sorted({ln[:300] for ln in text.splitlines() if "dapt: error" in ln or exc.match(ln)})


def _ids(t, cols: list[str]) -> list[tuple]:
    return sorted(tuple(r[c] for c in cols) for r in t.select(cols).to_pylist())


def test_killed_ray_data_tasks_are_retried_and_output_unchanged(tmp_path: Path) -> None:
    build_corpus(tmp_path / "corpus")
    for d in ("ref", "kill"):
        (tmp_path / d).mkdir()
    ref_cfg = write_config(tmp_path / "ref", tmp_path / "corpus", tmp_path / "ref" / "run")
    kill_cfg = write_config(tmp_path / "kill", tmp_path / "corpus", tmp_path / "kill" / "run")

    ref_log = tmp_path / "ref.out"
    ref = _start_clean(ref_cfg, ref_log)
    assert ref.wait(timeout=600) == 0, ref_log.read_text()[-4000:]

    kill_log = tmp_path / "kill.out"
    proc = _start_clean(kill_cfg, kill_log)
    try:
        killed, session = _kill_one_task_per_phase(
            proc, tmp_path / "kill" / "run", deadline=time.monotonic() + 600
        )
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = kill_log.read_text()
    print("killed:", killed)  # shown when the test fails
    assert sorted({k["phase"] for k in killed}) == [t[0] for t in TARGETS], (killed, out[-4000:])
    errors = _error_lines(out, tmp_path / "kill" / "run" / "logs" / "clean.log")
    assert rc == 0, "\n".join([*errors, f"killed: {killed}"])

    # Ray saw each death as a system failure of a running task and resubmitted it: the driver's core
    # worker log says so for every attempt. (Its console lines for later deaths may be folded by Ray's
    # log dedup, so only the first one is checked there.)
    assert session, killed
    driver_log = "".join(
        p.read_text() for p in Path(session, "logs").glob(f"python-core-driver-*_{proc.pid}.log")
    )
    assert driver_log.count("failed with error WORKER_DIED") >= len(TARGETS), (killed, session)
    assert driver_log.count("Attempting to resubmit task") >= len(TARGETS), (killed, session)
    assert f"Worker PID: {killed[0]['pid']}" in out, (killed, out[-4000:])
    assert "so the task will be retried" in out, (killed, out[-4000:])

    a, b = _outputs(tmp_path / "ref" / "run"), _outputs(tmp_path / "kill" / "run")
    m = b["manifest"]
    for name, s in m["sources"].items():
        assert s["docs_in"] == s["kept"] + sum(s["rejected"].values()), (name, s)
    assert m["counts"]["docs_in"] == m["counts"]["kept"] + m["counts"]["rejected"]
    assert m["counts"]["kept"] == b["kept"].num_rows
    assert m["counts"]["rejected"] == b["rejected"].num_rows
    assert m["counts"]["rejected"] > 0 and m["counts"]["kept"] > 0

    assert m["sources"] == a["manifest"]["sources"], killed
    assert m["counts"] == a["manifest"]["counts"], killed
    assert _ids(b["kept"], ["source", "id"]) == _ids(a["kept"], ["source", "id"]), killed
    why = ["source", "id", "step", "reason"]
    assert _ids(b["rejected"], why) == _ids(a["rejected"], why), killed
    # every row (text, cluster, file and line) and file for file the same partition
    assert _sorted_rows(b["kept"]) == _sorted_rows(a["kept"]), killed
    assert _sorted_rows(b["rejected"]) == _sorted_rows(a["rejected"]), killed
    assert b["files"] == a["files"], killed
