"""`dapt status --watch`: a running stage's progress, read from what the stage writes as it goes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from dapt.pipeline.config import load_config
from dapt.pipeline.progress import StepProgress, describe_step, progress_dir, stage_view
from dapt.pipeline.stages import STAGES, StageContext, run_stage

ROOT = Path(__file__).resolve().parent.parent


def _status(run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    """`dapt status` on the tiny config in another process, as a user's second terminal would run it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dapt.pipeline.cli",
            "status",
            "--config",
            "configs/tiny.yaml",
            f"run_dir={run_dir}",
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_step_record_gives_rate_and_eta(tmp_path: Path) -> None:
    p = StepProgress(tmp_path, "train", "train", 100, "steps", initial=20, min_interval=0)
    p.set(30)
    step = {**json.loads(p.path.read_text()), "started": 1000.0, "updated": 1005.0}
    assert describe_step(step) == "train: 30/100 steps, 2.00 steps/s, ETA 0:00:35"
    assert stage_view(tmp_path, "train") is None  # no runner record: not running


def test_watch_shows_the_running_stage_then_its_end(tmp_path: Path, monkeypatch) -> None:
    release = tmp_path / "release"
    reached = threading.Event()

    def slow_clean(ctx: StageContext) -> dict:
        bar = StepProgress(ctx.run_dir, "clean", "read and filter", 10, "shards", min_interval=0)
        for _ in range(3):
            time.sleep(0.2)
            bar.update()
        reached.set()
        while not release.exists():
            time.sleep(0.1)
        return {"counts": {"kept": 1}}

    monkeypatch.setitem(STAGES, "clean", dataclasses.replace(STAGES["clean"], target=slow_clean))
    run_dir = tmp_path / "run"
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={run_dir}"])
    worker = threading.Thread(target=run_stage, args=(cfg, "clean"), kwargs={"echo": None})
    worker.start()
    try:
        assert reached.wait(30)
        watch = _status(run_dir, "--watch", "--interval", "0.5", "--for", "1.6")
    finally:
        release.write_text("go")
        worker.join(60)
    assert watch.returncode == 0, watch.stderr[-2000:]
    frames = watch.stdout.split("run tiny:")
    assert len(frames) >= 3  # refreshed while the stage ran (bounded by --for)
    line = next(x for x in frames[-1].splitlines() if x.strip().startswith("clean"))
    assert "running" in line and "read and filter: 3/10 shards" in line and "ETA" in line, line
    assert "Ray dashboard: none" in watch.stdout
    # finished: the records are gone and status shows the stage done
    assert not list(progress_dir(run_dir).glob("clean*"))
    after = _status(run_dir)
    assert any(x.split()[:2] == ["clean", "done"] for x in after.stdout.splitlines()), after.stdout


def test_a_failed_stage_shows_failed_with_its_error(tmp_path: Path, monkeypatch) -> None:
    def broken(ctx: StageContext) -> dict:
        StepProgress(ctx.run_dir, "clean", "read and filter", 4, "shards").update()
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setitem(STAGES, "clean", dataclasses.replace(STAGES["clean"], target=broken))
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}"])
    try:
        run_stage(cfg, "clean", echo=None)
    except Exception:
        pass
    view = stage_view(tmp_path / "run", "clean")
    assert view is not None and view.state == "failed" and "disk on fire" in view.detail


def test_counting_files_reports_tasks_that_finish_by_writing_a_file(tmp_path: Path) -> None:
    """Mix's tokenisation: each Ray task writes one token shard; the driver counts them."""
    from dapt.pipeline.progress import counting_files

    parts = tmp_path / "tokens"
    parts.mkdir()
    with counting_files(tmp_path, "mix", "tokenise", parts, "part-*.bin", 4, "tasks"):
        for i in range(3):
            (parts / f"part-{i:06d}.bin").write_bytes(b"x")
        (parts / ".part-000003.bin.1.tmp").write_bytes(b"x")  # a write in flight does not count
        time.sleep(1.5)
        step = json.loads((progress_dir(tmp_path) / "mix.step.json").read_text())
        assert (step["step"], step["done"], step["total"], step["unit"]) == ("tokenise", 3, 4, "tasks")
