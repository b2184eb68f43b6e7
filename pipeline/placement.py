"""Where a stage's work runs: in the driver, or inside one Ray task that asks for what the work needs.

Why: ``dapt submit`` runs the driver on the head node. clean drives Ray Data, mix Ray tasks and train Ray
Train from there, which is right: their heavy work already runs on the cluster. The tokenizer stage
(sentencepiece, loading and resizing the base model) and the eval stage (base and adapted models,
bits-per-byte, lm-eval, the precision variants) did their work in the driver, so a 7B eval ran on the
head's CPU while the GPUs idled. A row of the stage table with ``placement="worker"`` therefore has its
function run in one Ray task that asks for the resources the row's ``resources`` function returns
(:class:`TaskResources`); ``ray.stage_placement: driver`` runs it in the driver instead (pdb, or a test
that monkeypatches the driver process).

The contract with the runner (``pipeline/stages.py``), which stays the only writer of manifests:

- **Payload.** The task gets a :class:`StageTask`: the run config (with ``run_dir`` made absolute), the
  stage's row, its temporary output folder, its work folder, its log file, fingerprint, state key,
  ``force`` and ``extra``. It rebuilds the same :class:`~dapt.pipeline.stages.StageContext` (the same
  restricted config view) with a logger appending to the same stage log (``run_dir`` is on shared
  storage on a real cluster), and returns a :class:`StageOutcome`: the stage's result and a
  :class:`Placement` that the runner writes into the manifest.
- **Attempts.** The task empties its output folder first: a retried attempt must not see what an
  earlier one half wrote. System failures (a worker or node dying) are retried ``MAX_RETRIES`` times;
  application errors are not (``retry_exceptions=False``): rerunning a bug or a bad config only wastes time.
- **Errors.** A DaptError raised in the task reaches the caller as that class with its one-line message
  (unwrapped from ``RayTaskError.cause``); any other exception also arrives as its own class, chained to
  the RayTaskError, and its traceback is in the stage log, written by the task.
- **Environment.** The variables the stages rely on (offline switches, ``TOKENIZERS_PARALLELISM``,
  every ``DAPT_*``) travel in the task's ``runtime_env.env_vars``, only those set. The same values give
  the same runtime env, so Ray reuses the worker process (and its imported torch) across stage runs.
- **Working folder.** Relative paths in a config (``model.name_or_path: ./models/x``, ``eval.task_dirs``)
  mean "relative to where dapt was started". The task changes into the driver's working folder for
  the call when that folder exists on its node (always on one machine, on a cluster when it is on shared
  storage) and back afterwards; elsewhere it stays in its own folder (under ``dapt submit``, the job's
  copy of the project).

The same module holds the runner's shared-storage check (:func:`check_shared_storage`): both decide what
a stage needs from the cluster before it starts.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapt.pipeline.errors import ConfigError, DaptError
from dapt.pipeline.threads import use_cpus

if TYPE_CHECKING:
    import logging

    from dapt.pipeline.config import RunConfig
    from dapt.pipeline.stages import StageContext, StageSpec

MAX_RETRIES = 2
"""Retries of a stage task after a system failure (its worker or node died). Each retry starts over."""

FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
"""Environment variables a stage task gets from the driver when set there (besides every ``DAPT_*``)."""

SHARED_CHECK_FILES = 64
"""Most input files probed per stage: one per folder, since a folder's files share one storage."""


@dataclass(frozen=True)
class TaskResources:
    """What a stage's Ray task asks for. ``memory`` (bytes) is a scheduling hint, not a limit; it is
    capped at what a suitable node offers, so a hint can delay a task but never make it unschedulable."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    reason: str = ""
    """Where the request comes from, for messages (``eval.device: cuda``)."""


@dataclass(frozen=True)
class NodeView:
    node_id: str
    ip: str
    cpus: float
    gpus: float
    memory: float


@dataclass(frozen=True)
class ClusterView:
    """The alive nodes' total resources, read once in the driver, for the resources functions."""

    nodes: tuple[NodeView, ...]
    private: bool
    """The driver started this Ray itself (one node on this machine; nothing will join it)."""

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def max_cpus(self) -> float:
        return max((n.cpus for n in self.nodes), default=0.0)

    def fit(self, res: TaskResources) -> TaskResources | None:
        """``res`` with CPUs and memory capped at the best node that has the GPUs asked for; None when
        no alive node has the GPUs (or a CPU, when CPUs are asked for)."""
        fits = [n for n in self.nodes if n.gpus >= res.num_gpus and n.cpus >= min(res.num_cpus, 1.0)]
        if not fits:
            return None
        cpus = min(res.num_cpus, max(n.cpus for n in fits))
        memory = res.memory
        if memory is not None:
            best = max((n.memory for n in fits if n.cpus >= cpus), default=0.0)
            memory = min(memory, int(best)) if best > 0 else None
        return replace(res, num_cpus=cpus, memory=memory)

    def summary(self) -> str:
        return f"{len(self.nodes)} node(s), {sum(n.cpus for n in self.nodes):g} CPU(s), {self.gpus:g} GPU(s)"


