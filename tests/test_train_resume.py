"""Resuming, continuing and setting aside checkpoints (train/resume.py with the real loop), early stop
kept across reruns, and the workers' quiet imports. The Ray Train stage path of the same behaviour is in
tests/test_train_ray.py; the loop helpers and the tiny training data come from tests/test_train.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import test_train
from test_train import losses, make_spec

from dapt.train.loop import train_loop
from dapt.train.resume import SET_ASIDE_INFO, list_checkpoints, prepare

train_data = test_train.train_data  # the tiny blocks, monitor windows and model (a module fixture)


class _Log:
    """Collects what a stage logger would write (train.resume logs what it decides)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append(msg % args)

    warning = info


PLAN = {
    "lr": 3e-3,
    "steps": 20,
    "warmup_steps": 1,
    "schedule": "cosine",
    "min_lr_ratio": 0.1,
    "decay_fraction": 0.2,
}


def _fake_checkpoint(root: Path, step: int, key: str, lr: float = 3e-3, **plan: Any) -> None:
    p = root / f"step-{step:08d}"
    p.mkdir(parents=True)
    meta = {
        "state": {"train": {"lr": lr, "seed": None}, "seed": 0, "upstream": {"mix": "m1"}},
        "continuing": {},
    }
    history = [{"from_step": 0, **PLAN, "lr": lr, **plan}]
    (p / "trainer.json").write_text(
        json.dumps({"state_key": key, "step": step, "schedule_history": history, "meta": meta})
    )


def test_checkpoints_of_another_state_are_moved_aside_named_and_restored(tmp_path: Path) -> None:
    """A changed lr never deletes checkpoints: they move aside with their logs, the changed key is named,
    and undoing the change (before the new run checkpointed) moves them back; --force sets all aside."""
    work = tmp_path / "work"
    root, logs = work / "checkpoints", work / "logs"
    for step in (5, 10):
        _fake_checkpoint(root, step, "key-a")
    (root / ".tmp-step-00000015").mkdir()  # an interrupted save
    logs.mkdir(parents=True)
    (logs / "metrics.jsonl").write_text('{"step": 1}\n')
    meta_b = {
        "state": {"train": {"lr": 1e-3, "seed": None}, "seed": 0, "upstream": {"mix": "m1"}},
        "continuing": {},
    }

    log = _Log()
    prep = prepare(root, logs, "key-b", {**PLAN, "lr": 1e-3}, meta_b, False, log)
    assert prep.resumed is None and list(root.iterdir()) == [] and not logs.exists()
    (aside,) = prep.set_aside
    assert aside["changed"] == {"train.lr": [3e-3, 1e-3]} and aside["steps"] == [5, 10]
    folder = Path(aside["path"])
    assert folder.name == "checkpoints.old-key-a" and prep.discard_after_checkpoint == [str(folder)]
    assert {p.name for p in folder.iterdir()} == {SET_ASIDE_INFO, "logs", "step-00000005", "step-00000010"}
    assert any("train.lr" in line and "moved aside" in line for line in log.lines)

    # the change is undone: the checkpoints and their logs come back and are resumed
    meta_a = {"state": {**meta_b["state"], "train": {"lr": 3e-3, "seed": None}}, "continuing": {}}
    logs.mkdir()
    (logs / "metrics.jsonl").write_text('{"step": 1, "of": "a run without checkpoints"}\n')
    back = prepare(root, logs, "key-a", PLAN, meta_a, False, _Log())
    assert back.restored == [5, 10] and back.resumed == {"from_step": 10, "continued": False}
    assert not folder.exists() and (logs / "metrics.jsonl").read_text() == '{"step": 1}\n'

    forced = prepare(root, logs, "key-a", PLAN, meta_a, True, _Log())
    assert forced.resumed is None and forced.set_aside[0]["reason"] == "--force"
    assert list_checkpoints(Path(forced.set_aside[0]["path"])) and not list_checkpoints(root)


def test_a_lowered_budget_sets_aside_checkpoints_beyond_it(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (10, 25, 30):
        _fake_checkpoint(root, step, "k", steps=30)
    prep = prepare(root, tmp_path / "logs", "k", PLAN, {"state": {}, "continuing": {}}, False, _Log())
    assert [s for s, _ in list_checkpoints(root)] == [10]
    assert prep.resumed["from_step"] == 10 and prep.resumed["continued"]
    assert prep.set_aside[0]["steps"] == [25, 30]
    (root / "step-00000010" / "trainer.json").unlink()  # a pruning cut short: not resumable, cleared
    assert prepare(root, tmp_path / "logs", "k", PLAN, {}, False, _Log()).resumed is None
    assert not list(root.iterdir())


def test_a_crash_of_a_continued_run_resumes_it_as_planned(tmp_path: Path) -> None:
    """A continued run kept its old warmup (1 step, not the 3 its 30 steps would plan): rerunning the same
    config after a crash is a plain resume with that warmup, not another continuation."""
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 25, "k", steps=30)
    prep = prepare(root, tmp_path / "logs", "k", {**PLAN, "steps": 30, "warmup_steps": 3}, {}, False, _Log())
    assert prep.resumed == {"from_step": 25, "continued": False} and prep.warmup_steps == 1


