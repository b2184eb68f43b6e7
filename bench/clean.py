"""Benchmark: `dapt clean` vs datatrove on the same corpus, filters and near-dedup, side by side.

    .venv/bin/python bench/clean.py                 # >= 200 MB corpus (built once under bench/out/)
    .venv/bin/python bench/clean.py --size-mb 20    # quick try

Both run on the same JSONL corpus (Debian text with planted exact/near duplicates and Jaccard
0.5-0.75 "hard" copies that must be kept, see bench/clean_corpus.py) with an equivalent filter set:

- dapt: ``dapt clean`` in a subprocess (its own local Ray, 2 CPUs) with steps normalize,
  gopher_repetition, gopher_quality, c4, fineweb, pii; exact dedup + MinHash LSH (112 perms,
  16 x 7 bands, true-Jaccard verification at 0.8), global scope.
- datatrove: LocalPipelineExecutor, 2 workers: JsonlReader -> GopherRepetitionFilter ->
  GopherQualityFilter -> C4QualityFilter -> FineWebQualityFilter -> JsonlWriter, then its 4-stage
  MinHash (14 x 8, word 5-grams).

Prints wall time, docs/s, MB/s (input bytes / end-to-end wall time, startup included), the ratio,
and each one's near-duplicate precision and recall against the planted truth, counted only over
pairs whose two documents both passed that system's own quality filters. Needs
``pip install 'datatrove[processing]' spacy orjson torch==2.13.0`` for the datatrove side.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running bench/clean.py puts bench/ first on sys.path, where bench/tokenize.py would shadow the
# standard library's tokenize module (pandas imports it): drop that entry, add the repo root.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from bench.clean_corpus import build  # noqa: E402


@contextmanager
def load_sampled(every_s: float = 5.0):
    """Sample the 1-minute load average while one side runs: the brief asks for the load with every
    figure, and a side-by-side ratio is only meaningful if nothing else shared the two cores. Yields a
    dict that holds ``load_1m`` (start, min, max) once the block ends."""
    record: dict = {}
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            samples.append(os.getloadavg()[0])

    thread = threading.Thread(target=sample, daemon=True)
    start = os.getloadavg()[0]
    thread.start()
    try:
        yield record
    finally:
        stop.set()
        thread.join()
        samples = samples or [start]
        record["load_1m"] = {
            "start": round(start, 2),
            "min": round(min(samples), 2),
            "max": round(max(samples), 2),
        }


def run_dapt(corpus: Path, work: Path) -> tuple[float, set[str], set[str], dict]:
    """Returns (seconds, ids removed as duplicates, ids that reached dedup, manifest)."""
    import pyarrow.parquet as pq

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = work / "bench.yaml"
    cfg.write_text(
        f"""name: bench-clean
run_dir: {work / "run"}
sources:
  - name: debian
    kind: domain  # the run config needs a domain source; the steps below are the web set anyway
    paths: ["{corpus}/part-*.jsonl"]
    id_field: id
    steps:
      - {{name: normalize}}
      - {{name: gopher_repetition}}
      - {{name: gopher_quality}}
      - {{name: c4}}
      - {{name: fineweb}}
      - {{name: pii}}
model: {{from_config: {{}}}}
ray: {{num_cpus: 2, object_store_memory_gb: 1}}
clean:
  shard_mb: 16
""",
        encoding="utf-8",
    )
    env = dict(os.environ, RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    t0 = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/dapt"), "clean", "--config", str(cfg)], check=True, env=env, cwd=ROOT
    )
    secs = time.perf_counter() - t0
    out = work / "run" / "clean"
    manifest = json.loads((out / "manifest.json").read_text())
    removed, reached = set(), set()
    for f in (out / "rejected").rglob("*.parquet"):
        t = pq.read_table(f, columns=["id", "reason"]).to_pylist()
        for r in t:
            if r["reason"].startswith("duplicate:"):
                removed.add(r["id"])
                reached.add(r["id"])
    for f in (out / "kept").rglob("*.parquet"):
        reached.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return secs, removed, reached, manifest


def _jsonl_ids(folder: Path) -> set[str]:
    ids = set()
    for f in folder.rglob("*.jsonl*"):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                ids.add(json.loads(line)["id"])
    return ids


def run_datatrove(corpus: Path, work: Path, files: int) -> tuple[float, set[str], set[str], dict]:
    """Returns (seconds, ids removed by MinHash, ids that reached dedup, seconds per phase)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(precision=64))
    t0 = time.perf_counter()
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(corpus), glob_pattern="part-*.jsonl"),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(),
            FineWebQualityFilter(char_duplicates_ratio=0.1),
            JsonlWriter(str(work / "filtered")),
        ],
        tasks=files,
        workers=2,
        logging_dir=str(work / "logs/filter"),
    ).run()
    t1 = time.perf_counter()
    LocalPipelineExecutor(
        pipeline=[JsonlReader(str(work / "filtered")), MinhashDedupSignature(str(work / "sigs"), config=mh)],
        tasks=files,
        workers=2,
        logging_dir=str(work / "logs/sigs"),
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
        tasks=mh.num_buckets,
        workers=2,
        logging_dir=str(work / "logs/buckets"),
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=mh)],
        tasks=1,
        logging_dir=str(work / "logs/cluster"),
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(work / "filtered")),
            MinhashDedupFilter(str(work / "remove_ids")),
            JsonlWriter(str(work / "deduped")),
        ],
        tasks=files,
        workers=2,
        logging_dir=str(work / "logs/filter_dedup"),
    ).run()
    secs = time.perf_counter() - t0
    print(f"datatrove: filtering {t1 - t0:.1f}s, minhash {secs - (t1 - t0):.1f}s", flush=True)
    reached = _jsonl_ids(work / "filtered")
    kept = _jsonl_ids(work / "deduped")
    return (
        secs,
        reached - kept,
        reached,
        {"filters": round(t1 - t0, 1), "minhash": round(secs - (t1 - t0), 1)},
    )


