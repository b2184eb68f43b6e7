"""The one place that connects to Ray.

``RAY_ADDRESS`` or ``ray.address`` in the config joins that cluster. Otherwise a private local Ray
starts bound to 127.0.0.1 with a bounded object store. Ray 2.60 binds to the machine's external
address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set (verified on this kind of machine), so we
set it before Ray is imported; a laptop run must never listen on the network.

Token authentication is asked for explicitly (``RAY_AUTH_MODE=token``): Ray then creates
``~/.ray/auth_token`` for a new local cluster and a client sends it, and it does not print its
"token authentication is enabled by default" warning on every start. A user's own setting wins (a
cluster started with auth disabled needs ``RAY_AUTH_MODE=disabled`` in the client's environment).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

_RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AUTH_MODE": "token",
    # Ray Train's placement-group cleaner polls the State API every second; a local Ray without a
    # dashboard has none, so it logs this line each time. Only this message is dropped.
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Failed to query Ray Train Controller actor state",
    # A task's return value under this size goes back inline to its owner, the driver, and lives in the
    # driver's heap until consumed. Ray's 100 KB default let a sort shuffle's small map outputs pass
    # through the driver: clean's driver grew from 0.31 to 0.55 GB between 0.5 and 2 GB of input
    # (docs/scale.md); at 1 KB they go to the object store. Read by each worker at start, so a cluster
    # dapt did not start gets it through the job's runtime_env (WORKER_ENV) or its nodes' environment.
    "RAY_max_direct_call_object_size": "1024",
}
WORKER_ENV = {"RAY_max_direct_call_object_size": _RAY_ENV_DEFAULTS["RAY_max_direct_call_object_size"]}
"""What a job's workers must see on a cluster dapt did not start (``dapt submit`` puts it in the job's
``runtime_env``): read by each worker process at its start, not by the driver."""

log = logging.getLogger("dapt.ray")
_owned = False
_owned_gcs: str | None = None
_joined = False


def ray_env() -> None:
    """Environment Ray must see before it is imported (idempotent; user settings win)."""
    for k, v in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


ray_env()


def init_ray(ray_cfg: Any = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect to (or start) Ray once per process. Returns how it connected, for manifests."""
    import ray

    if ray.is_initialized():
        return {"address": "existing", "node_ip": ray.util.get_node_ip_address()}
    address = configured_address(ray_cfg)
    global _owned, _owned_gcs, _joined
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        _owned, _joined = False, True
        return {"address": address, "node_ip": ray.util.get_node_ip_address()}
    store_gb = getattr(ray_cfg, "object_store_memory_gb", 1.5) if ray_cfg else 1.5
    cpus = num_cpus or (getattr(ray_cfg, "num_cpus", None) if ray_cfg else None) or os.cpu_count() or 1
    reap_orphans()
    _write_record(None)  # a driver killed inside ray.init leaves this: no session folder known yet
    ray.init(
        address="local",
        num_cpus=cpus,
        object_store_memory=int(store_gb * (1 << 30)),
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    _owned = True
    _owned_gcs = ray.get_runtime_context().gcs_address
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"local Ray bound to {ip}, not {LOOPBACK}; refusing to run on the network")
    log.info("started local Ray on %s (%d CPUs, %.1f GB object store)", ip, cpus, store_gb)
    _record_started()
    return {"address": "local", "node_ip": ip, "num_cpus": cpus}


def call_in_task(fn: Any, *args: Any, name: str, num_cpus: float = 1, max_retries: int = 2) -> Any:
    """``fn(*args)`` in one Ray task, waited for: how a stage hands one bounded piece of work (an index
    build, a counting pass) to a worker so the driver holds only its small result. System failures are
    retried ``max_retries`` times, application errors never; a DaptError raised there is raised here as
    itself (:func:`raise_task_cause`)."""
    import ray
    from ray.exceptions import RayTaskError

    ref = (
        ray.remote(fn)
        .options(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False, name=name)
        .remote(*args)
    )
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise
    except RayTaskError as e:
        raise_task_cause(e)


def _remote(fn: Any, name: str, num_cpus: float, max_retries: int) -> Any:
    import ray

    return ray.remote(fn).options(
        num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False, name=name
    )


def map_in_tasks(
    fn: Any, calls: list[tuple[Any, ...]], name: str, num_cpus: float = 1, max_retries: int = 2
) -> Any:
    """``fn(*args)`` for every args tuple, one Ray task each, all submitted at once; yields the results
    in call order, fetching one at a time, so the driver holds one result while the rest wait in the
    object store. Errors as :func:`call_in_task`."""
    import ray
    from ray.exceptions import RayTaskError

    remote = _remote(fn, name, num_cpus, max_retries)
    refs = [remote.remote(*args) for args in calls]
    try:
        for i, ref in enumerate(refs):
            try:
                yield ray.get(ref)
            except RayTaskError as e:
                raise_task_cause(e)
            refs[i] = None  # let the object store free it
    finally:
        for ref in refs:
            if ref is not None:
                ray.cancel(ref, force=True)


