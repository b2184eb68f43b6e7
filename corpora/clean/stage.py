"""The ``clean`` stage: read, normalise, filter, redact PII and deduplicate, as Ray Data jobs.

This module is the stage's entry point and only orchestrates: it plans the shards (``plan``: their
order is the dedup preference, and whole-file problems are decided there), runs the four phases, each
a Ray Data job (so the same code runs on a laptop and on a cluster, where ``run_dir`` must be on a
filesystem every node sees), and sums the manifest. The phases live below it:

A. **Shards** (``shards``; ``map_batches`` over shard specs): stream each shard's records through
   its source's steps (``steps``) and write, under ``work_dir/shards/<n>/``, the surviving
   documents, the rejected ones and a compact ``meta`` table (rank, 128-bit hashes of the key text
   and of the cleaned text, LSH band keys of the key text). A shard folder appears by an atomic rename only when complete, so a killed run resumes
   with the shards it finished. A broken file comes back as data (the shard summary's ``bad_file``)
   and is raised here, in the driver, as one line; or skipped (``clean.on_bad_file``).
B. **Dedup** (``dedup``; shuffles on meta only, never on text): exact duplicates by a ``groupby``
   on hash buckets; near-duplicate candidates by a ``groupby`` on band-key buckets; candidate pairs
   verified by true shingle Jaccard in two ``groupby`` passes keyed by the shard of each side;
   connected components of exact + near edges by alternating large-star / small-star shuffles
   (Kiveris et al. 2014), so no machine holds the graph. Every decision keeps the lowest rank; keys
   come from the text before profile-specific edits (``dedup.keytext``), so copies in a domain and a
   general source meet even when their profiles cleaned them differently.
C. **Decisions** grouped by shard into ``work_dir/dedup/<n>.parquet`` (``dedup.write_decisions``).
D. **Outputs** (``finalize``; ``map_batches`` over shards): ``kept/<source>/part-<n>.parquet`` and
   ``rejected/<source>/part-<n>[-dup].parquet`` in ``out_dir``; the manifest's counts are summed
   from what was written, so docs in == kept + rejected is checked, not assumed.

The file layout shared by the phases is in ``schema``; what reaches the console is in ``console``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dapt.corpora.clean.config import CleanConfig
from dapt.corpora.clean.console import Progress, ray_data_logs, warn
from dapt.corpora.clean.dedup import dedup
from dapt.corpora.clean.finalize import finalize_batch
from dapt.corpora.clean.plan import FieldCheck, plan_shards
from dapt.corpora.clean.readers import BadFileError
from dapt.corpora.clean.schema import WORK_FORMAT, shard_dir
from dapt.corpora.clean.shards import ShardParams, process_batch, resolve_steps, steps_json
from dapt.pipeline.memory import releasing
from dapt.pipeline.ray_runtime import init_ray  # sets Ray's environment before anything imports ray

_STATE = "state.json"


def _prepare_work(ctx: Any) -> Path:
    """Reuse ``work_dir`` only if it was made for this exact fingerprint (config + inputs), which the
    runner computed (``ctx.fingerprint``), by code writing the same layout (``WORK_FORMAT``)."""
    fp = ctx.fingerprint
    work = Path(ctx.work_dir)
    state = work / _STATE
    want = {"fingerprint": fp, "format": WORK_FORMAT}
    if state.exists():
        try:
            old = json.loads(state.read_text())
            same = {k: old.get(k) for k in want} == want
        except ValueError:
            same = False
        if same and not ctx.force:
            for stale in (work / "shards").glob(".*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            return work
    for child in work.iterdir() if work.exists() else []:
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / "shards").mkdir()
    state.write_text(json.dumps(want))
    return work


def _ray_data_setup() -> None:
    from ray.data.context import DataContext, ShuffleStrategy

    dctx = DataContext.get_current()
    dctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    dctx.enable_progress_bars = False
    dctx.print_on_execution_start = False


def run(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see module docstring)."""
    cfg = ctx.cfg
    validated = resolve_steps(cfg)
    work = _prepare_work(ctx)
    ray_info = init_ray(cfg.ray)
    _ray_data_setup()
    with ray_data_logs(ctx.log):
        return _run(ctx, validated, work, ray_info)


