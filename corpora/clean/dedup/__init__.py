"""Phases B and C of the clean stage: global dedup as Ray Data shuffles over ``meta`` only, never text.

Exact duplicates by a ``groupby`` on hash buckets (``exact``); near-duplicate candidates by a
``groupby`` on band-key buckets (``lsh``), verified by true shingle Jaccard in two passes keyed by the
shard of each side (``verify``); connected components of exact + near edges by alternating large-star
/ small-star shuffles (``components``). Every decision keeps the lowest rank, and shards are numbered
in ``clean.dedup_prefer`` order (``plan``), so the lowest rank is the preferred copy. Keys come from
each document's key text (``keytext``: before profile-specific edits), so copies in sources with
different profiles still meet. The decisions are written grouped by shard to
``work_dir/dedup/<n>.parquet`` for phase D. This module only wires the passes together; each pass is a
module of plain numpy group functions, testable without Ray.

Each shuffle's partition count is applied by ``repartition(n)`` before its ``groupby``, because under
the pull-based sort shuffle (``stage._ray_data_setup``) Ray Data ignores ``groupby(num_partitions=)``:
Ray 2.60's ``map_groups`` calls ``sort``, and a sort makes one output block per input block. Without
it every shuffle had as many blocks as the corpus has shards (the meta files are read one per block),
and a sort makes one object per (input, output) block pair, all owned by the driver: quadratic in the
shard count. Over the 2 GB work folder's edges, one star pass added about 10 MB to the driver's RSS
with 60 blocks and 1 MB with 4. A sort's output keeps its input's block count, so a chain of shuffles
over the same rows (the star passes, the two verification passes) needs the repartition only once.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.corpora.clean.config import CleanConfig
from dapt.corpora.clean.dedup.components import both_directions, labels_rows, star_group
from dapt.corpora.clean.dedup.exact import exact_group, exact_rows, explode_hashes
from dapt.corpora.clean.dedup.lsh import band_group, explode_bands
from dapt.corpora.clean.dedup.verify import verify_a, verify_b
from dapt.corpora.clean.readers import ShardSpec
from dapt.corpora.clean.schema import SHARD_BITS, decisions_path, shard_dir
from dapt.pipeline.fsutil import atomic_write_parquet
from dapt.pipeline.memory import releasing

__all__ = ["dedup", "write_decisions"]


ROWS_PER_PARTITION = 2_000_000
"""``auto`` partitions: about this many rows of the largest shuffle (the LSH band rows) per partition,
tens of MB as numpy columns, so no reducer holds more than that whatever the corpus."""
ROWS_PER_BUCKET = 250_000
"""``auto`` buckets: about this many rows per hash bucket, which is one ``map_groups`` call's input."""
PAIRS_PER_VERIFY_PARTITION = 50_000
"""``auto`` partitions of the two verification shuffles: their rows carry shingle arrays (a few KB each),
so they are sized by candidate pairs, about 200 MB per partition at 4 KB a row."""


def _auto_partitions(rows: int, cpus: int, rows_per_partition: int = ROWS_PER_PARTITION) -> int:
    return min(100_000, max(2 * cpus, math.ceil(rows / rows_per_partition)))


def shuffle_sizing(cc: CleanConfig, docs: int, cpus: int) -> dict[str, Any]:
    """Partitions and buckets of the dedup shuffles for ``docs`` documents on ``cpus`` CPUs: a configured
    number is taken as given, ``auto`` is sized by the data (see the two constants) and never below the
    cluster's parallelism (two partitions per CPU, so one slow partition does not idle the rest).
    ``partitions`` is the largest shuffle's (the LSH band rows); the smaller shuffles get their own count
    from :func:`partitions_for`. The result goes into the manifest."""
    nd = cc.near_dedup
    rows = max(1, docs) * (nd.bands if nd.enabled else 1)
    p = _auto_partitions(rows, cpus) if cc.shuffle_partitions == "auto" else cc.shuffle_partitions
    auto_b = min(1 << 20, max(64, p, math.ceil(rows / ROWS_PER_BUCKET)))
    b = auto_b if cc.buckets == "auto" else cc.buckets
    return {
        "partitions": p,
        "buckets": b,
        "from": {"partitions": str(cc.shuffle_partitions), "buckets": str(cc.buckets)},
        "documents": docs,
        "cluster_cpus": cpus,
        "largest_shuffle_rows": rows,
    }


