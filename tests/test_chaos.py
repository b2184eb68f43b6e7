"""Kill anywhere: SIGKILL the whole ``dapt run`` process group at random moments in every stage, rerun,
and the final outputs equal an uninterrupted run's.

The kill moments are fixed by a seed: moment *i* waits for stage *s_i* to print ``<stage>: running``
(the CLI's own progress line) and kills after a random fraction of that stage's duration in the
uninterrupted run. Each rerun starts where the last one died: finished stages are up to date, a killed
stage starts over from its temporary folder (or, for train, resumes from its last checkpoint). What
must be equal: the kept-document ids, the packed token blocks, the training losses per step and every
eval number.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dapt.corpora.mix.store import TokenStore

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/tiny.yaml"
STAGES_TO_HIT = ["clean", "split", "tokenizer", "mix", "train", "train", "eval", "report"]
SEED = 19


def _cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "dapt.pipeline.cli", "run", "--config", CONFIG, f"run_dir={run_dir}"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _ray_pids() -> set[int]:
    out = subprocess.run(
        ["pgrep", "-f", "raylet|gcs_server|ray::|default_worker"], capture_output=True, text=True
    )
    return {int(p) for p in out.stdout.split()}


def _orphans(before: set[int]) -> list[int]:
    """Ray processes that appeared during our run and outlived it (parent gone: reparented)."""
    left = []
    for pid in sorted(_ray_pids() - before):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == 1 or not Path(f"/proc/{ppid}").exists():
            left.append(pid)
    return left


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def _run_and_kill(run_dir: Path, stage: str, delay: float, before: set[int]) -> tuple[str, list[int]]:
    """Start ``dapt run``; once ``stage`` starts, wait ``delay`` s and SIGKILL the process group.
    Returns what happened (``killed`` or ``finished`` if the run ended first) and the Ray processes the
    killed driver left behind (its raylet's agents), which the next run must stop."""
    proc = subprocess.Popen(
        _cmd(run_dir),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    outcome = "finished"
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"{stage}: running"):
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            outcome = "killed"
            break
    proc.wait(timeout=900)
    time.sleep(3)  # let Ray's fate-sharing processes go
    return outcome, _orphans(before)


def _outputs(run_dir: Path) -> dict:
    kept = sorted(
        (r["source"], r["id"])
        for f in sorted((run_dir / "clean" / "kept").rglob("*.parquet"))
        for r in pq.read_table(f, columns=["source", "id"]).to_pylist()
    )
    store = TokenStore(run_dir / "mix" / "train")
    tokens = store.blocks(range(len(store)))
    losses: dict[int, float] = {}
    for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and "step" in row:
            losses[int(row["step"])] = float(row["loss"])
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    metrics = {r["name"]: (r.get("base"), r.get("adapted"), r.get("p_value")) for r in results["metrics"]}
    return {"kept": kept, "tokens": tokens.tobytes(), "losses": losses, "metrics": metrics}


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    return {
        s: json.loads((run_dir / s / "manifest.json").read_text())["seconds"]
        for s in set(STAGES_TO_HIT)
        if (run_dir / s / "manifest.json").exists()
    }


@pytest.mark.slow
def test_kill_anywhere_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(_cmd(reference), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seconds = _stage_seconds(reference)

    rng = random.Random(SEED)
    chaos = tmp_path / "chaos"
    history = []
    before = _ray_pids()
    left: list[int] = []
    try:
        for stage in STAGES_TO_HIT:
            delay = rng.uniform(0.05, 0.95) * seconds[stage]
            outcome, new_left = _run_and_kill(chaos, stage, delay, before)
            history.append((stage, round(delay, 2), outcome))
            # What the previous killed driver left behind was stopped when this run started.
            assert not _alive(left), (left, history)
            left = new_left
        final = subprocess.run(
            _cmd(chaos), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200
        )
        assert not _alive(left), (left, history)
    finally:
        for pid in _alive(_orphans(before)):  # started by this test and left behind: ours to stop
            os.kill(pid, signal.SIGKILL)
    assert final.returncode == 0, f"{history}\n" + final.stdout[-2000:] + final.stderr[-2000:]
    assert sum(1 for *_, what in history if what == "killed") >= 6, history

    want, got = _outputs(reference), _outputs(chaos)
    assert got["kept"] == want["kept"], history
    assert got["tokens"] == want["tokens"], history
    assert got["losses"].keys() == want["losses"].keys(), history
    for step, loss in want["losses"].items():
        assert got["losses"][step] == pytest.approx(loss, rel=1e-6, abs=1e-7), (step, history)
    assert got["metrics"].keys() == want["metrics"].keys()
    for name, vals in want["metrics"].items():
        assert got["metrics"][name] == pytest.approx(vals, rel=1e-6, abs=1e-9), (name, history)