def cluster_view() -> ClusterView:
    import ray

    from dapt.pipeline import ray_runtime

    nodes = tuple(
        NodeView(
            node_id=n["NodeID"],
            ip=n.get("NodeManagerAddress", ""),
            cpus=float(n.get("Resources", {}).get("CPU", 0.0)),
            gpus=float(n.get("Resources", {}).get("GPU", 0.0)),
            memory=float(n.get("Resources", {}).get("memory", 0.0)),
        )
        for n in ray.nodes()
        if n.get("Alive")
    )
    return ClusterView(nodes=nodes, private=ray_runtime.started_here())


@dataclass(frozen=True)
class Placement:
    """Where a stage's body ran, as the manifest records it (``placement``)."""

    where: str
    """``driver`` or ``ray_task``."""
    pid: int
    host: str
    node_id: str | None = None
    node_ip: str | None = None
    driver_pid: int | None = None
    resources: dict[str, Any] | None = None
    """What the task asked for (``asked``) and what Ray assigned it (``assigned``)."""
    body_seconds: float | None = None
    """The stage function's own time in the task; the manifest's ``seconds`` minus this is the overhead."""

    def manifest(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def driver_placement() -> Placement:
    return Placement(where="driver", pid=os.getpid(), host=socket.gethostname())


@dataclass(frozen=True)
class StageTask:
    """The payload of a stage task: small, picklable, everything the task needs to rebuild the context."""

    run_config: RunConfig
    spec: StageSpec
    out_dir: str
    work_dir: str
    log_path: str
    fingerprint: str
    state_key: str
    force: bool
    extra: dict[str, Any] = field(default_factory=dict)
    driver_pid: int = 0
    driver_cwd: str = ""


def stage_task(cfg: RunConfig, ctx: StageContext, log_path: Path) -> StageTask:
    """The payload for ``ctx``, every path absolute: the task's working folder may be another one."""
    return StageTask(
        run_config=cfg.model_copy(update={"run_dir": str(cfg.run_path.resolve())}),
        spec=ctx.spec,
        out_dir=str(ctx.out_dir.resolve()),
        work_dir=str(ctx.work_dir.resolve()),
        log_path=str(log_path.resolve()),
        fingerprint=ctx.fingerprint,
        state_key=ctx.state_key,
        force=ctx.force,
        extra=dict(ctx.extra),
        driver_pid=os.getpid(),
        driver_cwd=os.getcwd(),
    )


@dataclass(frozen=True)
class StageOutcome:
    result: dict[str, Any]
    placement: Placement


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A ``module:function`` string imported now, or a callable as is."""
    if callable(ref):
        return ref
    module_name, fn_name = ref.split(":")
    return getattr(importlib.import_module(module_name), fn_name)


def wants_worker(cfg: RunConfig, spec: StageSpec) -> bool:
    """The stage's body runs in a Ray task: its row asks for it and the config does not say ``driver``."""
    return spec.placement == "worker" and cfg.ray.stage_placement != "driver"


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k in FORWARDED_ENV or k.startswith("DAPT_")}