def partitions_for(
    cc: CleanConfig, sizing: dict[str, Any], rows: int, rows_per_partition: int = ROWS_PER_PARTITION
) -> int:
    """Partitions of a shuffle of about ``rows`` rows: configured, or ``auto`` by its own rows.

    Why not the largest shuffle's count everywhere: a pull-based sort shuffle makes one object per
    (input block, partition), so a small shuffle (exact hashes, the edges of connected components) split
    as finely as the band rows makes many objects of a few KB: overhead per object in the driver, and
    work per partition too small to pay for its task."""
    if cc.shuffle_partitions != "auto":
        return cc.shuffle_partitions
    return _auto_partitions(rows, sizing["cluster_cpus"], rows_per_partition)


def verify_partitions(cc: CleanConfig, sizing: dict[str, Any], pairs: int) -> int:
    """Partitions of the verification shuffles: configured, or by candidate pairs (their rows carry
    shingle arrays, so far fewer rows per partition than the other shuffles)."""
    return partitions_for(cc, sizing, pairs, PAIRS_PER_VERIFY_PARTITION)


def dedup(
    cc: CleanConfig, shards: list[ShardSpec], work: Path, log: logging.Logger, docs: int = 0
) -> dict[str, Any]:
    """Phase B+C over the ``meta`` tables of ``shards`` in ``work``: decisions to ``work_dir/dedup/``.
    ``docs`` (the documents read) sizes ``auto`` shuffles. Returns dedup statistics for the manifest."""
    import ray
    import ray.data

    nd = cc.near_dedup
    sizing = shuffle_sizing(cc, docs, int(ray.cluster_resources().get("CPU", 1)))
    P, B = sizing["partitions"], sizing["buckets"]
    log.info("dedup shuffles: %d partitions, %d buckets (%s)", P, B, sizing["from"])
    dd = work / "dedup"
    if dd.exists():
        shutil.rmtree(dd)
    dd.mkdir()
    metas = [str(shard_dir(work, s.shard) / "meta.parquet") for s in shards]
    metas = [m for m in metas if Path(m).exists()]
    stats: dict[str, Any] = {
        "exact_edges": 0,
        "candidate_pairs": 0,
        "near_edges": 0,
        "cc_rounds": 0,
        "shuffle": sizing,
    }
    if not metas:
        return stats
    t0 = time.perf_counter()
    edge_sets = []
    exact_ds = None
    if cc.exact_dedup:
        PE = sizing["exact_partitions"] = partitions_for(cc, sizing, docs)
        exact_ds = (
            read_metas(metas, ["rank", "khi", "klo", "xhi", "xlo"])
            .map_batches(explode_hashes, fn_kwargs={"buckets": B}, batch_format="numpy")
            .repartition(PE)
            .groupby("bucket")
            .map_groups(releasing(exact_group), batch_format="numpy")
            .materialize()
        )
        stats["exact_edges"] = exact_ds.count()
        if stats["exact_edges"]:
            edge_sets.append(exact_ds)
        log.info("exact dedup: %d edges (%.1fs)", stats["exact_edges"], time.perf_counter() - t0)
    if nd.enabled:
        t1 = time.perf_counter()
        cols = ["rank", "khi", "source_idx", "has_sig"] + [f"b{b}" for b in range(nd.bands)]
        cand = (
            read_metas(metas, cols)
            .map_batches(
                explode_bands,
                fn_kwargs={"bands": nd.bands, "scope": nd.scope, "buckets": B},
                batch_format="numpy",
            )
            .repartition(P)
            .groupby("bucket")
            .map_groups(
                releasing(band_group),
                fn_kwargs={"max_pairs": nd.max_bucket_pairs, "collapse_exact": cc.exact_dedup},
                batch_format="numpy",
            )
            .materialize()
        )
        stats["candidate_pairs"] = cand.count()
        if stats["candidate_pairs"] and not nd.verify:
            near = cand  # every LSH candidate pair is an edge
            stats["near_edges"] = stats["candidate_pairs"]
            edge_sets.append(near)
        elif stats["candidate_pairs"]:
            VP = sizing["verify_partitions"] = verify_partitions(cc, sizing, stats["candidate_pairs"])
            near = (
                cand.map_batches(lambda b: {**b, "sa": b["u"] >> SHARD_BITS}, batch_format="numpy")
                .repartition(VP)
                .groupby("sa")
                .map_groups(
                    releasing(verify_a),
                    fn_kwargs={"work": str(work), "ngram": nd.ngram},
                    batch_format="numpy",
                )
                .groupby("sb")  # verify_a's output has VP blocks already
                .map_groups(
                    releasing(verify_b),
                    fn_kwargs={"work": str(work), "ngram": nd.ngram, "threshold": nd.threshold},
                    batch_format="numpy",
                )
                .materialize()
            )
            stats["near_edges"] = near.count()
            if stats["near_edges"]:
                edge_sets.append(near)
        log.info(
            "near dedup: %d candidate pairs, %d verified (%.1fs)",
            stats["candidate_pairs"],
            stats["near_edges"],
            time.perf_counter() - t1,
        )
    if not edge_sets:
        return stats
    # Connected components: alternate large-star and small-star until the edge set is stable.
    t2 = time.perf_counter()
    edges = edge_sets[0] if len(edge_sets) == 1 else edge_sets[0].union(*edge_sets[1:])
    # Each edge goes both ways; the decisions have two rows per final edge and one per exact edge.
    PC = sizing["components_partitions"] = partitions_for(
        cc, sizing, 2 * (stats["exact_edges"] + stats["near_edges"])
    )
    # PC blocks here; each star pass's sort keeps that count.
    edges = edges.select_columns(["u", "v"]).repartition(PC).materialize()
    prev = None
    for rnd in range(cc.max_cc_rounds):
        for large in (True, False):
            edges = (
                edges.map_batches(both_directions, fn_kwargs={"buckets": B}, batch_format="numpy")
                .groupby("bucket")
                .map_groups(releasing(star_group), fn_kwargs={"large": large}, batch_format="numpy")
                .materialize()
            )
        n = edges.count()
        check = (n, edges.sum("h") if n else 0)
        stats["cc_rounds"] = rnd + 1
        if check == prev:
            break
        prev = check
    else:
        raise RuntimeError(f"connected components did not converge in {cc.max_cc_rounds} rounds")
    log.info("connected components: %d rounds (%.1fs)", stats["cc_rounds"], time.perf_counter() - t2)
    rows = edges.map_batches(labels_rows, batch_format="numpy")
    if exact_ds is not None and stats["exact_edges"]:
        rows = rows.union(exact_ds.map_batches(exact_rows, batch_format="numpy"))
    rows.repartition(PC).groupby("shard").map_groups(
        releasing(write_decisions), fn_kwargs={"work": str(work)}, batch_format="numpy"
    ).materialize()
    return stats