def complete_in_tasks(
    fn: Any,
    calls: Iterable[tuple[Any, ...]],
    name: str,
    num_cpus: float = 1,
    max_retries: int = 2,
    in_flight: int | None = None,
) -> Any:
    """``fn(*args)`` for every args tuple, one Ray task each; yields ``(call index, result)`` as tasks
    finish, with at most ``in_flight`` submitted and not yet fetched (default: twice the cluster's CPUs,
    so a worker that finishes finds the next task already queued at its raylet). ``calls`` is read
    lazily, so a million calls never exist as a million task specs. Errors as :func:`call_in_task`.

    Why not Ray Data for a pass of independent tasks (mix's tokenisation): measured on 2 pinned cores,
    Ray Data's streaming executor kept 1.55 cores of workers busy, these tasks 1.92 (200 MB: 47.1 s ->
    35.5 s), and there is no executor, stats actor or autoscaling coordinator beside them."""
    import ray
    from ray.exceptions import RayTaskError

    if in_flight is None:
        in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    remote = _remote(fn, name, num_cpus, max_retries)
    pending: dict[Any, int] = {}
    todo = enumerate(calls)
    try:
        while True:
            for i, args in itertools.islice(todo, max(0, in_flight - len(pending))):
                pending[remote.remote(*args)] = i
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as e:
                raise_task_cause(e)
            yield i, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def raise_task_cause(e: Any) -> None:
    """Re-raise a RayTaskError as what the task raised: a DaptError as itself with its one-line message
    (no Ray traceback around it), any other exception as its own class chained to the RayTaskError."""
    from dapt.pipeline.errors import DaptError

    cause = e.cause
    if isinstance(cause, DaptError):
        raise cause from None
    if isinstance(cause, Exception):
        raise cause from e
    raise e


def configured_address(ray_cfg: Any = None) -> str | None:
    """The cluster :func:`init_ray` would join (``RAY_ADDRESS``, else ``ray.address``); None: it would
    start a private local Ray."""
    return os.environ.get("RAY_ADDRESS") or (getattr(ray_cfg, "address", None) if ray_cfg else None)


def dashboard_hint(ray_cfg: Any = None) -> str:
    """Where the Ray dashboard of the configured cluster is, for ``dapt status``: the job server's URL
    when the address is one, else the head's host at Ray's default dashboard port."""
    address = configured_address(ray_cfg)
    if not address:
        return "none (each command starts a local Ray without one; `dapt cluster up` runs a dashboard)"
    if address.startswith(("http://", "https://")):
        return address
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    return f"http://{host}:8265 (Ray's default dashboard port on the head)"


def started_here() -> bool:
    """This process started the Ray it is connected to: a private local Ray, one node on this machine
    (the shared-storage check and the placement's feasibility check need no Ray call to know that).
    Compared by GCS address, so a Ray joined later by a bare ``ray.init`` does not count."""
    import sys

    ray = sys.modules.get("ray")
    if not _owned or ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().gcs_address == _owned_gcs


# ------------------------------------------------------------------------------------------ leftovers
# A SIGKILLed driver takes its GCS and raylet with it, but not the raylet's agents (dashboard agent,
# runtime-env agent: measured on Ray 2.60, they are reparented and ignore SIGTERM). Each driver that
# starts a local Ray records its session folder and the pids (with start times) of the processes it
# started; the next `dapt` command (cli.main) stops those of a driver that is gone. Two ways to know a
# leftover, because the agents start a few seconds after ray.init returns and a driver killed in that
# window never recorded their pids: a recorded pid whose start time still matches, or a process that
# holds a file open in the dead driver's session folder (every agent keeps its logs there open; the
# folder's name carries the driver's pid and start time, so no other cluster's process matches). Either
# way only processes whose parent is gone (reparented to init) are touched: a process that still has
# its Ray parent belongs to a live cluster. A driver killed inside ray.init has not learnt its session
# folder yet: its first record, written before ray.init, names the folder Ray will create (its name ends
# in the driver's pid; it is created after the driver started), and the reaper looks for that.


def _record_dir() -> Path:
    return Path(os.environ.get("DAPT_STATE_DIR") or Path.home() / ".dapt") / "local-ray"


def _record_file(pid: int) -> Path:
    return _record_dir() / f"driver-{pid}.json"


def _started_here() -> list[dict[str, float]]:
    import psutil

    me = psutil.Process()
    out = []
    for child in me.children(recursive=True):
        try:
            out.append({"pid": child.pid, "create_time": child.create_time()})
        except psutil.Error:
            continue
    return out


