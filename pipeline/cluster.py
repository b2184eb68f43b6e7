"""`dapt cluster up|down` (a local Ray cluster of N nodes on loopback, token auth on), `dapt submit`, and
`check_shared_paths` (is a path visible on every node?).

Kept whole: the supervisor, `up`/`down`, `submit` and the shared-path probe are the whole cluster surface of
the frame and share the state file and the process helpers; each section is marked below.

Why a supervisor process: `ray start` cannot add a second node on 127.0.0.1 (NOTES: it refuses, or leaves
loopback), but `ray.cluster_utils.Cluster` can, and a Cluster lives in a Python process. So `up` starts a
small detached supervisor (`python -m dapt.pipeline.cluster supervise ...`) that owns the Cluster, records
every process it started in a state file, and shuts the Cluster down on SIGTERM. Its GCS, dashboard and
raylets die with it even on SIGKILL (Ray spawns them with PR_SET_PDEATHSIG), but the raylets' agents
(DashboardAgent, RuntimeEnvAgent) are grandchildren and survive an orphaning (checked here): so `down`
stops the recorded pids *and* their descendants, by pid and creation time, never by name or pattern.

Why token auth holds in this mode: Ray decides the mode per process from ``RAY_AUTH_MODE`` in the
environment (`ray start` sets ``RAY_AUTH_MODE=token`` for itself when a token exists, see
`ray._private.authentication.authentication_token_setup`); the supervisor runs with it set, so its GCS,
raylets and dashboard inherit it. The token is what Ray's own loader finds: ``RAY_AUTH_TOKEN``, else the
file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (created, mode 0600, when none exists).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError, DaptError
from dapt.pipeline.fsutil import atomic_write_json, read_json
from dapt.pipeline.ray_runtime import LOOPBACK, WORKER_ENV, ray_env

DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
STATE_VERSION = 1
UP_TIMEOUT_S = 180.0


def _temp_dir(port: int) -> Path:
    # Short path: Ray's unix sockets live under it and must stay under 108 characters.
    return Path(f"/tmp/dapt-ray-{port}")


def default_state_path(port: int = DEFAULT_PORT) -> Path:
    """Where `up` records what it started when ``--state`` is not given (one file per GCS port)."""
    return Path.home() / ".dapt" / f"cluster-{port}.json"


def _bin(name: str) -> str:
    """A console script from this interpreter's environment (works without an activated venv)."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


def _child_env() -> dict[str, str]:
    """The environment of the cluster's processes: loopback binding, token auth, the venv first on PATH
    (a job's entrypoint `dapt ...` is resolved from the raylet's PATH)."""
    ray_env()
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "token"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


# ---- token ------------------------------------------------------------------------------------------


