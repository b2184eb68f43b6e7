"""Exact duplicates: documents whose 128-bit text hash repeats, pointed at the lowest rank.

One ``groupby`` on hash buckets (phase B). Kept apart from the near-duplicate passes because it
needs only the hash columns of ``meta`` and runs even when near dedup is off. Each document has two
hashes, of its key text (before profile-specific edits: copies whose cleaning diverged) and of its
cleaned text (copies whose cleaning converged); both go into the same groupby, one row per distinct
hash of a document, so equal hashes of either kind link documents.
"""

from __future__ import annotations

import numpy as np

from dapt.corpora.clean.dedup.keys import bucket, empty_edges
from dapt.corpora.clean.schema import SHARD_BITS


def explode_hashes(batch: dict[str, np.ndarray], buckets: int) -> dict[str, np.ndarray]:
    """One row per distinct hash of each document: the key-text hash, and the cleaned-text hash where
    it differs (where the profile edited the document)."""
    rank, khi, klo, xhi, xlo = (batch[c] for c in ("rank", "khi", "klo", "xhi", "xlo"))
    other = (xhi != khi) | (xlo != klo)
    hi = np.concatenate([khi, xhi[other]])
    return {
        "rank": np.concatenate([rank, rank[other]]),
        "xhi": hi,
        "xlo": np.concatenate([klo, xlo[other]]),
        "bucket": bucket(hi, buckets),
    }


def exact_group(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Within a hash bucket: every document whose 128-bit hash repeats points at the lowest rank (a
    document whose two hashes both repeat may point at two keepers: components merge them)."""
    hi, lo, rank = batch["xhi"], batch["xlo"], batch["rank"]
    if rank.size < 2:
        return empty_edges()
    order = np.lexsort((rank, lo, hi))
    hi, lo, rank = hi[order], lo[order], rank[order]
    same = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    if not same.any():
        return empty_edges()
    run_start = np.r_[0, np.flatnonzero(~same) + 1]
    run_id = np.cumsum(np.r_[True, ~same]) - 1
    keeper = rank[run_start][run_id]
    dup = rank != keeper
    return {"u": rank[dup], "v": keeper[dup]}


def exact_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exact edges (dup -> keeper) as decision rows: the duplicate goes, flagged ``exact``."""
    u = batch["u"]
    return {
        "node": u,
        "label": np.full(u.size, -1, np.int64),
        "exact": np.ones(u.size, np.int8),
        "shard": u >> SHARD_BITS,
    }
