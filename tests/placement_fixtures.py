"""Tiny worker-placed stages for the placement tests (no tests here).

The rows use these functions as callable targets, and the module is registered with Ray's cloudpickle
*by value*: a Ray worker of the session (or of a test cluster) then runs them without importing this
module, which is not on its import path (workers import from the folder the driver started Ray in).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.stages import STAGES, StageContext, StageSpec


def register_by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where(ctx: StageContext) -> dict:
    """Writes one file and says which process ran it and what it saw of the environment."""
    (ctx.out_dir / "where.txt").write_text(f"{os.getpid()}\n")
    return {
        "ran": {
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "env": {k: os.environ.get(k) for k in ("DAPT_TEST_ENV", "HF_HUB_OFFLINE")},
            "run_dir": str(ctx.run_dir),
            "sources": [s.name for s in ctx.cfg.sources],
        }
    }


def config_error(ctx: StageContext) -> dict:
    (ctx.out_dir / "half.txt").write_text("half\n")
    raise ConfigError("run.yaml: probe.key: a bad value, found inside the task")


def input_error(ctx: StageContext) -> dict:
    (ctx.out_dir / "half.txt").write_text("half\n")
    raise InputError("fin.jsonl:3: no field 'text', found inside the task")


def crash_once(ctx: StageContext) -> dict:
    """The first attempt writes half its output and kills its own worker process (a system failure, as
    a dying node would be); the retry records what it found in the output folder when it started."""
    marker = Path(os.environ["DAPT_TEST_CRASH_MARKER"])
    found = sorted(p.name for p in ctx.out_dir.iterdir())
    if not marker.exists():
        (ctx.out_dir / "half.txt").write_text("half\n")
        marker.write_text(f"{os.getpid()}\n")
        os._exit(1)
    (ctx.out_dir / "full.txt").write_text("full\n")
    return {"retry": {"found_at_start": found, "first_pid": int(marker.read_text()), "pid": os.getpid()}}


def probe_row(target=where, **kw) -> StageSpec:
    """A worker stage that reads only the sources (so it needs no upstream), its files as inputs."""
    return StageSpec(
        "probe", target, (), ("sources",), STAGES["clean"].inputs, "placement test", placement="worker", **kw
    )