def test_early_stop_on_general_regression_is_saved_and_a_rerun_stays_stopped(
    train_data, tmp_path: Path
) -> None:
    """A huge LR wrecks the model: the monitor sees general bits-per-byte regress and stops the run. The
    stop is in the checkpoint, so running the same spec again (a killed stage rerun: its output folder
    gone, the work folder kept) trains no further step; raising the threshold continues the run."""
    spec = make_spec(
        train_data, tmp_path / "es", steps=20, lr=0.5, monitor_every=2, max_general_regression=0.05
    )
    s = train_loop(spec)
    assert s["early_stopped"] and s["steps"] < 20
    assert s["final_monitor"]["general_bpb"] > s["base_monitor"]["general_bpb"] * 1.05
    assert [x for x, _ in list_checkpoints(Path(spec.checkpoint_dir), "fp-test")] == [s["steps"]]
    rows = (Path(spec.log_dir) / "metrics.jsonl").read_text()
    monitor_rows = (Path(spec.log_dir) / "monitor.jsonl").read_text()

    again = train_loop(spec)
    assert again["early_stopped"] and again["steps"] == s["steps"] and again["steps_this_attempt"] == 0
    assert again["early_stop"]["step"] == s["steps"] and again["final_monitor"] == s["final_monitor"]
    assert (Path(spec.log_dir) / "metrics.jsonl").read_text() == rows
    assert (Path(spec.log_dir) / "monitor.jsonl").read_text() == monitor_rows  # no recomputed row

    more = train_loop(spec.replace(max_general_regression=None))
    assert not more["early_stopped"] and more["resumed_from_step"] == s["steps"] and more["steps"] == 20


def test_wsd_extension_continues_exactly_from_the_branch_point(train_data, tmp_path: Path) -> None:
    """A 10-step wsd run checkpoints at its decay start (step 8). Raised to 20 steps, train.resume picks
    that branch point (not the decayed step 10, which it moves aside) and the continued run's losses
    equal a 20-step run's from the start, bit for bit; the set-aside folder goes after the first new
    checkpoint."""
    wsd = {"schedule": "wsd", "decay_fraction": 0.2, "monitor_path": None, "checkpoint_every": 1000}
    ref = make_spec(train_data, tmp_path / "ref", steps=20, **wsd)
    train_loop(ref)

    short = make_spec(train_data, tmp_path / "ext", steps=10, **wsd)
    train_loop(short)
    root = Path(short.checkpoint_dir)
    assert [x for x, _ in list_checkpoints(root)] == [8, 10]  # the branch point and the end

    long = short.replace(steps=20)
    log = _Log()
    prep = prepare(root, Path(long.log_dir), long.checkpoint_key, long.lr_plan(), {}, False, log)
    assert prep.resumed["from_step"] == 8 and prep.resumed["exact"] and prep.resumed["previous_steps"] == 10
    assert prep.set_aside[0]["steps"] == [10] and [x for x, _ in list_checkpoints(root)] == [8]
    s = train_loop(long.replace(discard_after_checkpoint=tuple(prep.discard_after_checkpoint)))
    assert s["resumed_from_step"] == 8 and s["steps_this_attempt"] == 12
    assert losses(long) == losses(ref)
    assert (
        s["removed_set_aside"] == prep.discard_after_checkpoint
        and not Path(prep.set_aside[0]["path"]).exists()
    )
    assert [h["from_step"] for h in s["schedule_history"]] == [0, 8]


def test_workers_import_transformers_without_torchaos_known_noise() -> None:
    """Importing transformers' model code imports torchao, which logs torch's "<enum 'KernelPreference'>
    is an Enum subclass ..." deprecation (and, on CPU, CUDA-kernel load failures): every training worker
    printed them. pipeline.quiet drops exactly those messages; another warning of the same logger still
    shows. (A fresh interpreter: this one has imported torchao already.)"""
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "if sys.argv[1] == 'quiet':\n"
        "    from dapt.pipeline import quiet; quiet.install()\n"
        "import transformers.modeling_utils\n"
        "logging.getLogger('torch.utils._pytree').warning('another pytree warning')\n"
    )
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True, timeout=300
        ).stderr
        for mode in ("loud", "quiet")
    }
    assert "is an Enum subclass" in runs["loud"]  # the noise is real ...
    assert "is an Enum subclass" not in runs["quiet"]  # ... and gone
    assert "Detected no triton" not in runs["quiet"] and "/torchao/_C" not in runs["quiet"]
    assert "another pytree warning" in runs["quiet"]
