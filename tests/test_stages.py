"""The stage runner: up to date / stale / --force, downstream staleness, atomicity, manifests."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import stage_fixtures

from dapt.pipeline import stages
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import InputError, StageMissingError

CFG = """\
name: t
run_dir: {run_dir}
sources:
  - {{name: fin, kind: domain, paths: ["{data}/fin.jsonl"]}}
model: {{from_config: {{}}}}
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "fin.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(CFG.format(run_dir=tmp_path / "run", data=tmp_path))
    monkeypatch.setitem(
        stages.STAGES,
        "clean",
        dataclasses.replace(stages.STAGES["clean"], target="stage_fixtures:count_lines"),
    )
    monkeypatch.setitem(  # in the driver: the fixtures record their calls in this process (CALLS)
        stages.STAGES,
        "tokenizer",
        dataclasses.replace(
            stages.STAGES["tokenizer"],
            target="stage_fixtures:read_upstream",
            needs=("clean",),
            placement="driver",
        ),
    )
    stage_fixtures.CALLS.clear()
    return tmp_path, cfg_path


def test_run_writes_manifest_and_done_marker(setup) -> None:
    tmp, cfg_path = setup
    cfg = load_config(cfg_path)
    m = stages.run_stage(cfg, "clean", echo=None)
    d = tmp / "run" / "clean"
    assert (d / "_DONE").read_text().strip() == m["fingerprint"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["counts"] == {"lines": 2}
    assert "exact_dedup" in manifest["config"]["clean"] and manifest["config"]["sources"][0]["name"] == "fin"
    assert "weight" not in manifest["config"]["sources"][0]
    assert manifest["inputs"][0]["path"].endswith("fin.jsonl") and "sha256" in manifest["inputs"][0]
    assert "torch" in manifest["versions"] and manifest["seconds"] >= 0
    assert (d / "log.txt").exists() and (tmp / "run" / "config.yaml").exists()
    assert not list((tmp / "run").glob(".clean.*")), "no temporary folder left behind"


def test_up_to_date_stale_and_force(setup) -> None:
    tmp, cfg_path = setup
    cfg = load_config(cfg_path)
    stages.run_stage(cfg, "clean", echo=None)
    stages.run_stage(cfg, "tokenizer", echo=None)
    assert stage_fixtures.CALLS == ["clean", "tokenizer"]
    assert stages.stage_status(cfg, "clean") == "done" and stages.stage_status(cfg, "tokenizer") == "done"
    assert stages.stage_status(cfg, "mix") == "missing"

    said: list[str] = []
    stages.run_stage(cfg, "clean", echo=said.append)
    assert stage_fixtures.CALLS == ["clean", "tokenizer"] and "up to date" in said[0]

    # A changed input makes clean stale, and through the fingerprint chain its downstream too.
    (tmp / "fin.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    assert stages.stage_status(cfg, "clean") == "stale"
    assert stages.stage_status(cfg, "tokenizer") == "stale"
    stages.run_stage(cfg, "clean", echo=None)
    assert stages.stage_status(cfg, "clean") == "done"
    assert stages.stage_status(cfg, "tokenizer") == "stale"
    stages.run_stage(cfg, "tokenizer", echo=None)
    assert (tmp / "run" / "tokenizer" / "double.txt").read_text() == "6\n"

    # A changed config section reruns; a key that does not affect the stage does not; --force reruns.
    assert stages.stage_status(load_config(cfg_path, ["sources.0.weight=2.0"]), "clean") == "done"
    assert stages.stage_status(load_config(cfg_path, ["sources.0.text_field=body"]), "clean") == "stale"
    n = len(stage_fixtures.CALLS)
    stages.run_stage(cfg, "clean", force=True, echo=None)
    assert len(stage_fixtures.CALLS) == n + 1


def test_missing_upstream_names_the_stage(setup) -> None:
    _, cfg_path = setup
    cfg = load_config(cfg_path)
    with pytest.raises(StageMissingError, match=r"stage 'clean'.*dapt clean --config"):
        stages.run_stage(cfg, "tokenizer", echo=None)
    assert not (cfg.run_path / "tokenizer").exists()


def test_status_command(setup) -> None:
    _, cfg_path = setup
    out = subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", "status", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "clean" in out and "missing" in out


KILL_SCRIPT = """
import dataclasses, sys
sys.path.insert(0, {tests!r})
from dapt.pipeline import stages
from dapt.pipeline.config import load_config
stages.STAGES["clean"] = dataclasses.replace(stages.STAGES["clean"], target="stage_fixtures:{fn}")
stages.run_stage(load_config({cfg!r}), "clean", force=True, echo=None)
"""


def _run_clean_subprocess(cfg_path: Path, fn: str, env: dict) -> subprocess.Popen:
    code = KILL_SCRIPT.format(tests=str(Path(__file__).parent), cfg=str(cfg_path), fn=fn)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env})


def test_killed_stage_leaves_no_visible_output(setup) -> None:
    tmp, cfg_path = setup
    cfg = load_config(cfg_path)
    # A previous complete output must survive a killed rerun untouched.
    stages.run_stage(cfg, "clean", echo=None)
    before = (tmp / "run" / "clean" / "manifest.json").read_text()

    signal_file = tmp / "started"
    proc = _run_clean_subprocess(
        cfg_path, "slow_writer", {"DAPT_TEST_SIGNAL": str(signal_file), "DAPT_TEST_SLEEP": "60"}
    )
    deadline = time.time() + 60
    while not signal_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert signal_file.exists(), "stage did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    final = tmp / "run" / "clean"
    assert (final / "manifest.json").read_text() == before
    assert not (final / "part-0.txt").exists(), "half-written output must not be visible"
    assert stages.stage_status(cfg, "clean") == "done"

    # From scratch: a killed first run leaves no done marker and no output folder.
    other = tmp / "other.yaml"
    other.write_text(cfg_path.read_text().replace(str(tmp / "run"), str(tmp / "run2")))
    signal_file.unlink()
    proc = _run_clean_subprocess(
        other, "slow_writer", {"DAPT_TEST_SIGNAL": str(signal_file), "DAPT_TEST_SLEEP": "60"}
    )
    while not signal_file.exists() and time.time() < deadline + 30:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp / "run2" / "clean").exists()
    assert stages.stage_status(load_config(other), "clean") == "missing"
    # The rerun completes (the leftover temp folder is cleared).
    proc = _run_clean_subprocess(
        other, "slow_writer", {"DAPT_TEST_SIGNAL": str(signal_file), "DAPT_TEST_SLEEP": "0"}
    )
    assert proc.wait() == 0
    assert sorted(p.name for p in (tmp / "run2" / "clean").iterdir()) == [
        "_DONE",
        "log.txt",
        "manifest.json",
        "part-0.txt",
        "part-1.txt",
    ]


def test_stage_failure_is_logged_and_not_done(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, cfg_path = setup
    monkeypatch.setitem(
        stages.STAGES,
        "clean",
        dataclasses.replace(stages.STAGES["clean"], target="stage_fixtures:fail_on_input"),
    )
    cfg = load_config(cfg_path)
    with pytest.raises(InputError):
        stages.run_stage(cfg, "clean", echo=None)
    assert "no finished output" in (tmp / "run" / "logs" / "clean.log").read_text()
    assert stages.stage_status(cfg, "clean") == "missing"
