"""`dapt sweep` on configs/tiny.yaml (4 fractions x 2 budgets, 2 trials at a time) through Ray Tune: the whole
command killed and rerun (finished trials are not trained again), one trial's process killed mid-run
(Tune retries it and it resumes from its checkpoint), and the recommendation with its fit, leave-one-out
errors and overlay, which `mix.domain_fraction: auto` then reads; then the same trials under a compute
budget, which chooses the tokens as well (`train.tokens: auto`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dapt.pipeline.config import load_config
from dapt.pipeline.stages import pipeline_stages, run_pipeline, run_stage, stage_status

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _results(run_dir: Path) -> dict[str, float]:
    return {
        p.parent.name: p.stat().st_mtime
        for p in (run_dir / ".work" / "sweep" / "trials").glob("*/result.json")
    }


def test_sweep_survives_kills_and_recommends(tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={run_dir}"])
    run_pipeline(cfg, ["clean", "split", "tokenizer"], echo=None)
    from dapt.pipeline.ray_runtime import shutdown_ray

    shutdown_ray()

    # 1. The whole command killed once two trials have finished.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dapt.pipeline.cli",
            "sweep",
            "--config",
            "configs/tiny.yaml",
            f"run_dir={run_dir}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while len(_results(run_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    finished = _results(run_dir)
    assert 2 <= len(finished) < 16, finished
    assert stage_status(cfg, "sweep") == "missing"

    # 2. The rerun, with one unfinished trial's process killed half-way (os._exit, once).
    victim = next(f"r{r:.3f}-d8192" for r in (0.8, 0.6, 0.4, 0.2) if f"r{r:.3f}-d8192" not in finished)
    marker = tmp_path / "killed"
    manifest = run_stage(cfg, "sweep", echo=None, extra={"kill_trial": (victim, str(marker))})
    assert marker.exists()  # the victim's first process died
    killed_at = run_dir / ".work" / "sweep" / "trials" / victim / "logs" / "killed-at"
    assert killed_at.exists()
    after = _results(run_dir)
    assert len(after) == 16  # 4 fractions x 2 budgets, and the scaling grid's 4 sizes x 2 budgets
    assert all(after[k] == v for k, v in finished.items())  # finished trials were not trained again
    # a finished trial keeps its result, not its training state
    assert not list((run_dir / ".work" / "sweep" / "trials").glob("*/checkpoints/step-*"))
    victim_row = next(t for t in manifest["trials"] if t["trial_id"] == victim)
    assert victim_row["steps"] == 8
    # the retry resumed from the checkpoint before the kill: its first logged step is past step 1
    metrics = (
        (run_dir / ".work" / "sweep" / "trials" / victim / "logs" / "metrics.jsonl").read_text().splitlines()
    )
    assert [json.loads(x)["step"] for x in metrics][-1] == 8

    # 3. What was recorded: every trial on the validation split, a fit per side with leave-one-out errors,
    #    the recommendation within the swept fractions, its overlay, and the sweep's cost.
    assert {(t["fraction"], t["budget"]) for t in manifest["trials"]} == {
        (r, d) for r in (0.2, 0.4, 0.6, 0.8) for d in (4096, 8192)
    }
    assert manifest["base"]["scored_on"] == "validation"
    for side in ("domain", "general"):
        assert manifest["fit"][side]["form"]
        assert len(manifest["loo"][side]["rows"]) == 8
        assert manifest["loo"][side]["mean_abs_rel_error"] < 0.05
    rec = manifest["recommendation"]
    assert 0.2 <= rec["domain_fraction"] <= 0.8
    overlay = (run_dir / "sweep" / "recommendation.yaml").read_text()
    assert f"domain_fraction: {manifest['overlay']['mix']['domain_fraction']}" in overlay
    assert manifest["cost"]["trial_tokens"] == 8 * (4096 + 8192)
    scaling = manifest["scaling"]
    assert len({p["params"] for p in scaling["points"]}) == 4 and len(scaling["points"]) == 8
    for side in ("domain", "general"):
        assert scaling[side]["compute_optimal"]["params"] > 0 and scaling[side]["fit"]["alpha"] > 0
    assert set(scaling["published"]) == {"hoffmann2022", "besiroglu2024"}

    # 4. `mix.domain_fraction: auto` reads it, and `dapt run` puts the sweep before the mix.
    auto = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={run_dir}", "mix.domain_fraction=auto"])
    assert auto.mix.domain_fraction == manifest["overlay"]["mix"]["domain_fraction"]
    assert pipeline_stages(auto)[3:5] == ["sweep", "mix"]
    assert stage_status(auto, "sweep") == "done"  # the fraction it chose does not make it stale

    # 4b. A compute budget chooses the tokens too: the sweep is refitted from the cached trials (none is
    #     trained again), the budget buys what `dapt plan` says, and `train.tokens: auto` reads the answer.
    budget = ["mix.domain_fraction=auto", "train.tokens=auto", "train.max_steps=null"]
    budget.append("sweep.compute_budget.flops=2e10")
    auto = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={run_dir}", *budget])
    assert auto.train.tokens == "auto" and stage_status(auto, "sweep") == "stale"
    manifest = run_stage(auto, "sweep", echo=None)
    assert _results(run_dir) == after
    spent = manifest["compute_budget"]
    assert spent["max_tokens"] == int(2e10 // spent["flops_per_token"]) > 8192
    rec = manifest["recommendation"]
    assert rec["tokens"] <= spent["max_tokens"] and rec["tokens"] == spent["recommended_tokens"]
    assert len(rec["candidates"]) > 2 and manifest["overlay"]["train"]["tokens"] == rec["tokens"]
    auto = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={run_dir}", *budget])
    assert auto.train.tokens == rec["tokens"] and stage_status(auto, "sweep") == "done"

    # 5. The run at the recommendation: the mix names the sweep, the report shows it.
    run_pipeline(auto, ["mix", "train", "eval", "report"], echo=None)
    mix = json.loads((run_dir / "mix" / "manifest.json").read_text())
    assert mix["mix"]["target_domain_fraction"] == auto.mix.domain_fraction
    assert mix["fraction_from"]["sweep_fingerprint"] == manifest["fingerprint"]
    train = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert rec["tokens"] <= train["tokens"] < rec["tokens"] + 1024  # whole steps of 1,024 tokens
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Mix ratio: the proxy sweep" in report and "Measured domain bpb" in report
    assert "Besiroglu et al. 2024" in report and (run_dir / "report" / "sweep.png").is_file()
    shutdown_ray()
