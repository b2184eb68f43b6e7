"""The stage runner: fingerprints, up-to-date checks, atomic output folders, manifests, logs.

A stage is a plain function ``run(ctx: StageContext) -> dict``. It writes only under ``ctx.out_dir``
(a temporary folder) and, for state that must survive a crash such as checkpoints, under
``ctx.work_dir``. When it returns, the runner writes ``manifest.json`` into the temporary folder,
renames it to ``<run_dir>/<stage>/`` and writes the done marker last. A stage killed at any point
therefore leaves either the previous complete output or none, never half of one.

Staleness is by fingerprint: the hash of the stage's config sections, its input files and the
fingerprints of the upstream outputs it read. A changed upstream output changes every downstream
fingerprint, so downstream stages show as stale without any bookkeeping of their own.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dapt.pipeline import placement
from dapt.pipeline.config import RunConfig, dump_config
from dapt.pipeline.errors import InputError, StageMissingError
from dapt.pipeline.fsutil import (
    atomic_write_json,
    atomic_write_text,
    files_fingerprint,
    forget_input_facts,
    input_facts,
    read_json,
    resolve_output,
    stable_hash,
)
from dapt.pipeline.knobs import fingerprint_view, state_view
from dapt.pipeline.progress import mark_finished, mark_started
from dapt.pipeline.provenance import git_revision, library_versions
from dapt.pipeline.ray_runtime import init_ray
from dapt.pipeline.stage_table import STAGE_ORDER, STAGES, StageSpec, pipeline_stages
from dapt.pipeline.tracking import Tracker, TrackingTarget, manifest_metrics, open_tracker, output_artifacts

__all__ = [
    "STAGE_ORDER",
    "STAGES",
    "StageSpec",
    "pipeline_stages",
]  # the table, for importers

DONE_MARKER = "_DONE"
MANIFEST = "manifest.json"


def stage_dir(cfg: RunConfig, name: str) -> Path:
    return cfg.run_path / name


def is_done(cfg: RunConfig, name: str) -> bool:
    return (stage_dir(cfg, name) / DONE_MARKER).exists()


def read_manifest(cfg: RunConfig, name: str) -> dict[str, Any]:
    """The manifest of a finished stage; StageMissingError naming the stage to run if it is not."""
    d = stage_dir(cfg, name)
    if not (d / DONE_MARKER).exists():
        where = cfg.config_path or "<config>"
        raise StageMissingError(
            f"stage {name!r} has no finished output in {d}: run `dapt {name} --config {where}` first"
        )
    return read_json(d / MANIFEST)


def _config_view(cfg: RunConfig, spec: StageSpec, for_state: bool = False) -> dict[str, Any]:
    """The config sections that enter the stage's fingerprint (fields declared NOT_FINGERPRINTED left
    out, unless the stage describes the config in its output); ``for_state``: also without the
    CONTINUES_RUN fields (the state key)."""
    if for_state:
        view = {k: state_view(getattr(cfg, k)) for k in spec.config_keys}
    else:
        view = {
            k: cfg.section(k) if spec.describes_config else fingerprint_view(getattr(cfg, k))
            for k in spec.config_keys
        }
    for pattern in spec.ignore:
        top, *mid, leaf = pattern.split(".")
        if mid:  # ``sources.*.weight``: a key of every list item
            for item in view.get(top) or []:
                item.pop(leaf, None)
        elif isinstance(view.get(top), dict):  # ``mix.domain_fraction``: one key of a section
            view[top].pop(leaf, None)
    for key in spec.chooses:
        top, leaf = key.split(".")
        if key in getattr(cfg, "from_sweep", {}) and isinstance(view.get(top), dict) and leaf in view[top]:
            view[top][leaf] = "auto"
    return view


def compute_fingerprint(cfg: RunConfig, spec: StageSpec) -> tuple[str, dict[str, Any]]:
    """The stage's fingerprint now, and what went into it. Raises StageMissingError if an upstream
    output is missing (the fingerprint depends on it)."""
    parts: dict[str, Any] = {
        "stage": spec.name,
        "config": _config_view(cfg, spec),
        "inputs": files_fingerprint(spec.inputs(cfg)) if spec.inputs else [],
        "upstream": {u: read_manifest(cfg, u)["fingerprint"] for u in spec.needs},
    }
    return stable_hash(parts), parts


def compute_state_key(cfg: RunConfig, spec: StageSpec, parts: dict[str, Any]) -> str:
    """What a stage's resumable state (checkpoints) depends on: the fingerprint's parts with the config
    fields declared CONTINUES_RUN left out, so e.g. a longer training budget continues old checkpoints."""
    return stable_hash({**parts, "config": _config_view(cfg, spec, for_state=True), "kind": "state"})


def stage_status(cfg: RunConfig, name: str, memo: dict[str, str] | None = None) -> str:
    """``done`` (output matches config and inputs), ``stale`` (output exists but does not), ``missing``.

    A stage is done only if its upstreams are, so the question recurses; ``memo`` (one dict per
    ``dapt status``, filled here) answers each stage once instead of once per path through the stage
    graph (publish alone reached clean 33 times). Reuse a memo only while nothing is written."""
    memo = {} if memo is None else memo
    if name not in memo:
        memo[name] = _stage_status(cfg, name, memo)
    return memo[name]


def _stage_status(cfg: RunConfig, name: str, memo: dict[str, str]) -> str:
    if not is_done(cfg, name):
        return "missing"
    try:
        fp, _ = compute_fingerprint(cfg, STAGES[name])
    except StageMissingError:
        return "stale"
    if any(stage_status(cfg, u, memo) != "done" for u in STAGES[name].needs):
        return "stale"
    return "done" if read_json(stage_dir(cfg, name) / MANIFEST).get("fingerprint") == fp else "stale"


FRAME_ATTRIBUTES = frozenset({"ray", "tracking", "name", "run_path", "run_dir", "config_path", "from_sweep"})
"""Run-level facts every stage may read: where the run lives, how to reach Ray, where tracking goes."""


class StageConfig:
    """A stage's window on the run config: its declared sections and the run-level facts, nothing else.

    A stage that reads a section it did not declare would not be rerun when that section changes (it is
    not in its fingerprint), so such a read is an error at once rather than a stale result later.
    """

    def __init__(self, cfg: RunConfig, spec: StageSpec) -> None:
        self._cfg = cfg
        self._allowed = FRAME_ATTRIBUTES | {k.split(".")[0] for k in spec.config_keys}
        self._stage = spec.name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name == "sources_of" and "sources" in self._allowed:
            return self._cfg.sources_of
        if name not in self._allowed:
            raise AttributeError(
                f"stage {self._stage!r} reads config key {name!r} that it does not declare "
                f"(declared: {sorted(self._allowed - FRAME_ATTRIBUTES)}); read it from an upstream "
                "manifest or declare it in the stage table (pipeline/stages.py)"
            )
        return getattr(self._cfg, name)


@dataclass
class StageContext:
    """What a stage function gets: its config sections, its fingerprint, where to write, and how to read
    upstream outputs."""

    cfg: StageConfig
    spec: StageSpec
    out_dir: Path
    work_dir: Path
    log: logging.Logger
    fingerprint: str = ""
    """Computed by the runner (stages never recompute it): what the output depends on."""
    state_key: str = ""
    """Computed by the runner: the fingerprint without the CONTINUES_RUN fields (pipeline/knobs.py);
    key resumable state in ``work_dir`` (checkpoints) by this, so a run can be extended."""
    force: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    run_config: RunConfig | None = field(default=None, repr=False)
    tracking: TrackingTarget | None = None
    """The stage's child run in the experiment tracker (pipeline/tracking.py), for a stage that streams
    numbers while it runs (train's curves); None when tracking is off."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def run_dir(self) -> Path:
        return self.run_config.run_path if self.run_config else self.cfg.run_path

    def upstream_dir(self, name: str) -> Path:
        self._check_upstream(name)
        read_manifest(self.run_config, name)  # raises with the stage to run first
        return stage_dir(self.run_config, name)

    def upstream_manifest(self, name: str) -> dict[str, Any]:
        self._check_upstream(name)
        return read_manifest(self.run_config, name)

    def upstream_output(self, name: str, key: str) -> Path | None:
        """The path an upstream manifest names under ``outputs.<key>`` (relative to that stage's folder
        unless absolute); None when the manifest names none."""
        outputs = self.upstream_manifest(name).get("outputs") or {}
        return resolve_output(stage_dir(self.run_config, name), outputs.get(key))

    def require_output(self, name: str, key: str, folder: bool = False) -> Path:
        """Like :meth:`upstream_output`, but the path must exist (a file, or a folder if ``folder``);
        InputError naming the manifest and the stage to rerun otherwise."""
        path = self.upstream_output(name, key)
        if path is None or not (path.is_dir() if folder else path.is_file()):
            raise InputError(
                f"{stage_dir(self.run_config, name) / MANIFEST}: outputs.{key} is missing or not a "
                f"{'folder' if folder else 'file'} ({path}); re-run `dapt {name}`"
            )
        return path

    def _check_upstream(self, name: str) -> None:
        if name not in self.spec.needs:
            raise RuntimeError(
                f"stage {self.name!r} reads stage {name!r}, which it does not list in `needs` "
                "(its fingerprint would not follow that stage)"
            )


def open_stage_log(log_path: Path, name: str) -> tuple[logging.Logger, logging.Handler]:
    """The stage's logger with a handler appending to its log file; the driver and a stage's Ray task
    (pipeline/placement.py) both append to the same file, so the caller removes the handler after."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"dapt.{name}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def _setup_log(cfg: RunConfig, name: str) -> tuple[logging.Logger, Path, logging.Handler]:
    log_path = cfg.run_path / "logs" / f"{name}.log"
    logger, handler = open_stage_log(log_path, name)
    return logger, log_path, handler


def run_stage(
    cfg: RunConfig,
    name: str,
    force: bool = False,
    echo: Callable[[str], None] | None = print,
    extra: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Run one stage unless it is up to date. Returns its manifest.

    ``tracker``: the command's experiment tracker (``run_pipeline`` opens one for all its stages); None
    opens one for this stage alone when the config enables tracking."""
    if tracker is None and cfg.tracking.backend in ("mlflow", "wandb"):
        own = open_tracker(cfg)
        ok = False
        try:
            manifest = run_stage(cfg, name, force=force, echo=echo, extra=extra, tracker=own)
            ok = True
            return manifest
        finally:
            own.close(ok)
    tracker = tracker or Tracker()
    spec = STAGES[name]
    say = echo or (lambda _msg: None)
    fp, parts = compute_fingerprint(cfg, spec)  # raises StageMissingError first: nothing written
    final = stage_dir(cfg, name)
    if not force and is_done(cfg, name):
        manifest = read_json(final / MANIFEST)
        if manifest.get("fingerprint") == fp:
            say(f"{name}: up to date ({final})")
            return manifest

    on_worker = placement.wants_worker(cfg, spec)
    if on_worker:
        init_ray(cfg.ray)
    run_dir = cfg.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    # On a multi-node cluster: fail in seconds naming a path a node cannot see, before anything is written.
    placement.check_shared_storage(cfg, spec, parts["inputs"], spec.uses_ray or on_worker, say)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    tmp = run_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # a killed earlier attempt; resumable state lives in work_dir instead
    tmp.mkdir(parents=True)
    work = run_dir / ".work" / name
    work.mkdir(parents=True, exist_ok=True)

    logger, log_path, handler = _setup_log(cfg, name)
    logger.info("starting stage %s (fingerprint %s)", name, fp[:12])
    target = tracker.start_stage(name, parts["config"], {"dapt.fingerprint": fp[:12]})
    mark_started(run_dir, name)
    ctx = StageContext(
        cfg=StageConfig(cfg, spec),
        spec=spec,
        out_dir=tmp,
        work_dir=work,
        log=logger,
        fingerprint=fp,
        state_key=compute_state_key(cfg, spec, parts),
        force=force,
        extra=dict(extra or {}),
        run_config=cfg,
        tracking=target,
    )
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    say(f"{name}: running (log: {log_path})")
    try:
        if on_worker:  # the task logs its own errors into the same log; the driver only what it could not
            res = placement.task_resources(ctx, placement.cluster_view(), say)
            outcome = placement.run_in_task(placement.stage_task(cfg, ctx, log_path), res, logger)
        else:
            outcome = placement.run_in_driver(ctx)
    except BaseException as exc:
        mark_finished(run_dir, name, exc)
        tracker.end_stage(target, False, {}, [])
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
        forget_input_facts()  # the body wrote under run_dir and took its time: later stages look afresh
    seconds = time.perf_counter() - t0

    manifest: dict[str, Any] = {
        "stage": name,
        "fingerprint": fp,
        "config": parts["config"],
        "inputs": parts["inputs"],
        "upstream": parts["upstream"],
        "started": started.isoformat(),
        "seconds": round(seconds, 3),
        "versions": library_versions(),
        "git_revision": git_revision(),
        "placement": outcome.placement.manifest(),
    }
    for key, value in outcome.result.items():
        if key in manifest:
            raise RuntimeError(f"stage {name} returned reserved manifest key {key!r}")
        manifest[key] = value
    atomic_write_json(tmp / MANIFEST, manifest)
    shutil.copyfile(log_path, tmp / "log.txt")

    old = run_dir / f".{name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    atomic_write_text(final / DONE_MARKER, fp + "\n")  # last: only now is the stage done
    if old.exists():
        shutil.rmtree(old)
    mark_finished(run_dir, name)
    say(f"{name}: done in {seconds:.1f}s -> {final}")
    tracker.end_stage(target, True, manifest_metrics(manifest), output_artifacts(final))
    return manifest


def run_pipeline(
    cfg: RunConfig,
    stages: list[str] | None = None,
    force: bool = False,
    echo: Callable[[str], None] | None = print,
    extra: dict[str, Any] | None = None,
) -> None:
    """Run the stages in order (default: :func:`pipeline_stages`) under one tracker; input listings and
    fingerprints are taken once (``fsutil.input_facts``) and again after each stage that ran. After the
    sweep, an ``auto`` mix fraction takes its recommendation."""
    from dapt.pipeline.config import resolve_sweep_choices

    tracker = open_tracker(cfg)
    ok = False
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    mark_started(cfg.run_path, "run")  # `dapt status --watch` keeps watching between stages
    try:
        with input_facts():
            for name in stages or pipeline_stages(cfg):
                run_stage(cfg, name, force=force, echo=echo, extra=extra, tracker=tracker)
                if name == "sweep":
                    resolve_sweep_choices(cfg)
        ok = True
    finally:
        mark_finished(cfg.run_path, "run")
        tracker.close(ok)
