"""`dapt cluster up|down` (a local Ray head on loopback, token auth on) and `dapt submit`.

The head gets its own ``--temp-dir`` so that `down` stops exactly the processes of that head, not
every Ray process on the machine (`ray stop` would also kill other users' or tests' local Rays).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dapt.pipeline.errors import DaptError
from dapt.pipeline.ray_runtime import LOOPBACK, ray_env

DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265


def _temp_dir(port: int) -> Path:
    # Short path: Ray's unix sockets live under it and must stay under 108 characters.
    return Path(f"/tmp/dapt-ray-{port}")


def _bin(name: str) -> str:
    """A console script from this interpreter's environment (works without an activated venv)."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


def _child_env() -> dict[str, str]:
    ray_env()
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def cluster_up(
    port: int = DEFAULT_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    num_cpus: int | None = None,
    object_store_gb: float = 1.0,
) -> str:
    """Start a Ray head on 127.0.0.1 with the dashboard (job server) on 127.0.0.1. Returns its
    job-submission address. Token auth stays at Ray's default (on)."""
    tmp = _temp_dir(port)
    cmd = [
        _bin("ray"),
        "start",
        "--head",
        f"--node-ip-address={LOOPBACK}",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--temp-dir={tmp}",
        # The agents' default ports (52365, ...) are taken by any other Ray on the machine, e.g. a private
        # `ray.init` of another process; the job server then answers "No available agent". Pick free ones.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--object-store-memory={int(object_store_gb * (1 << 30))}",
        "--disable-usage-stats",
    ]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise DaptError(f"ray start failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return f"http://{LOOPBACK}:{dashboard_port}"


def _head_pids(port: int) -> list[int]:
    import psutil

    tmp = str(_temp_dir(port))
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if tmp in cmd and p.info["pid"] != os.getpid():
            pids.append(p.info["pid"])
    return pids


def cluster_down(port: int = DEFAULT_PORT, timeout: float = 15.0) -> int:
    """Stop the head started by `cluster_up` on this port. Returns how many processes were stopped."""
    pids = _head_pids(port)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and _head_pids(port):
        time.sleep(0.3)
    for pid in _head_pids(port):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _client_auth_env() -> None:
    """A token-auth cluster needs clients in token mode; Ray reads the token from ~/.ray/auth_token."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists()
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
        "env_vars": {"PYTHONUNBUFFERED": "1"},
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