def ensure_token() -> str:
    """Where the cluster's token comes from (for messages; never the token itself). Creates
    ``~/.ray/auth_token`` (or the file ``RAY_AUTH_TOKEN_PATH`` names) when Ray would find none, because
    `ray start` and a `Cluster` would otherwise start with auth disabled or refuse to start."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if not (path.is_file() and path.read_text().strip()):
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token,
        )

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_new_authentication_token())
        print(f"generated a Ray auth token in {path}", flush=True)
    return str(path)


# ---- processes ------------------------------------------------------------------------------------


def _proc_record(p) -> dict[str, Any]:
    return {"pid": p.pid, "create_time": p.create_time(), "name": p.name()}


def _live(records: Iterable[dict[str, Any]]) -> list:
    """The recorded processes still running: same pid *and* creation time (a reused pid is not ours)."""
    import psutil

    out = []
    for r in records:
        try:
            p = psutil.Process(r["pid"])
            if abs(p.create_time() - r["create_time"]) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def process_tree(state: dict[str, Any]) -> list:
    """Every live process the cluster owns: the recorded ones and, found now, their descendants
    (Ray workers, job drivers, agents started after `up`)."""
    import psutil

    procs = {p.pid: p for p in _live(state["processes"])}
    for p in list(procs.values()):
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(procs.values())


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_processes(procs: list, first: list | None = None, timeout: float = 30.0) -> None:
    """SIGTERM ``first`` (the supervisor: it shuts its Cluster down in order), wait, then SIGTERM and
    finally SIGKILL whatever of ``procs`` is left. psutil checks that each pid still names the same
    process before signalling it."""
    import psutil

    steps = [(first, signal.SIGTERM, timeout)] if first else []
    for group, sig, wait in [*steps, (None, signal.SIGTERM, 10.0), (None, signal.SIGKILL, 10.0)]:
        for p in group if group is not None else procs:
            try:
                p.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        _, procs = psutil.wait_procs(procs, timeout=wait)
        if not procs:
            return


# ---- up / down ------------------------------------------------------------------------------------


def cluster_up(
    port: int = DEFAULT_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    num_cpus: int | None = None,
    object_store_gb: float = 1.0,
    nodes: int = 1,
    state_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Start a head and ``nodes - 1`` worker nodes on 127.0.0.1 (``num_cpus`` each), dashboard and job
    server on 127.0.0.1, token auth on. Returns the state it recorded (addresses, nodes, pids)."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1 (got {nodes})")
    if num_cpus is not None and num_cpus < 1:
        raise ConfigError(f"--cpus-per-node must be at least 1 (got {num_cpus})")
    if object_store_gb < 0.08:
        raise ConfigError(f"--object-store-gb must be at least 0.08 (got {object_store_gb})")
    for name, p in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 1024 <= p <= 65535:
            raise ConfigError(f"{name} must be between 1024 and 65535 (got {p})")
    if port == dashboard_port:
        raise ConfigError(f"--port and --dashboard-port must differ (both {port})")
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        raise ConfigError(
            f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} is set: `dapt cluster up` keeps token auth on; unset it"
        )
    state_path = Path(state_path) if state_path else default_state_path(port)
    if state_path.exists():
        old = read_json(state_path)
        if process_tree(old):
            raise DaptError(
                f"a cluster is already up ({state_path}): `dapt cluster down --state {state_path}`"
            )
        state_path.unlink()  # stale: everything it recorded is gone
    for name, p in (("--port", port), ("--dashboard-port", dashboard_port)):
        if _port_taken(p):
            raise DaptError(f"{LOOPBACK}:{p} is already in use (another Ray?): choose another {name}")
    token_source = ensure_token()
    cpus = num_cpus or max(1, (os.cpu_count() or 1) // nodes)
    spec = {
        "nodes": nodes,
        "cpus_per_node": cpus,
        "object_store_bytes": int(object_store_gb * (1 << 30)),
        "port": port,
        "dashboard_port": dashboard_port,
        "temp_dir": str(_temp_dir(port)),
        "state": str(state_path.resolve()),
        "token_source": token_source,
    }
    state_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = state_path.with_suffix(".log")
    with open(log_path, "wb") as log:
        sup = subprocess.Popen(
            [sys.executable, "-m", "dapt.pipeline.cluster", "supervise", json.dumps(spec)],
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Ray workers start in the supervisor's folder, as with `ray start`: so a driver run here with
            # RAY_ADDRESS resolves relative paths in tasks as it does itself. Never a folder holding a
            # `ray/` directory (it would shadow the package in workers, NOTES).
            cwd=state_path.parent if Path("ray").is_dir() else None,
            start_new_session=True,  # not killed by the terminal's Ctrl-C or hangup
        )
    deadline = time.time() + UP_TIMEOUT_S
    while not state_path.exists():
        if sup.poll() is not None or time.time() > deadline:
            import psutil

            if sup.poll() is None:
                stop_processes([psutil.Process(sup.pid), *psutil.Process(sup.pid).children(recursive=True)])
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            why = "timed out" if sup.returncode is None else f"exit {sup.returncode}"
            raise DaptError(f"cluster did not start ({why}; log {log_path}): {tail[0][-300:]}")
        time.sleep(0.5)
    return read_json(state_path)


def cluster_down(
    port: int = DEFAULT_PORT, state_path: str | os.PathLike | None = None, timeout: float = 30.0
) -> int:
    """Stop exactly what `cluster_up` recorded in the state file (and those processes' descendants).
    Returns how many processes were stopped."""

    state_path = Path(state_path) if state_path else default_state_path(port)
    if not state_path.exists():
        raise DaptError(
            f"no cluster recorded at {state_path} (already down, or started with another --state?)"
        )
    state = read_json(state_path)
    procs = process_tree(state)
    sup = _live([state["supervisor"]])
    stop_processes(procs, first=sup, timeout=timeout)
    left = [p for p in procs if _running(p)]
    if left:
        raise DaptError(f"could not stop pids {[p.pid for p in left]}; state kept in {state_path}")
    state_path.unlink()
    state_path.with_suffix(".log").unlink(missing_ok=True)  # kept only while something may need a post-mortem
    return len(procs)


def _supervise(spec: dict[str, Any]) -> int:
    """The detached supervisor: build the Cluster, record it, wait for SIGTERM, shut it down."""
    ray_env()
    import psutil
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": LOOPBACK, "object_store_memory": spec["object_store_bytes"]}
    head = {
        **common,
        "num_cpus": spec["cpus_per_node"],
        "gcs_server_port": spec["port"],
        "include_dashboard": True,
        "dashboard_host": LOOPBACK,
        "dashboard_port": spec["dashboard_port"],
        "temp_dir": spec["temp_dir"],
        # The agents' default ports (52365, ...) are taken by any other Ray on the machine, e.g. a private
        # `ray.init` of another process; the job server then answers "No available agent". Pick free ones.
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
    }
    stopping = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Like `ray start`, the head writes its address to Ray's default temp folder (/tmp/ray), which does
    # not exist on a fresh machine when the session lives elsewhere (seen: FileNotFoundError on a clean one).
    from ray._private.utils import get_ray_address_file

    Path(get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args=head, shutdown_at_exit=True)
    for i in range(1, spec["nodes"]):
        # Every node on one machine shares the session folder. With one runtime-env folder, a node that
        # first meets a job's working_dir deletes and re-extracts the copy that another node's job driver
        # is running in (seen here: "no file matches" for relative paths). One folder per node, as on
        # separate machines.
        cluster.add_node(
            **common, num_cpus=spec["cpus_per_node"], runtime_env_dir_name=f"runtime_resources_node{i}"
        )
    cluster.wait_for_nodes()
    # A job's driver gets its RAY_ADDRESS from the address file in the *cluster's* temp folder (Ray's job
    # supervisor reads it there, with no such file it falls back to "any Ray running on this machine").
    # Cluster writes it only under /tmp/ray, so with another Ray running (a private `ray.init`), jobs here
    # joined that one (seen: a submitted `dapt clean` connected to another GCS and failed to find its
    # working_dir package). `ray start --temp-dir` writes it there too.
    from ray._private.utils import write_ray_address

    write_ray_address(cluster.gcs_address, spec["temp_dir"])
    # Ray's Node installs its own SIGTERM handler (exit 1 after killing one node); ours stops them all.
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    dashboard = f"http://{LOOPBACK}:{spec['dashboard_port']}"
    mode = _wait_dashboard(dashboard)
    me = psutil.Process()
    nodes = [
        {
            "node_id": n.node_id,
            "head": n is cluster.head_node,
            "raylet_pid": n.all_processes["raylet"][0].process.pid,
            "num_cpus": spec["cpus_per_node"],
        }
        for n in cluster.list_all_nodes()
    ]
    state = {
        "version": STATE_VERSION,
        "gcs_address": cluster.address,
        "dashboard": dashboard,
        "auth_mode": mode,
        "token_source": spec["token_source"],
        "temp_dir": spec["temp_dir"],
        "supervisor": _proc_record(me),
        "nodes": nodes,
        "processes": [_proc_record(me), *(_proc_record(c) for c in me.children(recursive=True))],
    }
    atomic_write_json(spec["state"], state)
    print(f"cluster up: {json.dumps(state)}", flush=True)
    while not stopping:
        time.sleep(0.5)
    cluster.shutdown()
    print("cluster shut down", flush=True)
    return 0


def _wait_dashboard(url: str, wait_s: float = 90.0) -> str:
    """Wait for the job server and return the auth mode it reports (an unauthenticated endpoint)."""
    import urllib.request

    deadline = time.time() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/authentication_mode", timeout=5) as r:
                return json.loads(r.read())["authentication_mode"]
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def cluster_command(args: argparse.Namespace) -> int:
    """`dapt cluster up|down` as the CLI prints it."""
    if args.action == "up":
        st = cluster_up(
            args.port, args.dashboard_port, args.cpus_per_node, args.object_store_gb, args.nodes, args.state
        )
        if (
            st["auth_mode"] != "token"
        ):  # not expected (the supervisor runs with RAY_AUTH_MODE=token): never leave it up
            cluster_down(args.port, args.state)
            raise DaptError(
                f"the cluster came up with authentication_mode={st['auth_mode']}; stopped it again"
            )
        where = (
            f" --state {args.state}"
            if args.state
            else (f" --port {args.port}" if args.port != DEFAULT_PORT else "")
        )
        lines = [
            f"Ray cluster up: {len(st['nodes'])} node(s) on {LOOPBACK}, GCS {st['gcs_address']}, token auth on",
            f"  dashboard and job server: {st['dashboard']}",
            *(
                f"  {'head' if n['head'] else 'worker':<6} node {n['node_id']}  raylet pid {n['raylet_pid']}  "
                f"{n['num_cpus']} CPU"
                for n in st["nodes"]
            ),
            f"  token: {st['token_source']}; clients need RAY_AUTH_MODE=token",
            f"  submit: dapt submit --address {st['dashboard']} --config CONFIG STAGE",
            f"  stop:   dapt cluster down{where}",
        ]
        print("\n".join(lines))
    else:
        n = cluster_down(args.port, args.state)
        print(f"stopped {n} Ray process(es) of the cluster")
    return 0


# ---- shared storage -------------------------------------------------------------------------------


def _head_sha(path: Path, limit: int = 1 << 16) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(limit)).hexdigest()


def probe_paths(expected: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Run on each node: what is wrong with each path there (empty when all match the driver's view).
    A folder must hold the probe file the driver just wrote into it (same content): the same path on a
    local disk of another machine would exist but be empty. A file must have the driver's size and first
    64 KiB."""
    problems = {}
    for path, exp in expected.items():
        p = Path(path)
        try:
            if exp["kind"] == "dir":
                if not p.is_dir():
                    problems[path] = "no such folder"
                elif (p / exp["probe"]).read_text() != exp["token"]:
                    problems[path] = "another folder (the driver's probe file has other content)"
            elif not p.is_file():
                problems[path] = "no such file"
            elif p.stat().st_size != exp["size"] or _head_sha(p) != exp["sha"]:
                problems[path] = "another file (size or content differ from the driver's)"
        except FileNotFoundError:
            problems[path] = "the same folder name, but not the driver's folder (the probe file is missing)"
        except OSError as e:
            problems[path] = f"unreadable ({e.strerror})"
    return problems


def check_shared_paths(paths: Iterable[str | os.PathLike], timeout_s: float = 60.0) -> None:
    """Probe each path from a task pinned to each alive node of the connected Ray cluster; raise
    ConfigError naming the path and the node that cannot see it. Object-store URIs (``s3://``, ...) are
    skipped. Folders get a probe file written and removed again, so they must exist and be writable.
    Why: a `run_dir` on a node-local disk otherwise fails deep in a stage with a missing-file error."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        from dapt.pipeline.ray_runtime import init_ray

        init_ray()
    expected: dict[str, dict[str, Any]] = {}
    written: list[Path] = []
    try:
        for raw in paths:
            if "://" in str(raw):
                continue
            p = Path(raw).expanduser().resolve()
            if p.is_dir():
                probe = p / f".dapt-shared-probe-{uuid.uuid4().hex}"
                token = uuid.uuid4().hex
                try:
                    probe.write_text(token)
                except OSError as e:
                    raise ConfigError(f"{p}: cannot write a probe file into it ({e.strerror})") from None
                written.append(probe)
                expected[str(p)] = {"kind": "dir", "probe": probe.name, "token": token}
            elif p.is_file():
                expected[str(p)] = {"kind": "file", "size": p.stat().st_size, "sha": _head_sha(p)}
            else:
                raise ConfigError(
                    f"{p} does not exist on the driver's node ({ray.util.get_node_ip_address()})"
                )
        if not expected:
            return
        nodes = [n for n in ray.nodes() if n["Alive"]]
        remote = ray.remote(num_cpus=0, max_retries=1)(probe_paths)
        refs = {
            remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(expected): n
            for n in nodes
        }
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        bad = [(path, refs[ref], why) for ref in ready for path, why in sorted(ray.get(ref).items())] + [
            ("(every path)", refs[ref], f"no answer within {timeout_s:.0f} s") for ref in late
        ]
        if bad:
            path, node, why = bad[0]
            more = f" ({len(bad) - 1} more such path/node pair(s))" if len(bad) > 1 else ""
            raise ConfigError(
                f"{path} is not visible on Ray node {node['NodeID']} ({node['NodeManagerAddress']}): {why}{more}; "
                "run_dir and source paths must be on storage every node sees (docs/cluster.md)"
            )
    finally:
        for probe in written:
            probe.unlink(missing_ok=True)


# ---- submit ---------------------------------------------------------------------------------------


def _client_auth_env() -> None:
    """A token-auth cluster needs clients in token mode (an explicit address never turns it on by
    itself in Ray 2.60); Ray reads the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").exists()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _submit_with_retry(client, entrypoint: str, runtime_env: dict, wait_s: float = 90.0) -> str:
    """Submit, retrying while a freshly started head's job agent is not up yet ("No available agent")."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2)


def submit(
    config: str,
    stage: str,
    overrides: list[str],
    address: str | None = None,
    wait: bool = True,
    working_dir: str = ".",
) -> int:
    """Send ``dapt <stage> --config FILE overrides`` as a Ray job with the project as working dir;
    stream its logs and return 0 when it succeeded, 1 otherwise."""
    ray_env()
    _client_auth_env()
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or f"http://{LOOPBACK}:{DEFAULT_DASHBOARD_PORT}"
    if not address.startswith("http"):
        address = f"http://{address.split(':')[0]}:{DEFAULT_DASHBOARD_PORT}"
    deadline = time.time() + 30
    while True:
        try:
            client = JobSubmissionClient(address)
            break
        except ConnectionError:
            if time.time() > deadline:
                raise DaptError(f"no Ray job server answers at {address} (is the cluster up?)") from None
            time.sleep(1)
    entrypoint = shlex.join(["dapt", stage, "--config", config, *overrides])
    runtime_env = {
        "working_dir": working_dir,
        "excludes": [".venv", ".git", "runs", "data", "bench/out", "*.safetensors", "*.gguf"],
        "env_vars": {"PYTHONUNBUFFERED": "1", **WORKER_ENV},
    }
    job_id = _submit_with_retry(client, entrypoint, runtime_env)
    print(f"submitted {job_id} to {address}: {entrypoint}", flush=True)
    if not wait:
        return 0

    async def _tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(_tail())
    except Exception as e:  # log streaming is best effort; the status below is what counts
        print(f"(log stream ended: {e})", file=sys.stderr)
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _main(argv: list[str]) -> int:
    if argv[:1] == ["supervise"] and len(argv) == 2:
        return _supervise(json.loads(argv[1]))
    print(
        "usage: python -m dapt.pipeline.cluster supervise SPEC_JSON (started by `dapt cluster up`)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
