"""Ray runtime: a private local Ray on loopback; `dapt cluster up` + `dapt submit` against a real head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from dapt.pipeline.cluster import free_port

CFG = """\
name: sub
run_dir: {run_dir}
sources:
  - {{name: fin, kind: domain, paths: ["{data}/fin.jsonl"]}}
model: {{from_config: {{}}}}
"""


def test_local_ray_binds_loopback(ray_local) -> None:
    import ray

    assert ray_local["node_ip"] == "127.0.0.1"
    assert ray.util.get_node_ip_address() == "127.0.0.1"

    @ray.remote
    def where() -> str:
        return ray.util.get_node_ip_address()

    assert ray.get(where.remote()) == "127.0.0.1"


def _dapt(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def ray_head():
    port, dash = free_port(), free_port()
    up = _dapt("cluster", "up", "--port", str(port), "--dashboard-port", str(dash), "--num-cpus", "2")
    assert up.returncode == 0, up.stderr
    try:
        yield port, f"http://127.0.0.1:{dash}"
    finally:
        down = _dapt("cluster", "down", "--port", str(port))
        assert down.returncode == 0, down.stderr


def test_cluster_listens_on_loopback_only(ray_head) -> None:
    port, address = ray_head
    head_pids = {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if f"dapt-ray-{port}" in " ".join(p.info["cmdline"] or [])
    }
    assert head_pids
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in head_pids
    ]
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening


def test_submit_stage_succeeds_and_failing_job_exits_nonzero(ray_head, tmp_path: Path) -> None:
    _, address = ray_head
    (tmp_path / "fin.jsonl").write_text(
        "\n".join(
            f'{{"text": "Net income rose {i}% to $1{i}.5 million in the quarter ended March 31, as '
            f'revenue from interest and fees grew across every segment of the bank."}}'
            for i in range(20)
        )
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CFG.format(run_dir=tmp_path / "run", data=tmp_path))

    ok = _dapt("submit", "--address", address, "--config", str(cfg), "clean")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "SUCCEEDED" in ok.stdout
    assert (tmp_path / "run" / "clean" / "_DONE").exists()

    # mix needs the split and tokenizer stages first: the job fails, and so does `dapt submit`.
    bad = _dapt("submit", "--address", address, "--config", str(cfg), "mix")
    assert bad.returncode != 0
    assert "FAILED" in bad.stdout and "dapt split" in bad.stdout
