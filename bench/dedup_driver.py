"""Clean's dedup alone, over a finished clean run's work folder: the driver's memory after each Ray Data
execution, with Ray's default inline-result size against dapt's, in the same run.

Why this exists: between 0.5 and 2 GB of input, clean's driver grew from 0.31 to 0.55 GB RSS while
reading no data (docs/scale.md). tracemalloc showed no Python growth and pyarrow's pool held nothing; the
cause was Ray returning a task's result under ``max_direct_call_object_size`` (100 KB by default) inline
to its owner, the driver, so a sort shuffle's small map outputs passed through the driver's heap. dapt
sets it to 1 KB (``pipeline/ray_runtime.py``). This runs the dedup (phases B and C) twice in fresh
processes, once per setting, and prints the driver's RSS / anonymous memory at each step and the ratio.

Needs a work folder left by ``bench/scale.py`` (``bench/out/scale-runs/<size>-c2``) or any clean run:

    .venv/bin/python bench/dedup_driver.py bench/out/scale-runs/2gb-c2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY_DEFAULT = str(100 * 1024)


def child(folder: Path) -> None:
    """In a fresh process: dedup over ``folder``'s work dir, printing one JSON line per step."""
    import logging

    import psutil

    from dapt.corpora.clean.dedup import dedup
    from dapt.corpora.clean.plan import plan_shards
    from dapt.corpora.clean.stage import _ray_data_setup
    from dapt.pipeline.config import load_config
    from dapt.pipeline.ray_runtime import init_ray, shutdown_ray

    me = psutil.Process()

    def step(name: str) -> None:
        mi = me.memory_info()
        print(json.dumps({"step": name, "rss_gb": mi.rss / 1e9, "anon_gb": (mi.rss - mi.shared) / 1e9}))

    class Steps(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            step(record.getMessage().split(":")[0])

    import ray.data

    materialize = ray.data.Dataset.materialize

    def traced(self, *a, **k):  # every shuffle of the dedup ends in a materialize
        out = materialize(self, *a, **k)
        step("shuffle")
        return out

    ray.data.Dataset.materialize = traced
    cfg = load_config(folder / "scale.yaml", ["ray.num_cpus=2"])
    work = Path(cfg.run_dir) / ".work" / "clean"
    docs = sum(json.loads(p.read_text())["docs_in"] for p in (work / "shards").glob("*/summary.json"))
    log = logging.getLogger("dedup_driver")
    log.setLevel(logging.INFO)
    log.addHandler(Steps())
    init_ray(cfg.ray)
    _ray_data_setup()
    step("ray started")
    dedup(cfg.clean, plan_shards(cfg).shards, work, log, docs=docs)
    step("end")
    shutdown_ray()


def run(folder: Path, inline: str) -> list[dict]:
    env = dict(os.environ, RAY_max_direct_call_object_size=inline)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(folder)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode != 0:
        raise SystemExit(f"dedup over {folder} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a scale run folder holding scale.yaml and run/.work/clean")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.folder)
        return 0
    if not (args.folder / "scale.yaml").exists():
        raise SystemExit(f"{args.folder}: no scale.yaml (run bench/scale.py first)")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    peaks = {}
    for label, inline in (("ray default 100 KB", RAY_DEFAULT), ("dapt 1 KB", "1024")):
        steps = run(args.folder, inline)
        print(f"\n{label} inline results")
        for s in steps:
            print(f"  {s['step']:<24} rss {s['rss_gb']:.3f} GB  anon {s['anon_gb']:.3f} GB")
        peaks[label] = max(s["rss_gb"] for s in steps)
    base, new = peaks.values()
    print(f"\ndriver peak RSS: {base:.3f} -> {new:.3f} GB ({new / base:.2f}x)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