def task_resources(ctx: StageContext, cluster: ClusterView, say: Callable[[str], None]) -> TaskResources:
    """The row's request fitted to the cluster. A request no node of a private local Ray can meet is a
    ConfigError at once (nothing will ever join it); on a joined cluster the task is submitted as asked
    and waits (an autoscaler may add the node), with a line saying so."""
    spec = ctx.spec
    try:
        asked = resolve(spec.resources)(ctx, cluster) if spec.resources else TaskResources()
    except DaptError as e:  # e.g. a missing upstream output: logged like a failure of the stage itself
        ctx.log.error("%s", e)
        raise
    fitted = cluster.fit(asked)
    if fitted is not None:
        return fitted
    need = f"{asked.num_gpus:g} GPU(s) and {max(min(asked.num_cpus, 1.0), 0):g}+ CPU(s)"
    where = ctx.run_config.config_path if ctx.run_config and ctx.run_config.config_path else "config"
    why = f"{asked.reason}: " if asked.reason else ""
    if cluster.private:
        msg = f"{where}: {why}stage {spec.name!r} needs a Ray node with {need}, but the local Ray has "
        msg += cluster.summary()
        ctx.log.error("%s", msg)
        raise ConfigError(msg)
    say(f"{spec.name}: waiting for a Ray node with {need} (the cluster has {cluster.summary()} now)")
    return asked


def _empty(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        n += 1
    return n


def run_task_body(task: StageTask) -> StageOutcome:
    """Runs inside the Ray task: the stage function with a context rebuilt from the payload."""
    import ray

    from dapt.pipeline import quiet
    from dapt.pipeline.stages import StageConfig, StageContext, open_stage_log

    quiet.install()  # before the stage imports transformers (and through it torchao), as the CLI does
    spec = task.spec
    before = os.getcwd()
    moved = bool(task.driver_cwd) and task.driver_cwd != before and os.path.isdir(task.driver_cwd)
    if moved:
        os.chdir(task.driver_cwd)
    logger, handler = open_stage_log(Path(task.log_path), spec.name)
    rt = ray.get_runtime_context()
    assigned = {k: v for k, v in rt.get_assigned_resources().items() if not k.startswith("node:")}
    use_cpus(int(assigned.get("CPU", 0)))
    try:
        try:
            removed = _empty(Path(task.out_dir))
            logger.info(
                "running in a Ray task on node %s (%s), pid %d, driver pid %d, cwd %s%s",
                rt.get_node_id(),
                ray.util.get_node_ip_address(),
                os.getpid(),
                task.driver_pid,
                os.getcwd(),
                f"; removed {removed} entr(y/ies) an earlier attempt left in the output folder"
                if removed
                else "",
            )
            ctx = StageContext(
                cfg=StageConfig(task.run_config, spec),
                spec=spec,
                out_dir=Path(task.out_dir),
                work_dir=Path(task.work_dir),
                log=logger,
                fingerprint=task.fingerprint,
                state_key=task.state_key,
                force=task.force,
                extra=dict(task.extra),
                run_config=task.run_config,
            )
            t0 = time.perf_counter()
            result = resolve(spec.target)(ctx) or {}
        except DaptError as e:
            logger.error("%s", e)
            raise
        except BaseException:
            logger.exception("stage %s failed", spec.name)
            raise
        return StageOutcome(
            result=result,
            placement=Placement(
                where="ray_task",
                pid=os.getpid(),
                host=socket.gethostname(),
                node_id=rt.get_node_id(),
                node_ip=ray.util.get_node_ip_address(),
                driver_pid=task.driver_pid,
                resources={"assigned": assigned},
                body_seconds=round(time.perf_counter() - t0, 3),
            ),
        )
    finally:
        logger.removeHandler(handler)
        handler.close()
        if moved:
            os.chdir(before)


def run_in_driver(ctx: StageContext) -> StageOutcome:
    """The stage body in this process (``placement="driver"`` rows, or ``ray.stage_placement: driver``)."""
    try:
        result = resolve(ctx.spec.target)(ctx) or {}
    except DaptError as e:
        ctx.log.error("%s", e)
        raise
    except BaseException:
        ctx.log.exception("stage %s failed", ctx.name)
        raise
    return StageOutcome(result=result, placement=driver_placement())


_REMOTE: Any = None


def _remote() -> Any:
    """The task function, made remote once per process (Ray exports it again after a re-init)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(run_task_body)
    return _REMOTE


def run_in_task(task: StageTask, res: TaskResources, log: logging.Logger) -> StageOutcome:
    """Run the stage body in one Ray task and wait for it; errors arrive as described in the module
    docstring. The driver logs only what the task could not (its worker or node died)."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    opts: dict[str, Any] = {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "max_retries": MAX_RETRIES,
        "retry_exceptions": False,
        "name": f"dapt:{task.spec.name}",
    }
    if res.memory:
        opts["memory"] = int(res.memory)
    env = forwarded_env()
    if env:
        opts["runtime_env"] = {"env_vars": env}
    log.info(
        "submitting the stage body as a Ray task: %s", {k: v for k, v in opts.items() if k != "runtime_env"}
    )
    ref = _remote().options(**opts).remote(task)
    try:
        outcome = ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise
    except RayTaskError as e:
        from dapt.pipeline.ray_runtime import raise_task_cause

        raise_task_cause(e)
    except RayError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.error(
            "stage %s: its Ray task failed (after up to %d retries): %s", task.spec.name, MAX_RETRIES, first
        )
        raise
    asked = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "memory": res.memory, "reason": res.reason}
    resources = {
        "asked": {k: v for k, v in asked.items() if v not in (None, "")},
        **(outcome.placement.resources or {}),
    }
    return replace(outcome, placement=replace(outcome.placement, resources=resources))


