"""`dapt run` of configs/tiny.yaml three ways, in one run: direct, submitted to 1 node x C CPUs, and
submitted to N nodes x C/N CPUs (every node a separate raylet on 127.0.0.1, started by `dapt cluster up`).

    .venv/bin/python bench/cluster.py [--cpus 2] [--nodes 2] [--repeat 1]

Prints, per variant, the wall time of the whole command and of each stage (from the manifests), and the
ratios that issue 18 asks for:

* ``nodes``: N nodes x C/N CPUs over 1 node x C CPUs (same logical CPUs; what splitting the cluster into
  nodes costs: cross-node object transfers, one more raylet, placement across nodes);
* ``submit``: `dapt submit` to a 1-node cluster over the direct `dapt run` (the job's runtime-env upload,
  the job driver's start, the log streaming).

The cluster's start and stop are timed apart and not counted in either ratio. On one machine the nodes
share the cores, so ``nodes`` measures overhead, not speed-up: a real second machine would add its cores.
Timings are never asserted anywhere. Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "tiny.yaml"
DAPT = [sys.executable, "-m", "dapt.pipeline.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench/cluster.py: {' '.join(args[2:5])} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return secs


def _stages(run_dir: Path) -> dict[str, float]:
    out = {}
    for m in sorted(run_dir.glob("*/manifest.json")):
        out[m.parent.name] = json.loads(m.read_text())["seconds"]
    return out


def _variant(name: str, work: Path, cluster: tuple[int, int] | None, env: dict[str, str]) -> dict:
    """One `dapt run` of the tiny config: direct (``cluster`` None) or submitted to (nodes, cpus per node)."""
    run_dir = work / name
    over = [f"run_dir={run_dir}"]
    row: dict = {"variant": name, "load_before": os.getloadavg()}
    if cluster is None:
        row["seconds"] = _run([*DAPT, "run", "--config", str(CONFIG), *over], env)
    else:
        nodes, cpus = cluster
        state = work / f"{name}-state.json"
        port = str(20000 + os.getpid() % 10000)
        dash = str(30000 + os.getpid() % 10000)
        row["up_seconds"] = _run(
            [*DAPT, "cluster", "up", "--nodes", str(nodes), "--cpus-per-node", str(cpus),
             "--object-store-gb", "0.5", "--port", port, "--dashboard-port", dash, "--state", str(state)],
            env,
        )  # fmt: skip
        try:
            row["seconds"] = _run(
                [*DAPT, "submit", "--address", f"http://127.0.0.1:{dash}", "--config", str(CONFIG), "run", *over],
                env,
            )  # fmt: skip
        finally:
            row["down_seconds"] = _run([*DAPT, "cluster", "down", "--state", str(state)], env)
    row["stages"] = _stages(run_dir)
    row["load_after"] = os.getloadavg()
    shutil.rmtree(run_dir, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs in every variant (default 2)")
    ap.add_argument("--nodes", type=int, default=2, help="nodes of the split cluster (default 2)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the three variants (default 1)")
    args = ap.parse_args()
    if args.cpus % args.nodes:
        sys.exit(f"bench/cluster.py: --cpus ({args.cpus}) must be a multiple of --nodes ({args.nodes})")
    env = _env()
    work = Path(tempfile.mkdtemp(prefix="dapt-bench-cluster-"))
    rows = []
    try:
        for r in range(args.repeat):
            for name, cl in (
                ("direct", None),
                (f"submit-1x{args.cpus}", (1, args.cpus)),
                (f"submit-{args.nodes}x{args.cpus // args.nodes}", (args.nodes, args.cpus // args.nodes)),
            ):
                row = _variant(f"{name}-r{r}", work, cl, env)
                row["kind"] = name
                rows.append(row)
                print(
                    f"{row['variant']:<16} {row['seconds']:7.1f} s   load {row['load_before'][0]:.2f} -> "
                    f"{row['load_after'][0]:.2f}   stages "
                    + " ".join(f"{k} {v:.0f}" for k, v in row["stages"].items()),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def best(kind: str) -> float:
        return min(r["seconds"] for r in rows if r["kind"] == kind)

    one, split = f"submit-1x{args.cpus}", f"submit-{args.nodes}x{args.cpus // args.nodes}"
    ratios = {"nodes": best(split) / best(one), "submit": best(one) / best("direct")}
    print(
        f"\n{args.nodes} nodes x {args.cpus // args.nodes} CPU / 1 node x {args.cpus} CPUs: {ratios['nodes']:.2f}"
        f"\nsubmit / direct (1 node): {ratios['submit']:.2f}"
        f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )
    out = ROOT / "bench" / "results" / "cluster.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratios": ratios, "cpus": args.cpus}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
