"""Connected components of the duplicate graph by alternating large-star / small-star shuffles.

Kiveris et al. 2014: each round is two ``groupby`` passes over the edge list, so no machine holds
the graph; at the fixed point every node points at the lowest rank of its component, which becomes
the cluster label and the keeper.
"""

from __future__ import annotations

import numpy as np

from dapt.corpora.clean.dedup.keys import C1, bucket, mix
from dapt.corpora.clean.schema import SHARD_BITS


def both_directions(batch: dict[str, np.ndarray], buckets: int) -> dict[str, np.ndarray]:
    """Every edge in both directions, bucketed by its first node (the star passes group on it)."""
    u = np.concatenate([batch["u"], batch["v"]])
    v = np.concatenate([batch["v"], batch["u"]])
    return {"u": u, "v": v, "bucket": bucket(u, buckets)}


def star_group(batch: dict[str, np.ndarray], large: bool) -> dict[str, np.ndarray]:
    """One large-star or small-star step for every node ``u`` in the group (edges both directions).

    large-star: each neighbour ``v > u`` is linked to ``m = min(N(u) + u)``.
    small-star: ``u`` and each neighbour ``v < u`` are linked to ``m = min({v < u} + u)``.
    Output edges are (bigger, smaller), deduplicated within the group, with a checksum column.
    """
    u, v = batch["u"], batch["v"]
    if u.size == 0:
        return {"u": u, "v": v, "h": np.zeros(0, np.int64)}
    e = np.unique(np.stack([u, v], axis=1), axis=0)  # sorted by u, then v
    u, v = e[:, 0], e[:, 1]
    if not large:
        small = v < u
        u, v = u[small], v[small]
        # every node keeps a self entry so it is linked to its minimum smaller neighbour
        nodes = np.unique(e[:, 0])
        u = np.concatenate([u, nodes])
        v = np.concatenate([v, nodes])
        o = np.lexsort((v, u))
        u, v = u[o], v[o]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    m = np.minimum.reduceat(v, starts)
    m_of = np.repeat(m, np.diff(np.r_[starts, u.size]))
    m_of = np.minimum(m_of, u)
    if large:
        sel = v > u
    else:
        sel = v != m_of
    a, b = v[sel], m_of[sel]
    if a.size:
        out = np.unique(np.stack([a, b], axis=1), axis=0)
        a, b = out[:, 0], out[:, 1]
    h = (mix(a.astype(np.uint64) * C1 + b.astype(np.uint64)) >> np.uint64(34)).astype(np.int64)
    return {"u": a, "v": b, "h": h}


def labels_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Final star edges (v -> m): label rows for v and for the centre m itself."""
    u, v = batch["u"], batch["v"]
    node = np.concatenate([u, v])
    label = np.concatenate([v, v])
    return {"node": node, "label": label, "exact": np.zeros(node.size, np.int8), "shard": node >> SHARD_BITS}
