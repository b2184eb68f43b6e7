"""Input listing and stat once per command (issue 20 item 4), and afresh for the next command.

``dapt status`` used to glob and stat every source file 87 times (each stage's status recomputes its
upstreams', and each recomputation re-listed the sources); ``dapt clean`` listed them three times. The
tests run the real commands in this process on a real folder of source files, with counting wrappers
installed around the functions dapt calls (``glob.glob``, ``os.stat``, ``io.open``): the real calls
still happen, the wrappers only count them per file.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import os
from pathlib import Path

import pytest
import stage_fixtures

from dapt.pipeline import cli, ray_runtime, stages
from dapt.pipeline.config import load_config
from dapt.pipeline.fsutil import atomic_write_json, forget_input_facts, input_facts

N_FILES = 60

CFG = """\
name: lc
run_dir: {run_dir}
sources:
  - {{name: fin, kind: domain, paths: ["{src}/*.jsonl"]}}
  - {{name: gen, kind: general, paths: ["{src}/general/*.jsonl"]}}
model: {{from_config: {{}}}}
"""


class Counts:
    """Per source file: how often it came back from a glob, was stat-ed, was opened."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.listed: collections.Counter[str] = collections.Counter()
        self.stat: collections.Counter[str] = collections.Counter()
        self.opened: collections.Counter[str] = collections.Counter()

    def clear(self) -> None:
        self.listed.clear()
        self.stat.clear()
        self.opened.clear()

    def mine(self, p: object) -> str | None:
        s = os.fspath(p) if isinstance(p, str | os.PathLike) else None
        return s if s is not None and s.startswith(self.root) and s.endswith(".jsonl") else None


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A config over ``N_FILES`` + 1 source files, the counting wrappers, and the runner's clean row
    pointed at a driver-only stage function that lists and reads the sources itself (as the real
    clean stage's plan does), so the command needs no Ray."""
    src = tmp_path / "src"
    (src / "general").mkdir(parents=True)
    for i in range(N_FILES):
        (src / f"{i:03d}.jsonl").write_text(json.dumps({"text": f"finance document {i}"}) + "\n")
    (src / "general" / "g.jsonl").write_text(json.dumps({"text": "general document"}) + "\n")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(CFG.format(run_dir=tmp_path / "run", src=src))
    monkeypatch.setitem(
        stages.STAGES,
        "clean",
        dataclasses.replace(stages.STAGES["clean"], target="stage_fixtures:count_lines"),
    )
    # cli.main stops a Ray this process owns when it returns; the session's Ray (ray_local) must survive.
    monkeypatch.setattr(ray_runtime, "_owned", False)

    counts = Counts(src)
    real_glob, real_stat, real_open = glob.glob, os.stat, io.open

    def counting_glob(pattern, *a, **k):
        found = real_glob(pattern, *a, **k)
        for f in found:
            if counts.mine(f):
                counts.listed[f] += 1
        return found

    def counting_stat(path, *a, **k):
        if (f := counts.mine(path)) is not None:
            counts.stat[f] += 1
        return real_stat(path, *a, **k)

    def counting_open(file, *a, **k):
        if (f := counts.mine(file)) is not None:
            counts.opened[f] += 1
        return real_open(file, *a, **k)

    monkeypatch.setattr(glob, "glob", counting_glob)
    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr(io, "open", counting_open)  # pathlib's read_bytes / read_text open through it
    stage_fixtures.CALLS.clear()
    return cfg_path, src, counts


def _files(src: Path) -> list[str]:
    return sorted(str(p) for p in src.rglob("*.jsonl"))


def _mark_all_done(cfg_path: Path) -> None:
    """Every stage done at its current fingerprint, so `dapt status` computes every fingerprint."""
    cfg = load_config(cfg_path)
    for name in stages.STAGE_ORDER:
        fp, _ = stages.compute_fingerprint(cfg, stages.STAGES[name])
        d = stages.stage_dir(cfg, name)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / stages.MANIFEST, {"stage": name, "fingerprint": fp})
        (d / stages.DONE_MARKER).write_text(fp + "\n")


def _status(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    capsys.readouterr()
    assert cli.main(["status", "--config", str(cfg_path)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]  # after the run and Ray dashboard lines
    return {line.split()[0]: line.split()[1] for line in lines}


def test_status_lists_stats_and_reads_each_source_file_once(run, capsys) -> None:
    cfg_path, src, counts = run
    _mark_all_done(cfg_path)
    counts.clear()
    assert set(_status(cfg_path, capsys).values()) == {"done"}  # the cache changes no answer
    files = _files(src)
    assert len(files) == N_FILES + 1
    assert counts.listed == dict.fromkeys(files, 1)
    assert counts.stat == dict.fromkeys(files, 1)  # the glob's is-a-file check and the fingerprint share it
    assert counts.opened == dict.fromkeys(files, 1)  # small files: one read for the content hash


def test_stage_command_lists_once_for_config_check_fingerprint_and_body(run, capsys) -> None:
    """`dapt clean` checks the globs match, fingerprints the inputs, and the stage body lists them again:
    one listing and one stat per file serve all three."""
    cfg_path, src, counts = run
    assert cli.main(["clean", "--config", str(cfg_path)]) == 0
    assert stage_fixtures.CALLS == ["clean"]  # the body ran (and read each file itself)
    files = _files(src)
    assert counts.listed == dict.fromkeys(files, 1)
    assert counts.stat == dict.fromkeys(files, 1)


def test_a_source_changed_between_two_commands_in_one_process_is_seen(run, capsys) -> None:
    cfg_path, src, _ = run
    assert cli.main(["clean", "--config", str(cfg_path)]) == 0
    assert _status(cfg_path, capsys)["clean"] == "done"
    cfg = load_config(cfg_path)
    with input_facts():
        before, _ = stages.compute_fingerprint(cfg, stages.STAGES["clean"])

    (src / "007.jsonl").write_text(json.dumps({"text": "finance document seven, edited"}) + "\n")
    assert _status(cfg_path, capsys)["clean"] == "stale"
    with input_facts():
        edited, _ = stages.compute_fingerprint(cfg, stages.STAGES["clean"])
    assert edited != before

    (src / "999.jsonl").write_text(json.dumps({"text": "a new file the glob now matches"}) + "\n")
    with input_facts():
        added, parts = stages.compute_fingerprint(cfg, stages.STAGES["clean"])
    assert added != edited and str(src / "999.jsonl") in [f["path"] for f in parts["inputs"]]


def test_within_one_command_facts_hold_until_a_stage_body_has_run(run) -> None:
    """Inside one command the inputs are read once (an edit mid-command is not seen by the next
    fingerprint), until the runner has run a stage body: it forgets then, so a later stage's fingerprint
    never rests on facts from before a body ran (and wrote, and maybe took hours)."""
    cfg_path, src, _ = run
    cfg = load_config(cfg_path)
    spec = stages.STAGES["clean"]
    with input_facts():
        first, _ = stages.compute_fingerprint(cfg, spec)
        (src / "003.jsonl").write_text(json.dumps({"text": "edited while the command runs"}) + "\n")
        assert stages.compute_fingerprint(cfg, spec)[0] == first  # one view per command
        manifest = stages.run_stage(cfg, "clean", echo=None)  # fingerprinted from the cached view...
        assert manifest["fingerprint"] == first
        after, _ = stages.compute_fingerprint(cfg, spec)  # ...and forgotten once the body ran
        assert after != first
        forget_input_facts()
        assert stages.compute_fingerprint(cfg, spec)[0] == after
    assert stages.stage_status(cfg, "clean") == "stale"  # outside a command: the file system as it is
