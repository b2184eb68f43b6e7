"""Candidate pairs verified by true shingle Jaccard, in two shuffles keyed by each side's shard.

The first pass (grouped by the shard of ``u``) attaches ``u``'s shingles, the second (grouped by the
shard of ``v``) compares them with ``v``'s: each group reads only the texts of one shard from
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
    """Group = one shard of the pairs' first side: attach the shingle array of ``a``."""
    from dapt.corpora.clean.minhash import shingle_array

    u, v = batch["u"], batch["v"]
    if u.size == 0:
        return {"u": u, "v": v, "sh": np.zeros(0, object), "sb": np.zeros(0, np.int64)}
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)
    u, v = pairs[:, 0], pairs[:, 1]
    texts = shard_texts(work, int(u[0] >> SHARD_BITS), np.unique(u))
    cache = {r: shingle_array(t, ngram).tobytes() for r, t in texts.items()}
    sh = np.array([cache[int(r)] for r in u], dtype=object)
    return {"u": u, "v": v, "sh": sh, "sb": v >> SHARD_BITS}


def verify_b(batch: dict[str, np.ndarray], work: str, ngram: int, threshold: float) -> dict[str, np.ndarray]:
    """Group = one shard of the pairs' second side: true Jaccard against ``b``; keep >= threshold."""
    from dapt.corpora.clean.minhash import jaccard_arrays, shingle_array

    u, v, sh = batch["u"], batch["v"], batch["sh"]
    if u.size == 0:
        return empty_edges()
    texts = shard_texts(work, int(v[0] >> SHARD_BITS), np.unique(v))
    cache = {r: shingle_array(t, ngram) for r, t in texts.items()}
    keep = np.array(
        [
            jaccard_arrays(np.frombuffer(s, np.uint64), cache[int(b)]) >= threshold
            for s, b in zip(sh, v, strict=True)
        ],
        dtype=bool,
    )
    return {"u": u[keep], "v": v[keep]}
