"""Experiment tracking: one parent run per run folder, one child per stage, curves from train's rank 0.

The runner (pipeline/stages.py) opens a :class:`Tracker` per command. Each stage that runs gets a child
run: the stage's config sections as parameters, the numbers of its manifest as metrics (kept/rejected per
reason, the achieved ratio, tokens, eval deltas and p-values) and its human-readable outputs (the report,
the model card) as artifacts. Train's rank 0 streams its curves into the same child through a
:class:`TrackingTarget`, a small picklable value carried by the worker's spec.

The parent run's id is kept in ``<run_dir>/tracking.json``, so ``dapt clean`` today and ``dapt train``
tomorrow land under one parent, as ``dapt run`` does; a rerun after a crash adds a new child for the stage
it reruns (tagged with its attempt), so a resumed training keeps the curve of the attempt that died.

Tracking is a copy of what the run folder already holds: any failure of a backend (not installed, server
down, disk full) is one warning and tracking stops for that command; it never fails a stage.

Why the clients and not Ray Train's ``setup_mlflow`` / ``setup_wandb``: those create a new run per
training, while here the run already exists (the driver created the stage's child, with its parent) and
rank 0 only logs into it; MLflow's ``MlflowClient`` and ``wandb.init(id=..., resume="allow")`` do exactly
that.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import string
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dapt.pipeline.fsutil import atomic_write_json

log = logging.getLogger("dapt.tracking")

STATE_FILE = "tracking.json"
MANIFEST_FRAME_KEYS = frozenset(
    {
        "stage",
        "fingerprint",
        "config",
        "inputs",
        "upstream",
        "started",
        "versions",
        "git_revision",
        "placement",
    }
)
"""Manifest keys the runner writes for every stage: logged as tags or params, not as metrics."""
ARTIFACT_SUFFIXES = (".html", ".md", ".png")
"""Which files of a stage's output become artifacts: what a person opens (the report, its figures, the
model card), not the data or weights, which stay in the run folder."""
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True)
class TrackingTarget:
    """Where one stage's child run lives: enough for another process (train's rank 0) to log into it."""

    backend: str
    run_id: str
    uri: str | None = None
    project: str | None = None
    entity: str | None = None
    mode: str = "offline"
    directory: str | None = None
    group: str | None = None
    name: str | None = None


def metric_key(*parts: str) -> str:
    """A key both backends accept: MLflow allows letters, digits, ``_-. /`` only."""
    return _KEY_CHARS.sub("_", "/".join(p for p in parts if p))[:250]


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config as ``a.b.c -> value`` strings (lists kept whole as JSON, cut at MLflow's limit)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, default=str)
        out[_KEY_CHARS.sub("_", prefix)[:250]] = text[:MAX_PARAM_CHARS]
    return out


MANIFEST_PREFIX = "manifest"
"""Manifest numbers are keyed ``manifest/<path>``: MLflow's UI groups charts by the part before the first
slash, so they stay in one group apart from train's curves (``train/loss``, ``monitor/domain_bpb``)."""


def manifest_metrics(result: dict[str, Any], limit: int = 2000) -> dict[str, float]:
    """Every finite number in a stage's own manifest keys, keyed ``manifest/<its path>``.

    Lists of rows with a ``name`` (eval's metric rows: base, adapted, delta, p-value per source and task)
    are keyed by that name; other lists are skipped (per-rank rows, figure names). Booleans become 0/1 so
    ``significant`` and ``shortfall`` can be filtered on."""
    out: dict[str, float] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if len(out) >= limit:
            return
        if isinstance(node, bool):
            out[metric_key(*path)] = float(node)
        elif isinstance(node, int | float):
            if math.isfinite(node):
                out[metric_key(*path)] = float(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, str(k)))
        elif isinstance(node, list) and node and all(isinstance(r, dict) and "name" in r for r in node):
            for row in node:
                walk({k: v for k, v in row.items() if k != "name"}, (*path, str(row["name"])))

    for key, value in result.items():
        if key not in MANIFEST_FRAME_KEYS and key != "outputs":
            walk(value, (MANIFEST_PREFIX, key))
    return out


