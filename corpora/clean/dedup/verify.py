"""Candidate pairs verified by true shingle Jaccard, in two shuffles keyed by each side's shard.

The first pass (grouped by the shard of ``u``) attaches ``u``'s shingles once per shard of its
partners, the second (grouped by the shard of ``v``) compares them with each partner's: each group reads only the texts of one shard from
``work_dir``, so no machine ever holds more than a shard's worth of text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.corpora.clean.dedup.keys import empty_edges
from dapt.corpora.clean.schema import SHARD_BITS, shard_dir


def shard_texts(work: str, shard: int, ranks: np.ndarray) -> dict[int, str]:
    """Key texts (``dedup.keytext``: what the MinHash signatures were computed from) of the given ranks
    of one shard, streamed in batches (never the whole shard at once)."""
    import pyarrow.compute as pc

    out: dict[int, str] = {}
    pf = pq.ParquetFile(shard_dir(work, shard) / "docs.parquet")
    for batch in pf.iter_batches(batch_size=2048, columns=["rank", "text", "ktext"]):
        r = batch.column(0).to_numpy()
        idx = np.flatnonzero(np.isin(r, ranks))
        if idx.size:
            take = pa.array(idx)
            texts = pc.coalesce(batch.column(2).take(take), batch.column(1).take(take)).to_pylist()
            out.update(zip(r[idx].tolist(), texts, strict=True))
    return out


def verify_a(batch: dict[str, np.ndarray], work: str, ngram: int) -> dict[str, np.ndarray]:
    """Group = one shard of the pairs' first side: one row per (``u``, shard of its partners) carrying
    ``u``'s shingle array once and the partners ``vs`` of that shard.

    Why per partner shard and not per pair: a document in a large duplicate cluster is the centre of a
    star (``max_bucket_pairs``) and pairs with every member; shipping its shingles once per pair made
    the shuffle grow with the cluster size, once per partner shard bounds it by the shard count."""
    from dapt.corpora.clean.minhash import shingle_array

    u, v = batch["u"], batch["v"]
    if u.size == 0:
        return {"u": u, "vs": np.zeros(0, object), "sh": np.zeros(0, object), "sb": np.zeros(0, np.int64)}
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)  # sorted by u, then v
    u, v = pairs[:, 0], pairs[:, 1]
    sb = v >> SHARD_BITS
    order = np.lexsort((v, sb, u))
    u, v, sb = u[order], v[order], sb[order]
    starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (sb[1:] != sb[:-1])])
    texts = shard_texts(work, int(u[0] >> SHARD_BITS), np.unique(u))
    cache = {r: shingle_array(t, ngram).tobytes() for r, t in texts.items()}
    groups = np.split(v, starts[1:])
    return {
        "u": u[starts],
        "vs": np.array([g.astype(np.int64).tobytes() for g in groups], dtype=object),
        "sh": np.array([cache[int(r)] for r in u[starts]], dtype=object),
        "sb": sb[starts],
    }


def verify_b(batch: dict[str, np.ndarray], work: str, ngram: int, threshold: float) -> dict[str, np.ndarray]:
    """Group = one shard of the pairs' second side: true Jaccard of each ``u`` against its partners
    ``vs`` in this shard; keep the pairs at or above ``threshold``."""
    from dapt.corpora.clean.minhash import jaccard_arrays, shingle_array

    if batch["u"].size == 0:
        return empty_edges()
    vs = [np.frombuffer(x, np.int64) for x in batch["vs"]]
    texts = shard_texts(work, int(vs[0][0] >> SHARD_BITS), np.unique(np.concatenate(vs)))
    cache = {r: shingle_array(t, ngram) for r, t in texts.items()}
    out_u, out_v = [], []
    for u, group, sh in zip(batch["u"], vs, batch["sh"], strict=True):
        a = np.frombuffer(sh, np.uint64)
        for v in group:
            if jaccard_arrays(a, cache[int(v)]) >= threshold:
                out_u.append(int(u))
                out_v.append(int(v))
    return {"u": np.array(out_u, dtype=np.int64), "v": np.array(out_v, dtype=np.int64)}
