"""Proxy trials on Ray Tune: one ``train_loop`` per (domain fraction, token budget), in its trial's actor.

Why Ray Tune: it is the engine for many trials on one Ray cluster that users already run. It sizes
concurrency from the cluster's resources (``max_concurrent_trials`` and each trial's CPUs/GPUs) and
retries a failed trial (``FailureConfig``). Each trial is a single-process ``train_loop`` (no process
group), with its own checkpoints, so Tune's retry resumes it where it stopped.

The sweep is resumable without Tune's experiment restore: a finished trial leaves ``result.json`` in its
folder (and its checkpoints are deleted: the result supersedes them), and a rerun's trial returns that at
once. So killing the whole command loses at most the
unfinished trials' steps since their last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dapt.pipeline.fsutil import atomic_write_json

RESULT = "result.json"


@dataclass(frozen=True)
class Trial:
    """One proxy run, as Tune's ``param_space`` carries it (plain values)."""

    trial_id: str
    fraction: float
    budget: int
    folder: str
    spec: dict[str, Any]
    """The ``TrainSpec`` as a dict (data, steps, checkpoints and logs in ``folder``)."""
    kill_marker: str | None = None
    """Tests: the trial's process exits at half its steps once (when the marker file does not exist)."""

    @property
    def key(self) -> str:
        """What the trial's result depends on: its spec (model, data, optimiser, steps; the spec's
        ``fingerprint`` is this key's own, set by the planner). A cached result with another key is
        stale and the trial runs again."""
        return self.spec.get("state_key") or ""


def trial_name(fraction: float, budget: int) -> str:
    return f"r{fraction:.3f}-d{budget}"


def read_result(folder: Path, key: str | None = None) -> dict[str, Any] | None:
    """The finished trial's result; None when there is none or it belongs to another ``key``."""
    try:
        done = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return done if key is None or done.get("key") == key else None


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: train, then report the last monitor row (validation bits-per-byte)."""
    from ray import tune

    from dapt.train.loop import train_loop
    from dapt.train.spec import TrainSpec

    trial = Trial(**config["trial"])
    folder = Path(trial.folder)
    done = read_result(folder, trial.key)
    if done is None:
        spec = TrainSpec.from_dict(trial.spec)
        if trial.kill_marker and not Path(trial.kill_marker).exists():
            Path(trial.kill_marker).write_text(f"{os.getpid()}\n")
            _exit_at(spec, max(1, spec.steps // 2))
        summary = train_loop(spec)
        rows = [json.loads(x) for x in (Path(spec.log_dir) / "monitor.jsonl").read_text().splitlines() if x]
        if not rows:
            raise RuntimeError(f"trial {trial.trial_id}: the monitor wrote no rows (no validation split?)")
        base, last = rows[0], rows[-1]
        done = {
            "key": trial.key,
            "trial_id": trial.trial_id,
            "fraction": trial.fraction,
            "budget": trial.budget,
            "steps": summary["steps"],
            "tokens": summary["tokens"],
            "params": summary.get("params_total"),
            "domain_bpb": last["domain_bpb"],
            "general_bpb": last["general_bpb"],
            "base_domain_bpb": base["domain_bpb"],
            "base_general_bpb": base["general_bpb"],
            "attempts": len(summary.get("attempts") or []) or None,
            "seconds": summary.get("train_seconds"),
        }
        atomic_write_json(folder / RESULT, done)
        # The result is the trial's output; its checkpoints only served a retry. They are the size of the
        # model's training state (1.7 GB for a 135M model with Adam), so 15 trials of the demo kept 25 GB.
        shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)
    tune.report({k: v for k, v in done.items() if isinstance(v, int | float)})


def _exit_at(spec: Any, step: int) -> None:
    """The fault hook of the tests: the process dies (no exception, no cleanup) once rank 0 has logged
    ``step``, after the checkpoints before it, as a trial whose node is lost would."""
    import threading

    marker = Path(spec.log_dir) / "killed-at"

    def watch() -> None:
        import time

        while True:
            metrics = Path(spec.log_dir) / "metrics.jsonl"
            if metrics.exists():
                steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x]
                if steps and steps[-1] >= step:
                    marker.write_text(str(steps[-1]))
                    os._exit(1)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def run_trials(
    trials: list[Trial],
    storage: Path,
    concurrency: int,
    cpus: float,
    gpus: float,
    max_failures: int,
    run_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """All trials through a Tune ``Tuner``; the results in trial order (finished ones read back). With
    ``run_dir``, the count of finished trials goes where ``dapt status --watch`` reads it."""
    from ray import tune

    from dapt.pipeline.progress import StepProgress

    todo = [t for t in trials if read_result(Path(t.folder), t.key) is None]
    record = StepProgress(run_dir, "sweep", "proxy trials", len(trials), "trials", len(trials) - len(todo))

    class Count(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            record.update()

    if todo:
        trainable = tune.with_resources(run_trial, {"cpu": cpus, "gpu": gpus})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([asdict(t) for t in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=str(storage.resolve()),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[Count()],
                verbose=0,
            ),
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        missing = [t.trial_id for t in todo if read_result(Path(t.folder), t.key) is None]
        if missing:
            first = f": {errors[0]}" if errors else ""
            raise RuntimeError(f"sweep: trials {missing} failed after {max_failures} retries{first}")
    return [read_result(Path(t.folder), t.key) for t in trials]
