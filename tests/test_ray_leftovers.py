"""A driver SIGKILLed while its local Ray starts leaves the raylet's agents running (reparented, deaf
to SIGTERM); the next dapt command stops them, even when the driver died before it could record
their pids, and leaves every other process alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dapt.pipeline.ray_runtime import reap_orphans

DRIVER = r"""
import json, os, signal, sys, time
import psutil
from dapt.pipeline import ray_runtime
ray_runtime.init_ray(None, 1)
deadline = time.time() + 60
names = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
while time.time() < deadline:
    agents = [c.pid for c in psutil.Process().children(recursive=True) if c.name() in names or
              any(n in " ".join(c.cmdline()) for n in names)]
    if len(agents) == 2:
        break
    time.sleep(0.2)
time.sleep(5.5)  # past the second record write
record = ray_runtime._record_file(os.getpid())
rec = json.loads(record.read_text())
rec["processes"] = []  # as if killed before the agents' pids were recorded
if os.environ["KILLED"] == "inside ray.init":  # the record written before ray.init: no session yet
    rec["session_dir"] = None
record.write_text(json.dumps(rec))
print(json.dumps({"agents": agents}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("killed", ["after ray.init", "inside ray.init"])
def test_agents_of_a_driver_killed_before_recording_them_are_stopped(tmp_path: Path, killed: str) -> None:
    env = {**os.environ, "DAPT_STATE_DIR": str(tmp_path / "state"), "KILLED": killed}
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=180
        )
        assert out.returncode == -9, out.stderr[-2000:]
        agents = json.loads(out.stdout.strip().splitlines()[-1])["agents"]
        assert len(agents) == 2
        time.sleep(2)
        alive = [p for p in agents if psutil.pid_exists(p)]
        assert alive == agents  # the Ray leftovers the reaper must handle
        records = list((tmp_path / "state" / "local-ray").glob("driver-*.json"))
        assert len(records) == 1
        assert bool(json.loads(records[0].read_text())["session_dir"]) == (killed == "after ray.init")

        os.environ["DAPT_STATE_DIR"] = env["DAPT_STATE_DIR"]
        try:
            stopped = reap_orphans()
        finally:
            del os.environ["DAPT_STATE_DIR"]
        assert set(agents) <= set(stopped)
        deadline = time.time() + 10
        while any(psutil.pid_exists(p) for p in agents) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(psutil.pid_exists(p) for p in agents)
        assert bystander.poll() is None  # not a Ray leftover: untouched
        assert not records[0].exists()
    finally:
        bystander.kill()
        for p in agents if "agents" in locals() else []:
            try:
                psutil.Process(p).kill()
            except psutil.Error:
                pass
