"""Phase D of the clean stage: one shard's final ``kept`` and ``rejected`` Parquet files.

The only phase that writes to ``out_dir``. It joins a shard's documents with the dedup decisions of
that shard (``work_dir/dedup/<n>.parquet``) and returns what it wrote, so the manifest's counts are
summed from the files rather than assumed. Separate from phase A because it runs after the global
dedup, on every shard, also on a resumed run where phase A reused all of them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.corpora.clean.readers import ShardSpec
from dapt.corpora.clean.schema import KEPT_SCHEMA, REJECTED_SCHEMA, SHARD_BITS, decisions_path, shard_dir
from dapt.pipeline.fsutil import link_or_copy


def dup_reasons(status: np.ndarray, keeper_source: np.ndarray, source: str) -> list[str]:
    """``duplicate:<exact|near>`` for a copy kept in the same source, ``duplicate:<exact|near>:<source>``
    naming the source that kept it otherwise: the manifest's per-reason counts then show how much of a
    source was already in another one (cross-source overlap) while counts within a source keep their
    plain names."""
    return [
        f"duplicate:{st}" if ks == source else f"duplicate:{st}:{ks}"
        for st, ks in zip(status.tolist(), keeper_source.tolist(), strict=True)
    ]


def finalize_shard(
    spec: ShardSpec,
    work: Path,
    out: Path,
    max_chars: int,
    shard_sources: list[str],
    batch_rows: int = 2048,
) -> dict:
    """Write one shard's kept and rejected Parquet files, streaming its documents in batches (memory
    stays bounded even for a shard that is one huge compressed file); return what was written.
    ``shard_sources[n]`` is the source of shard ``n`` (a duplicate's reason names its keeper's)."""
    sd = shard_dir(work, spec.shard)
    dec_rank = np.zeros(0, np.int64)
    dec_status = np.zeros(0, object)
    dec_label = np.zeros(0, np.int64)
    dec = decisions_path(work, spec.shard)
    if dec.exists():
        d = pq.read_table(dec)  # one row per document in a duplicate cluster: small
        dec_rank = d.column("rank").to_numpy()
        dec_status = d.column("status").to_numpy(zero_copy_only=False)
        dec_label = d.column("label").to_numpy()
    kd = Path(out) / "kept" / spec.source
    rd = Path(out) / "rejected" / spec.source
    kd.mkdir(parents=True, exist_ok=True)
    rd.mkdir(parents=True, exist_ok=True)
    kept_w = pq.ParquetWriter(kd / f"part-{spec.shard:06d}.parquet", KEPT_SCHEMA)
    dup_w: pq.ParquetWriter | None = None
    rej_counts: Counter = Counter()
    pii: Counter = Counter()
    kept_n = kept_bytes = clusters = 0
    for batch in pq.ParquetFile(sd / "docs.parquet").iter_batches(batch_size=batch_rows):
        docs = pa.Table.from_batches([batch])
        n = docs.num_rows
        rank = docs.column("rank").to_numpy()
        status = np.full(n, "keep", dtype=object)
        label = np.full(n, -1, dtype=np.int64)
        if dec_rank.size:
            pos = np.searchsorted(dec_rank, rank)
            pos = np.minimum(pos, dec_rank.size - 1)
            hit = dec_rank[pos] == rank
            status[hit] = dec_status[pos[hit]]
            label[hit] = dec_label[pos[hit]]
        cluster = np.array([None if lb < 0 else f"{lb:016x}" for lb in label], dtype=object)
        keep = (status == "keep") | (status == "keeper")
        clusters += int((status == "keeper").sum())
        kidx = pa.array(np.flatnonzero(keep))
        kept = pa.table(
            {
                "id": docs.column("id").take(kidx),
                "source": pa.array([spec.source] * len(kidx), pa.string()),
                "kind": pa.array([spec.kind] * len(kidx), pa.string()),
                "text": docs.column("text").take(kidx),
                "bytes": docs.column("bytes").take(kidx),
                "date": docs.column("date").take(kidx),
                "pii": docs.column("pii").take(kidx),
                "cluster_id": pa.array(cluster[keep].tolist(), pa.string()),
            },
            schema=KEPT_SCHEMA,
        )
        kept_w.write_table(kept)
        kept_n += kept.num_rows
        kept_bytes += int(pc.sum(kept.column("bytes")).as_py() or 0)
        for s in kept.column("pii").to_pylist():
            if s != "{}":
                pii.update(json.loads(s))
        didx = np.flatnonzero(~keep)
        if didx.size:
            st = status[didx]
            if (label[didx] < 0).any():
                raise RuntimeError(f"shard {spec.shard}: a duplicate without a cluster label")
            keeper_src = np.asarray(shard_sources, dtype=object)[label[didx] >> SHARD_BITS]
            texts = docs.column("text").take(pa.array(didx)).to_pylist()
            dup = pa.table(
                {
                    "id": docs.column("id").take(pa.array(didx)),
                    "source": pa.array([spec.source] * didx.size, pa.string()),
                    "kind": pa.array([spec.kind] * didx.size, pa.string()),
                    "text": pa.array([t[:max_chars] if max_chars else None for t in texts], pa.string()),
                    "file": pa.array([spec.path] * didx.size, pa.string()),
                    "line": docs.column("line").take(pa.array(didx)),
                    "step": pa.array([f"dedup_{s}" for s in st], pa.string()),
                    "reason": pa.array(dup_reasons(st, keeper_src, spec.source), pa.string()),
                    "cluster_id": pa.array(cluster[didx].tolist(), pa.string()),
                },
                schema=REJECTED_SCHEMA,
            )
            if dup_w is None:
                dup_w = pq.ParquetWriter(rd / f"part-{spec.shard:06d}-dup.parquet", REJECTED_SCHEMA)
            dup_w.write_table(dup)
            rej_counts.update(dup.column("reason").to_pylist())
    kept_w.close()
    if dup_w is not None:
        dup_w.close()
    rej_src = sd / "rejected.parquet"
    rej_dst = rd / f"part-{spec.shard:06d}.parquet"
    link_or_copy(rej_src, rej_dst)  # replaces what a killed earlier attempt of this task linked
    rej_counts.update(pq.read_table(rej_src, columns=["reason"]).column("reason").to_pylist())
    return {
        "shard": spec.shard,
        "source": spec.source,
        "kept": kept_n,
        "kept_bytes": kept_bytes,
        "rejected": dict(rej_counts),
        "clusters": clusters,
        "pii": dict(pii),
    }


def finalize_batch(
    batch: dict[str, np.ndarray], work: str, out: str, max_chars: int, shard_sources: list[str]
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` body: each row's ``spec`` (ShardSpec JSON) through :func:`finalize_shard`."""
    res = [
        json.dumps(
            finalize_shard(ShardSpec(**json.loads(s)), Path(work), Path(out), max_chars, shard_sources)
        )
        for s in batch["spec"]
    ]
    return {"summary": np.array(res, dtype=object)}