def output_artifacts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in ARTIFACT_SUFFIXES)


def _warn(what: str, exc: BaseException) -> None:
    msg = f"tracking: {what} failed ({type(exc).__name__}: {exc}); the run goes on without it"
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


class Tracker:
    """The no-op tracker (``tensorboard`` and ``none``); the base of the real ones. Every public method
    of a subclass is wrapped so a backend error warns once and turns the tracker off."""

    enabled = False

    def start_stage(self, stage: str, params: dict[str, Any], tags: dict[str, str]) -> TrackingTarget | None:
        return None

    def end_stage(
        self, target: TrackingTarget | None, ok: bool, metrics: dict[str, float], artifacts: Iterable[Path]
    ) -> None:
        return None

    def close(self, ok: bool) -> None:
        return None


class _Guarded(Tracker):
    enabled = True

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a tracking failure never fails a stage
            self.enabled = False
            _warn(what, exc)
            return None

    def start_stage(self, stage, params, tags):
        return self._guard(f"starting the {stage} child run", self._start_stage, stage, params, tags)

    def end_stage(self, target, ok, metrics, artifacts):
        if target is not None:
            self._guard("logging the stage's results", self._end_stage, target, ok, metrics, list(artifacts))

    def close(self, ok):
        self._guard("closing the parent run", self._close, ok)


def _new_id() -> str:
    """A W&B run id: 8 lowercase letters and digits, as W&B makes its own."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


class MlflowTracker(_Guarded):
    """MLflow through ``MlflowClient``: explicit run ids, so the driver and rank 0 write the same child."""

    def __init__(self, tcfg: Any, run_name: str, run_dir: Path) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import RunStatus  # noqa: F401 (fail here if the client is incomplete)

        self.run_dir = run_dir
        if tcfg.uri:
            self.uri, artifacts = tcfg.uri, None
        else:
            store = (run_dir / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            self.uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = tcfg.experiment or run_name
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(experiment, artifact_location=artifacts)
        )
        state = _read_state(run_dir)
        parent = None
        if state.get("backend") == "mlflow" and state.get("uri") == self.uri and state.get("parent_run_id"):
            try:
                parent = self.client.get_run(state["parent_run_id"]).info.run_id
                self.client.update_run(parent, status="RUNNING")
            except Exception:  # deleted or another store: start a new parent
                parent = None
        if parent is None:
            parent = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={"dapt.run_dir": str(run_dir.resolve())}
            ).info.run_id
            atomic_write_json(
                run_dir / STATE_FILE, {"backend": "mlflow", "uri": self.uri, "parent_run_id": parent}
            )
        self.parent_run_id = parent

    def _start_stage(self, stage, params, tags):
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=stage,
            tags={"mlflow.parentRunId": self.parent_run_id, "dapt.stage": stage, **tags},
        )
        run_id = run.info.run_id
        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(run_id, params=items[i : i + 100])
        return TrackingTarget(backend="mlflow", run_id=run_id, uri=self.uri, name=stage)

    def _end_stage(self, target, ok, metrics, artifacts):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(target.run_id, metrics=items[i : i + 1000])
        for path in artifacts:
            self.client.log_artifact(target.run_id, str(path))
        self.client.set_terminated(target.run_id, status="FINISHED" if ok else "FAILED")

    def _close(self, ok):
        config = self.run_dir / "config.yaml"  # the resolved config the runner wrote for this command
        if config.is_file():
            self.client.log_artifact(self.parent_run_id, str(config))
        self.client.set_terminated(self.parent_run_id, status="FINISHED" if ok else "FAILED")


class WandbTracker(_Guarded):
    """Weights & Biases. W&B has no nested runs: a stage's run joins the parent's *group* (its id kept in
    ``tracking.json``) with the stage as ``job_type``, which is how W&B groups one pipeline's jobs.

    A W&B run lives in the process that called ``wandb.init``; the driver and train's rank 0 are
    different processes, so each opens the stage's run by id with ``resume="allow"`` and finishes it
    (offline, each opening is its own ``offline-run-*`` folder with the same id; ``wandb sync`` joins them).
    W&B's service writes the offline file after ``finish`` returns, so it may lag a moment behind."""

    def __init__(self, tcfg: Any, run_name: str, run_dir: Path) -> None:
        import wandb

        self.wandb = wandb
        self.directory = str(run_dir.resolve())
        self.project = tcfg.experiment or run_name
        self.entity, self.mode = tcfg.entity, tcfg.mode
        state = _read_state(run_dir)
        group = state.get("group") if state.get("backend") == "wandb" else None
        if not group:
            group = f"{run_name}-{_new_id()}"
            atomic_write_json(run_dir / STATE_FILE, {"backend": "wandb", "group": group})
        self.group = group
        self._pending: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def _target(self, stage: str) -> TrackingTarget:
        return TrackingTarget(
            backend="wandb",
            run_id=_new_id(),
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            directory=self.directory,
            group=self.group,
            name=stage,
        )

    def _start_stage(self, stage, params, tags):
        # Nothing is opened yet: the driver opens the stage's run once, when the stage ends (train's
        # rank 0 may have it open until then); the config and tags wait for that.
        target = self._target(stage)
        self._pending[target.run_id] = (params, [f"{k}={v}" for k, v in tags.items()][:50])
        return target

    def _end_stage(self, target, ok, metrics, artifacts):
        params, tags = self._pending.pop(target.run_id, ({}, []))
        run = open_wandb(target, config=params, tags=tags)
        run.summary.update(metrics)
        if artifacts:
            art = self.wandb.Artifact(f"{target.name}-{target.run_id}", type=target.name)
            for path in artifacts:
                art.add_file(str(path))
            run.log_artifact(art)
        run.finish(exit_code=0 if ok else 1)

    def _close(self, ok):
        return None