# ------------------------------------------------------------------------------------- shared storage
_CHECKED: set[tuple[str, str]] = set()
"""(GCS address, path) pairs this process has checked: each path once per command and cluster."""


def _ray_for_stage(cfg: RunConfig) -> bool:
    """Whether Ray is connected now, joining the configured cluster first (the stage, which uses Ray,
    joins it anyway; join first, then check). No Ray call when the stage would start a private Ray."""
    from dapt.pipeline import ray_runtime

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return True
    if not ray_runtime.configured_address(cfg.ray):
        return False  # a Ray this stage starts itself is private and local: one node
    ray_runtime.init_ray(cfg.ray)
    return True


def multi_node_gcs() -> str | None:
    """The GCS address when this process (Ray initialised) is connected to a cluster with more than one
    alive node; None otherwise, with no Ray call when Ray is the private local one it started."""
    from dapt.pipeline import ray_runtime

    if ray_runtime.started_here():
        return None
    import ray

    if sum(1 for n in ray.nodes() if n.get("Alive")) < 2:
        return None
    return ray.get_runtime_context().gcs_address


def probe_on_every_node(paths: Iterable[str], gcs: str | None = None) -> list[str]:
    """``cluster.check_shared_paths`` for the paths not yet probed on this cluster by this process (Ray
    initialised); returns those probed now, none on a single-node Ray. ``gcs``: from
    :func:`multi_node_gcs` when the caller already asked."""
    gcs = gcs or multi_node_gcs()
    if gcs is None:
        return []
    from dapt.pipeline.cluster import check_shared_paths

    todo = [p for p in dict.fromkeys(map(str, paths)) if (gcs, p) not in _CHECKED]
    if todo:
        check_shared_paths(todo)
        _CHECKED.update((gcs, p) for p in todo)
    return todo


def _sample(paths: Iterable[str], limit: int = SHARED_CHECK_FILES) -> list[str]:
    """One local file per folder (a folder's files share one storage), at most ``limit``."""
    seen: dict[str, str] = {}
    for p in sorted(str(p) for p in paths):
        if "://" in p:
            continue
        seen.setdefault(str(Path(p).parent), p)
    return list(seen.values())[:limit]


def check_shared_storage(
    cfg: RunConfig, spec: StageSpec, inputs: list[dict[str, Any]], uses_ray: bool, say: Callable[[str], None]
) -> list[str]:
    """Before a stage that puts work on Ray starts: on a multi-node cluster, ``run_dir`` and the stage's
    local input files (``spec.shared_paths``, else the fingerprinted ``inputs``) must be visible on every
    node (``dapt.pipeline.cluster.check_shared_paths``, which raises a one-line ConfigError naming the
    path and the node). Returns the paths probed now.

    Skipped with no Ray call for single-node runs, and for stages whose work stays in the driver (split,
    report, publish: the driver sees its own files; a later stage that reads them on other nodes checks
    ``run_dir`` itself)."""
    if not uses_ray or not _ray_for_stage(cfg):
        return []
    gcs = multi_node_gcs()
    if gcs is None:
        return []
    local = spec.shared_paths(cfg) if spec.shared_paths else [f["path"] for f in inputs]
    wanted = [str(cfg.run_path.resolve()), *(str(Path(p).resolve()) for p in _sample(map(str, local)))]
    todo = probe_on_every_node(wanted, gcs)
    if todo:
        say(f"{spec.name}: shared storage checked: {len(todo)} path(s) visible on every Ray node")
    return todo