def _ray_temp_root() -> str:
    """Where a local Ray puts its session folders (``RAY_TMPDIR``, ``TMPDIR`` or ``/tmp``, then ``ray``)."""
    try:
        from ray._common.utils import get_default_ray_temp_dir

        return get_default_ray_temp_dir()
    except Exception:  # a private API: fall back to Ray's documented default
        return "/tmp/ray"


def _session_dir() -> str | None:
    """The running local Ray's session folder (``/tmp/ray/session_<time>_<pid>``), if Ray says."""
    try:
        from ray._private import worker

        return worker._global_node.get_session_dir_path()
    except Exception:  # a private API: the pid record still works without it
        return None


def _write_record(session_dir: str | None) -> None:
    import psutil

    from dapt.pipeline.fsutil import atomic_write_json

    me = psutil.Process()
    record = {
        "driver": me.pid,
        "driver_started": me.create_time(),
        "session_dir": session_dir,
        "sessions_under": _ray_temp_root(),
        "processes": _started_here() if session_dir else [],
    }
    try:
        _record_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_json(_record_file(me.pid), record)
    except OSError as e:  # a read-only home must not stop a run
        log.info("could not record local Ray pids: %s", e)


def _record_started(session_dir: str | None = None) -> None:
    """Record this driver's Ray session and processes now and again shortly after (agents start late)."""
    import threading

    session_dir = session_dir or _session_dir()
    _write_record(session_dir)
    t = threading.Timer(5.0, _write_record, args=(session_dir,))
    t.daemon = True
    t.start()


def _orphaned(proc: Any) -> bool:
    parent = proc.parent()
    return parent is None or parent.pid == 1


def _holds_file_in(pid: int, folder: str) -> bool:
    prefix = folder.rstrip("/") + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _pending_session(rec: dict[str, Any]) -> str | None:
    """The session folder of a driver killed inside ray.init: the newest ``session_*_<driver pid>`` under
    its Ray temp folder changed since the driver started (an older driver with the same pid finished
    writing its folder before this one could have that pid)."""
    root, driver, started = rec.get("sessions_under"), rec.get("driver"), rec.get("driver_started")
    if not root or driver is None or started is None:
        return None
    found = []
    for d in Path(root).glob(f"session_*_{int(driver)}"):
        try:
            mtime = d.stat().st_mtime
            if d.is_dir() and mtime >= float(started) - 1:
                found.append((mtime, str(d)))
        except OSError:
            continue
    return max(found)[1] if found else None


def _driver_alive(rec: dict[str, Any]) -> bool:
    """The recorded driver still runs (the same process, not a later one given its pid)."""
    import psutil

    try:
        proc = psutil.Process(int(rec.get("driver", -1)))
        started = rec.get("driver_started")
        return started is None or abs(proc.create_time() - float(started)) < 1e-3
    except (psutil.Error, ValueError):
        return False


def _leftovers_of(rec: dict[str, Any]) -> list[Any]:
    """The orphaned processes a dead driver's record points at (see the comment above)."""
    import psutil

    found: dict[int, Any] = {}
    for p in rec.get("processes", []):
        try:
            proc = psutil.Process(int(p["pid"]))
            if _orphaned(proc) and abs(proc.create_time() - float(p["create_time"])) < 1e-3:
                found[proc.pid] = proc
        except (psutil.Error, KeyError, ValueError):
            continue
    session = rec.get("session_dir") or _pending_session(rec)
    if session and Path(session).name.startswith("session_"):
        for proc in psutil.process_iter():
            try:
                if proc.pid not in found and _orphaned(proc) and _holds_file_in(proc.pid, session):
                    found[proc.pid] = proc
            except psutil.Error:
                continue
    return list(found.values())


def reap_orphans() -> list[int]:
    """Stop the Ray processes of earlier drivers that died without shutting Ray down."""
    import psutil

    from dapt.pipeline.fsutil import read_json

    stopped: list[int] = []
    folder = _record_dir()
    for f in sorted(folder.glob("driver-*.json")) if folder.is_dir() else []:
        try:
            rec = read_json(f)
        except (OSError, ValueError):
            continue
        if _driver_alive(rec):
            continue
        for proc in _leftovers_of(rec):
            try:
                proc.kill()
                stopped.append(proc.pid)
            except psutil.Error:
                continue
        f.unlink(missing_ok=True)
    if stopped:
        log.info("stopped %d Ray process(es) left by a killed earlier run: %s", len(stopped), stopped)
    return stopped


def shutdown_ray() -> None:
    """Stop Ray if this process started it, or disconnect from the cluster :func:`init_ray` joined (the
    cluster keeps running). A Ray someone else connected in this process (a test's) is left alone."""
    global _owned, _joined
    import ray

    if _owned and ray.is_initialized():
        ray.shutdown()
        _record_file(os.getpid()).unlink(missing_ok=True)
    elif _joined and ray.is_initialized():
        ray.shutdown()
    _owned = _joined = False