def open_wandb(target: TrackingTarget, **kwargs: Any):
    import wandb

    os.makedirs(target.directory or ".", exist_ok=True)
    return wandb.init(
        id=target.run_id,
        resume="allow",
        project=target.project,
        entity=target.entity,
        mode=target.mode,
        dir=target.directory,
        group=target.group,
        job_type=target.name,
        name=target.name,
        settings=wandb.Settings(silent=True, console="off"),
        **kwargs,
    )


BACKENDS = {"mlflow": MlflowTracker, "wandb": WandbTracker}


def open_tracker(cfg: Any) -> Tracker:
    """The run's tracker; the no-op one for ``tensorboard`` / ``none`` or when the backend cannot start
    (one warning naming why, e.g. ``pip install 'dapt-pipeline[mlflow]'``)."""
    backend = cfg.tracking.backend
    if backend not in BACKENDS:
        return Tracker()
    try:
        return BACKENDS[backend](cfg.tracking, cfg.name, cfg.run_path)
    except ImportError as exc:
        _warn(f"{backend} (install it with `pip install 'dapt-pipeline[{backend}]'`)", exc)
    except Exception as exc:
        _warn(f"starting {backend} at {cfg.tracking.uri or cfg.run_path}", exc)
    return Tracker()


class StepLogger:
    """Rank 0's side: a row of training curves per logged step into the stage's child run."""

    def __init__(self, target: TrackingTarget) -> None:
        self.target = target
        self.enabled = True
        self._run = None
        self._client = None
        try:
            if target.backend == "mlflow":
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=target.uri)
            elif target.backend == "wandb":
                self._run = open_wandb(target)
            else:
                self.enabled = False
        except Exception as exc:
            self.enabled = False
            _warn("opening the train run for curves", exc)

    def log(self, prefix: str, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = int(row["step"])
        values = {
            metric_key(prefix, k): float(v)
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        try:
            if self._client is not None:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                self._client.log_batch(
                    self.target.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()]
                )
            elif self._run is not None:
                self._run.log(values, step=step)
        except Exception as exc:
            self.enabled = False
            _warn("logging a training step", exc)

    def close(self) -> None:
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as exc:
                _warn("finishing the train run", exc)


def target_dict(target: TrackingTarget | None) -> dict[str, Any] | None:
    return asdict(target) if target is not None else None