def read_metas(metas: list[str], columns: list[str]) -> Any:
    """The shards' meta tables as a Ray Dataset of one block per shard, so a task reads one shard's file.

    Why not ``ray.data.read_parquet``: on Ray 2.60 its file reader packed the small meta files into one
    read task, and the band explosion fused behind it (x ``bands`` rows) then ran over the whole corpus in
    one worker: the largest worker of the scale benchmark grew from 0.6 GB at 200 MB to 1.4 GB at 1 GB
    of input. One file per task bounds it by the shard."""
    import ray.data

    return ray.data.from_items([{"path": m} for m in metas], override_num_blocks=len(metas)).map_batches(
        releasing(_read_meta), fn_kwargs={"columns": columns}, batch_size=1, batch_format="numpy"
    )


def _read_meta(batch: dict[str, np.ndarray], columns: list[str]) -> dict[str, np.ndarray]:
    """Ray Data body: the ``columns`` of the meta file named by the batch's one row."""
    t = pq.read_table(str(batch["path"][0]), columns=columns)
    return {c: t.column(c).to_numpy() for c in columns}


def write_decisions(batch: dict[str, np.ndarray], work: str) -> dict[str, np.ndarray]:
    """Group = one shard: per document rank, its cluster label and whether it goes (exact/near)."""
    node, label, exact = batch["node"], batch["label"], batch["exact"]
    if node.size == 0:
        return {"shard": np.zeros(0, np.int64), "n": np.zeros(0, np.int64)}
    shard = int(node[0] >> SHARD_BITS)
    order = np.argsort(node, kind="stable")
    node, label, exact = node[order], label[order], exact[order]
    starts = np.flatnonzero(np.r_[True, node[1:] != node[:-1]])
    n = node[starts]
    lab = np.maximum.reduceat(label, starts)
    ex = np.maximum.reduceat(exact, starts).astype(bool)
    status = np.where(n == lab, "keeper", np.where(ex, "exact", "near"))
    t = pa.table({"rank": n, "label": lab, "status": status.astype(str)})
    atomic_write_parquet(decisions_path(work, shard), t)
    return {"shard": np.array([shard]), "n": np.array([n.size])}