def _run(ctx: Any, validated: list, work: Path, ray_info: dict[str, Any]) -> dict[str, Any]:
    import ray.data

    cfg = ctx.cfg
    cc: CleanConfig = cfg.clean
    log = ctx.log
    t0 = time.perf_counter()
    plan = plan_shards(cfg)
    shards = plan.shards
    log.info("%d shards from %d sources", len(shards), len(cfg.sources))
    for sk in plan.skipped:
        warn(log, f"skipped {sk['file']} (clean.on_bad_file: skip): {sk['reason']}")
    checks = FieldCheck(cfg.sources, shards)
    summaries: dict[int, dict[str, Any]] = {}

    def take(summary: dict[str, Any]) -> None:
        """One shard's summary, as soon as it is in: a broken file fails the stage here, in the
        driver, as one line (``on_bad_file: fail``), and a JSONL file whose shards are all read is
        checked for its fields."""
        bad = summary.get("bad_file")
        if bad is not None and cc.on_bad_file == "fail":
            raise BadFileError(bad["file"], bad["reason"])
        checks.add(summary)
        summaries[summary["shard"]] = summary

    # Phase A: shards not finished by an earlier attempt.
    todo = []
    for s in shards:
        sd = shard_dir(work, s.shard)
        if sd.exists():
            take(json.loads((sd / "summary.json").read_text()))
        else:
            todo.append(s)
    steps = {str(i): steps_json(v) for i, v in enumerate(validated)}
    params = ShardParams.from_config(cc)
    fail_after = ctx.extra.get("fail_after_shards")
    if todo:
        ds = ray.data.from_items(
            [{"spec": json.dumps(s.to_dict())} for s in todo], override_num_blocks=len(todo)
        )
        ds = ds.map_batches(
            releasing(process_batch),
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"steps": steps, "params": params, "work": str(work)},
        )
        with Progress(len(todo), "clean: read and filter", ctx.run_dir) as bar:
            for done, row in enumerate(ds.iter_rows(), start=1):
                take(json.loads(row["summary"]))
                bar.update()
                if fail_after is not None and done >= fail_after:
                    raise RuntimeError(f"injected failure after {done} shards (test hook)")
    t_a = time.perf_counter()
    log.info(
        "phase A: %d shards processed (%d reused) in %.1fs", len(todo), len(shards) - len(todo), t_a - t0
    )
    # A file with a broken shard is left out whole: its other shards' documents count nowhere either.
    skipped = list(plan.skipped)
    bad_paths: set[str] = set()
    for s in shards:
        bad = summaries[s.shard].get("bad_file")
        if bad is not None and s.path not in bad_paths:
            bad_paths.add(s.path)
            skipped.append({"source": s.source, "file": s.path, "reason": bad["reason"]})
            warn(log, f"skipped {s.path} (clean.on_bad_file: skip): {bad['reason']}")
    live = [s for s in shards if s.path not in bad_paths]

    dstats = dedup(cc, live, work, log, docs=sum(summaries[s.shard]["docs_in"] for s in live))
    t_b = time.perf_counter()

    out = Path(ctx.out_dir)
    for sub in ("kept", "rejected"):
        (out / sub).mkdir(parents=True, exist_ok=True)  # present even when every file was skipped
    finals: list[dict[str, Any]] = []
    if live:
        ds = ray.data.from_items(
            [{"spec": json.dumps(s.to_dict())} for s in live], override_num_blocks=len(live)
        )
        kwargs = {
            "work": str(work),
            "out": str(out),
            "max_chars": cc.rejected_text_chars,
            "shard_sources": [s.source for s in shards],
        }
        with Progress(len(live), "clean: write", ctx.run_dir) as bar:
            for r in ds.map_batches(
                releasing(finalize_batch), batch_size=1, batch_format="numpy", fn_kwargs=kwargs
            ).iter_rows():
                finals.append(json.loads(r["summary"]))
                bar.update()
    t_d = time.perf_counter()
    return _manifest(
        cfg,
        [summaries[s.shard] for s in live],
        finals,
        dstats,
        ray_info,
        {"read_filter": t_a - t0, "dedup": t_b - t_a, "write": t_d - t_b},
        skipped,
    )


def _manifest(
    cfg: Any,
    summaries: list[dict],
    finals: list[dict],
    dstats: dict,
    ray_info: dict,
    timings: dict,
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for src in cfg.sources:
        sources[src.name] = {
            "kind": src.kind,
            "files": 0,
            "skipped_files": 0,
            "docs_in": 0,
            "bytes_in": 0,
            "kept": 0,
            "kept_bytes": 0,
            "rejected": Counter(),
            "duplicate_clusters": 0,
            "pii": Counter(),
        }
    for s in summaries:
        e = sources[s["source"]]
        e["docs_in"] += s["docs_in"]
        e["bytes_in"] += s["bytes_in"]
    for name, n in Counter(src for src, _ in {(s["source"], s["file"]) for s in summaries}).items():
        sources[name]["files"] = n
    for sk in skipped:
        sources[sk["source"]]["skipped_files"] += 1
    for f in finals:
        e = sources[f["source"]]
        e["kept"] += f["kept"]
        e["kept_bytes"] += f["kept_bytes"]
        e["rejected"].update(f["rejected"])
        e["duplicate_clusters"] += f["clusters"]
        e["pii"].update(f["pii"])
    totals: dict[str, Any] = {
        "files": 0,
        "skipped_files": 0,
        "docs_in": 0,
        "bytes_in": 0,
        "kept": 0,
        "kept_bytes": 0,
        "rejected": 0,
        "duplicate_clusters": 0,
    }
    for name, e in sources.items():
        rejected = sum(e["rejected"].values())
        if e["docs_in"] != e["kept"] + rejected:
            raise RuntimeError(
                f"clean: counts do not reconcile for source {name}: {e['docs_in']} in, "
                f"{e['kept']} kept + {rejected} rejected"
            )
        e["rejected"] = dict(sorted(e["rejected"].items()))
        e["pii"] = dict(sorted(e["pii"].items()))
        for k in (
            "files",
            "skipped_files",
            "docs_in",
            "bytes_in",
            "kept",
            "kept_bytes",
            "duplicate_clusters",
        ):
            totals[k] += e[k]
        totals["rejected"] += rejected
    mb = totals["bytes_in"] / 1e6
    secs = sum(timings.values())
    return {
        "outputs": {"kept": "kept", "rejected": "rejected"},
        "sources": sources,
        "totals": totals,
        "counts": {"docs_in": totals["docs_in"], "kept": totals["kept"], "rejected": totals["rejected"]},
        "skipped_files": skipped,
        "dedup": dstats,
        "shards": len(summaries),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "throughput": {
            "mb_per_s": round(mb / secs, 3) if secs else None,
            "docs_per_s": round(totals["docs_in"] / secs, 1) if secs else None,
        },
        "ray": ray_info,
    }