def precision_recall(truth: dict, removed: set[str], reached: set[str]) -> dict:
    """Pairs (J >= 0.8 planted) whose two sides reached dedup: found if either side was removed.
    A removal is correct if the document belongs to such a pair."""
    dup_pairs = [p for p in truth["pairs"] if p["kind"] in ("exact", "near")]
    eligible = [p for p in dup_pairs if p["orig"] in reached and p["copy"] in reached]
    found = sum(1 for p in eligible if p["orig"] in removed or p["copy"] in removed)
    members = {p["orig"] for p in eligible} | {p["copy"] for p in eligible}
    hard = [p for p in truth["pairs"] if p["kind"] == "hard" and p["copy"] in reached]
    correct = sum(1 for r in removed if r in members)
    return {
        "pairs": len(eligible),
        "recall": found / len(eligible) if eligible else float("nan"),
        "removed": len(removed),
        "precision": correct / len(removed) if removed else float("nan"),
        "hard_copies_removed": sum(1 for p in hard if p["copy"] in removed),
        "hard_pairs": len(hard),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=200.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    corpus = args.out / f"clean_corpus_{int(args.size_mb)}mb"
    t = time.perf_counter()
    truth = build(corpus, args.size_mb, files=args.files)
    print(
        f"corpus: {corpus} {truth['docs']} docs, {truth['bytes'] / 1e6:.1f} MB, planted {truth['counts']} "
        f"({time.perf_counter() - t:.0f}s)",
        flush=True,
    )
    mb, docs = truth["bytes"] / 1e6, truth["docs"]
    results: dict = {"corpus": {"docs": docs, "mb": round(mb, 1), "files": args.files}}
    with load_sampled() as load:
        secs, removed, reached, manifest = run_dapt(corpus, args.out / "clean_dapt")
    results["dapt"] = {
        "seconds": secs,
        **precision_recall(truth, removed, reached),
        "kept": manifest["totals"]["kept"],
        "timings_s": manifest["timings_s"],
        **load,
    }
    print(f"dapt: {secs:.1f}s, load {load['load_1m']}", flush=True)
    if not args.skip_datatrove:
        with load_sampled() as load:
            secs, removed, reached, phases = run_datatrove(corpus, args.out / "clean_datatrove", args.files)
        results["datatrove"] = {
            "seconds": secs,
            **precision_recall(truth, removed, reached),
            "kept": len(reached) - len(removed),
            "timings_s": phases,
            **load,
        }
        print(f"datatrove: {secs:.1f}s, load {load['load_1m']}", flush=True)
    print()
    print(
        f"{'system':10s} {'seconds':>8s} {'docs/s':>8s} {'MB/s':>7s} {'kept':>7s} {'pairs':>6s} "
        f"{'recall':>7s} {'precision':>9s} {'hard removed':>13s}"
    )
    for name, r in results.items():
        if name == "corpus":
            continue
        print(
            f"{name:10s} {r['seconds']:8.1f} {docs / r['seconds']:8.0f} {mb / r['seconds']:7.2f} {r['kept']:7d} "
            f"{r['pairs']:6d} {r['recall']:7.3f} {r['precision']:9.3f} {r['hard_copies_removed']:>6d}/{r['hard_pairs']:<6d}"
        )
    if "datatrove" in results:
        print(
            f"\nthroughput ratio dapt / datatrove: {results['datatrove']['seconds'] / results['dapt']['seconds']:.2f}x"
        )
    (args.out / f"clean_results_{int(args.size_mb)}mb.json").write_text(
        json.dumps(results, indent=2, default=str)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
