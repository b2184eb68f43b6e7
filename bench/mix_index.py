"""The mix's index task (``dapt:mix-index``) against the one before it, on the same synthetic prep output.

Why: the index task was the last worker whose memory grew with the corpus (docs/scale.md: 0.23 GB
anonymous at 0.5 GB of input, 0.80 GB at 4 GB) because it sorted a source's documents and drew each
epoch's and the block shuffle's permutations as whole arrays in its heap. It now bucket-sorts and
builds the permutations in scratch files (corpora/mix/index.py). This times both on one machine, in one
run, and samples each one's process with `bench/scale.py`'s sampler: peak RSS and peak anonymous RSS
(RSS less file-backed pages, i.e. the heap; a memory-mapped scratch file's pages are the kernel's to
write back), checks the two wrote byte-identical index arrays, and prints the ratios.

The prep output is synthetic but has the real layout (``corpora/mix/prep.py``'s OUT_SCHEMA, one
Parquet file and one token shard per part): two sources, a domain one repeated 1.5 epochs and a general
one cut at 0.7, document lengths drawn from a log-normal around 700 tokens, xxh64-like uniform keys.
The index task never reads a token, so the shards are sparse files of the right size.

    .venv/bin/python bench/mix_index.py --docs 2e6 12e6          # about 6 minutes here
    .venv/bin/python bench/mix_index.py --docs 2e5 --baseline bf84d26

Results: ``bench/results/mix_index.json``. The baseline is the committed ``corpora/mix/index.py`` at
``--baseline`` (default: the last commit before the change), loaded from git into a temporary module.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # as bench/scale.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.scale import TreeSampler  # noqa: E402
from dapt.corpora.mix.prep import OUT_SCHEMA  # noqa: E402
from dapt.corpora.mix.store import ARRAYS, part_name  # noqa: E402

BASELINE = "bf84d26"
DOCS_PER_PART = 200_000
BLOCK_LEN = 2049
SOURCES = (("fin", "domain", 1.5), ("web", "general", 0.7))
"""(name, kind, epochs of its supply in the budget)."""


def build_prep(prep: Path, n_docs: int, seed: int = 0) -> dict:
    """A prep folder of ``n_docs`` documents split evenly between the two sources; returns the job plan."""
    done = prep / "plan.json"
    if done.exists():
        return json.loads(done.read_text())
    if prep.exists():
        shutil.rmtree(prep)
    (prep / "docs").mkdir(parents=True)
    (prep / "tokens").mkdir()
    rng = np.random.default_rng(seed)
    part, supply, counts = 0, {}, {}
    for name, kind, _epochs in SOURCES:
        left, tokens = n_docs // len(SOURCES), 0
        counts[name] = left
        while left:
            n = min(DOCS_PER_PART, left)
            lens = np.clip(rng.lognormal(np.log(500), 0.8, n), 1, 50_000).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])
            table = pa.table(
                {
                    "source": pa.array([name] * n, pa.string()),
                    "id": pa.array(np.char.add(f"{name}-{part}-", np.arange(n).astype(str)), pa.string()),
                    "kind": pa.array([kind] * n, pa.string()),
                    "key": pa.array(rng.integers(0, 1 << 64, size=n, dtype=np.uint64), pa.uint64()),
                    "status": pa.array(["train"] * n, pa.string()),
                    "n_tokens": pa.array(lens),
                    "n_bytes": pa.array(lens * 4),
                    "part": pa.array(np.full(n, part, np.int32)),
                    "offset": pa.array(offsets),
                    "near_dup_of": pa.nulls(n, pa.string()),
                    "contam": pa.array([[]] * n, pa.list_(pa.string())),
                },
                schema=OUT_SCHEMA,
            )
            pq.write_table(table, prep / "docs" / f"{part:06d}.parquet")
            with open(prep / part_name(part), "wb") as fh:
                fh.truncate(int((lens + 1).sum()) * 2)  # uint16 tokens; sparse, never read
            tokens += int((lens + 1).sum())
            part, left = part + 1, left - n
        supply[name] = tokens
    budgets = {name: int(epochs * supply[name]) for name, _k, epochs in SOURCES}
    total = sum(budgets.values()) // BLOCK_LEN * BLOCK_LEN
    budgets[SOURCES[-1][0]] -= sum(budgets.values()) - total
    plan = {
        "sources": [[name, kind, budgets[name], counts[name]] for name, kind, _e in SOURCES],
        "parts": part,
        "tokens": total,
    }
    done.write_text(json.dumps(plan))
    return plan


def load_index_module(rev: str | None, scratch: Path):
    """``corpora/mix/index.py`` as committed at ``rev`` (None: the working tree's)."""
    if rev is None:
        import dapt.corpora.mix.index as module

        return module
    path = scratch / f"index_{rev}.py"
    path.write_text(
        subprocess.run(
            ["git", "show", f"{rev}:corpora/mix/index.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    spec = importlib.util.spec_from_file_location(f"index_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def worker(rev: str, prep: str, out: str, plan_json: str) -> None:
    """Child process: one index build, timed."""
    module = load_index_module(None if rev == "working-tree" else rev, Path(out).parent)
    plan = json.loads(plan_json)
    fields = {f.name for f in dataclasses.fields(module.StoreJob)}
    width = 4 if "sort_rows" in fields else 3  # the baseline's sources carry no document count
    job = module.StoreJob(
        prep=prep,
        out_dir=out,
        sources=tuple(tuple(s[:width]) for s in plan["sources"]),
        block_len=BLOCK_LEN,
        seq_len=BLOCK_LEN - 1,
        seed=1234,
        eos_id=0,
        dtype="<u2",
        parts=plan["parts"],
    )
    t0 = time.perf_counter()
    result = module.build_store(job)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "n_blocks": result.n_blocks}))


def digest(folder: Path) -> dict[str, str]:
    out = {}
    for name in ARRAYS:
        h = hashlib.sha256()
        with open(folder / f"{name}.bin", "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        out[name] = h.hexdigest()[:16]
    return out


def run_one(rev: str, prep: Path, out: Path, plan: dict, interval: float) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    load_before = os.getloadavg()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", rev, str(prep), str(out), json.dumps(plan)],
        stdout=subprocess.PIPE,
        text=True,
    )
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.stop_event.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"mix_index: the {rev} build failed (exit {proc.returncode})")
    mem = sampler.result()
    row = json.loads(stdout.strip().splitlines()[-1])
    row.update(
        impl=rev,
        peak_rss_gb=mem["driver_rss_gb"],
        peak_anon_gb=mem["driver_anon_gb"],
        samples=mem["samples"],
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        digest=digest(out),
    )
    shutil.rmtree(out)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=float, nargs="+", default=[2e6, 12e6])
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mix-index")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "mix_index.json")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    rows = []
    for n in (int(d) for d in args.docs):
        prep = args.out / f"prep-{n}"
        t0 = time.perf_counter()
        plan = build_prep(prep, n)
        print(f"{n:,} documents, {plan['tokens']:,} tokens: prep ready in {time.perf_counter() - t0:.0f} s")
        pair = {}
        for rev in (args.baseline, "working-tree"):
            pair[rev] = run_one(rev, prep, args.out / "store", plan, args.interval)
            r = pair[rev]
            print(
                f"  {rev:>12}: {r['seconds']:7.1f} s  peak RSS {r['peak_rss_gb']:.3f} GB  "
                f"anon {r['peak_anon_gb']:.3f} GB  load {r['load_before'][0]}-{r['load_after'][0]}"
            )
        base, new = pair[args.baseline], pair["working-tree"]
        same = base["digest"] == new["digest"]
        ratios = {
            "anon_new_over_base": round(new["peak_anon_gb"] / base["peak_anon_gb"], 3),
            "rss_new_over_base": round(new["peak_rss_gb"] / base["peak_rss_gb"], 3),
            "time_new_over_base": round(new["seconds"] / base["seconds"], 3),
        }
        print(
            f"  identical arrays: {same}; new/base anon {ratios['anon_new_over_base']}, "
            f"RSS {ratios['rss_new_over_base']}, time {ratios['time_new_over_base']}"
        )
        rows.append(
            {"docs": n, "tokens": plan["tokens"], "identical": same, "runs": list(pair.values()), **ratios}
        )
        if not same:
            print("  the arrays differ: the new index is not the baseline's", file=sys.stderr)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv),
                "host": {"cpus": os.cpu_count(), "load_end": [round(x, 2) for x in os.getloadavg()]},
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {args.results}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
