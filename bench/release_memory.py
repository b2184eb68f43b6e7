"""`dapt clean` with and without giving freed memory back to the OS (pipeline/memory.py), in one run.

Why: a Ray worker is reused across clean's phases, and without a trim its resident memory is the
high-water mark of every task it ran (docs/scale.md: 0.55 GB anonymous at 2 GB of input, 0.73 GB at
4 GB). This runs the same config over the same cached corpus (`bench/scale.py`'s generator and
config: Debian text, 2 CPUs, pinned, auto shuffles), first with the release on (the default) and then
with ``DAPT_RELEASE_MEMORY=0`` in the environment the local Ray's workers inherit, every process of
the tree sampled by `bench/scale.py`'s sampler, and prints wall time, the driver's and the largest
worker's RSS and anonymous RSS, the high-water mark per task title, and the ratios off / on.

    .venv/bin/python bench/release_memory.py --size 4      # GB unless suffixed mb; 80 min at 4 GB here
    .venv/bin/python bench/release_memory.py --size 50mb   # a minute: checks the script, not the effect

Results: ``bench/results/release_memory_<size>.json``. Both runs must keep the same documents.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # as bench/scale.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

from bench.scale import run_stage, stage_facts, write_config  # noqa: E402
from bench.scale_corpus import build_corpus, parse_size, size_label  # noqa: E402

MODES = {"release": "1", "no-release": "0"}


def run_mode(corpus: dict, mode: str, out: Path, cpus: int, interval: float) -> dict:
    work = out / "release-runs" / f"{size_label(corpus['size_mb'])}-{mode}"
    if work.exists():
        shutil.rmtree(work)
    cfg = write_config(work / "scale.yaml", work / "run", corpus)
    before = os.environ.get("DAPT_RELEASE_MEMORY")
    os.environ["DAPT_RELEASE_MEMORY"] = MODES[mode]  # run_stage passes os.environ to `dapt clean`
    try:
        r = run_stage("clean", cfg, cpus, work / "clean.log", True, interval)
    finally:
        if before is None:
            os.environ.pop("DAPT_RELEASE_MEMORY")
        else:
            os.environ["DAPT_RELEASE_MEMORY"] = before
    r["mode"] = mode
    r["manifest"] = stage_facts(work / "run", "clean")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="0.5", help="GB unless suffixed mb")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds")
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args()
    mb = parse_size(args.size)
    corpus = build_corpus(args.out, mb, 0)
    runs = {}
    for mode in MODES:
        print(f"[{size_label(mb)}] dapt clean, {mode} ...", flush=True)
        runs[mode] = run_mode(corpus, mode, args.out, args.cpus, args.interval)
    kept = {m: r["manifest"].get("totals", {}).get("kept") for m, r in runs.items()}
    if len(set(kept.values())) != 1:
        raise SystemExit(f"the two runs kept different documents: {kept}")
    print(f"\n{'mode':12s} {'wall s':>8s} {'driver':>7s} {'d.anon':>7s} {'worker':>7s} {'w.anon':>7s}  load")
    for m, r in runs.items():
        mem = r["memory"]
        print(
            f"{m:12s} {r['seconds']:8.1f} {mem['driver_rss_gb']:7.2f} {mem['driver_anon_gb']:7.2f} "
            f"{mem['worker_rss_gb']:7.2f} {mem['worker_anon_gb']:7.2f}  {r['load_before'][0]}->{r['load_after'][0]}"
        )
        print(f"{'':12s} by title: {mem['worker_anon_gb_by_title']}")
    on, off = runs["release"], runs["no-release"]
    ratios = {
        "worker_anon_off_over_on": round(off["memory"]["worker_anon_gb"] / on["memory"]["worker_anon_gb"], 3),
        "worker_rss_off_over_on": round(off["memory"]["worker_rss_gb"] / on["memory"]["worker_rss_gb"], 3),
        "seconds_on_over_off": round(on["seconds"] / off["seconds"], 3),
    }
    print(f"\nratios: {ratios}")
    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([".venv/bin/python", "bench/release_memory.py", *sys.argv[1:]]),
        "corpus": {k: v for k, v in corpus.items() if k not in ("domain", "general")},
        "kept": kept["release"],
        "runs": runs,
        "ratios": ratios,
    }
    path = args.results or ROOT / f"bench/results/release_memory_{size_label(mb)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
