"""Helpers for tests that start a real local multi-node Ray cluster through `dapt cluster up`.

Every Ray client of such a cluster runs in a subprocess: the pytest process may hold the session's
private Ray (conftest) and must not join a second cluster. A cluster's token, state file and test data
live in a folder of its own (``mkdtemp``), not under pytest's ``tmp_path``: pytest keeps only the last
three session folders, so a concurrent pytest session deletes an older one's files, and a cluster whose
token file vanished refuses its own jobs ("InvalidAuthToken" from a job driver, seen here).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dapt.pipeline.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]


def client_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray auth/address settings, loopback enforced, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # clients must bind loopback too (NOTES)
    env.update(extra)
    return env


def dapt_cli(*args: str, env: dict[str, str], timeout: float = 300, cwd: Path | None = None):
    """``python -m dapt.pipeline.cli ARGS`` in a subprocess (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )


def run_py(code: str, env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a dedented Python snippet in a subprocess with ``args`` as ``sys.argv[1:]``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@contextlib.contextmanager
def local_cluster(
    nodes: int = 2, cpus_per_node: int = 1, object_store_gb: float = 0.3, prefix: str = "dapt-test-cluster-"
) -> Iterator[dict[str, Any]]:
    """A `dapt cluster up --nodes N` cluster with its own token file, stopped (``down``) on exit.

    Yields ``{"up", "state", "state_path", "env", "token", "port", "dashboard", "dir"}``: ``env`` is a
    client environment holding the cluster's token path (add ``RAY_AUTH_MODE=token`` for a raw Ray
    client; dapt commands set it themselves), ``dir`` a scratch folder removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    token = d / "token"
    token.write_text(secrets.token_hex(32))
    env = client_env(RAY_AUTH_TOKEN_PATH=str(token))
    port, dash = free_port(), free_port()
    state_path = d / "state.json"
    up = dapt_cli(
        "cluster", "up", "--nodes", str(nodes), "--cpus-per-node", str(cpus_per_node),
        "--object-store-gb", str(object_store_gb), "--port", str(port), "--dashboard-port", str(dash),
        "--state", str(state_path), env=env,
    )  # fmt: skip
    if up.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise AssertionError(up.stdout + up.stderr)
    state = json.loads(state_path.read_text())
    try:
        yield {"up": up, "state": state, "state_path": state_path, "env": env, "token": token.read_text(),
               "port": port, "dashboard": f"http://127.0.0.1:{dash}", "dir": d}  # fmt: skip
    finally:
        if state_path.exists():  # a test did not already run `down`
            dapt_cli("cluster", "down", "--state", str(state_path), env=env)
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)


# A node that joins a running cluster as a real raylet from its own process (`ray start` would refuse a
# second loopback node; the Node class is what Cluster.add_node uses). argv: GCS address [num_cpus].
# It prints {"node_id": ...} once up and runs until killed.
JOIN_NODE = """
    import json, signal, sys, time
    from dapt.pipeline.ray_runtime import ray_env
    ray_env()
    from ray._private.node import Node
    from ray._private.parameter import RayParams
    params = RayParams(
        gcs_address=sys.argv[1], node_ip_address="127.0.0.1",
        num_cpus=int(sys.argv[2]) if len(sys.argv) > 2 else 1, num_gpus=0,
        object_store_memory=200 << 20, min_worker_port=0, max_worker_port=0, node_manager_port=0,
        include_log_monitor=False, dashboard_agent_listen_port=None,
    )
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(json.dumps({"node_id": node.node_id}), flush=True)
    while True:
        time.sleep(1)
"""
