"""Near-duplicate candidates by MinHash LSH: documents sharing a band key become candidate pairs.

One row per (document, band) shuffled on band-key buckets (phase B). Only the candidate pairs leave
this module; whether they are true near-duplicates is ``verify``'s job.
"""

from __future__ import annotations

import numpy as np

from dapt.corpora.clean.dedup.keys import C1, bucket, empty_edges


def explode_bands(
    batch: dict[str, np.ndarray], bands: int, scope: str, buckets: int
) -> dict[str, np.ndarray]:
    """One row per (document, band): key, rank, key-text hash; documents without shingles are left out."""
    ok = batch["has_sig"].astype(bool)
    rank = batch["rank"][ok]
    khi = batch["khi"][ok]
    keys = np.stack([batch[f"b{b}"][ok] for b in range(bands)], axis=1).astype(np.uint64)
    if scope == "source":
        keys = keys ^ (batch["source_idx"][ok].astype(np.uint64)[:, None] + np.uint64(1)) * C1
    key = keys.reshape(-1)
    return {
        "key": key.view(np.int64),
        "rank": np.repeat(rank, bands),
        "khi": np.repeat(khi, bands),
        "bucket": bucket(key, buckets),
    }


def band_group(batch: dict[str, np.ndarray], max_pairs: int, collapse_exact: bool) -> dict[str, np.ndarray]:
    """Candidate pairs (a < b) among documents that share a band key.

    Identical key texts are collapsed to their lowest rank first (the exact pass links them), so a
    boilerplate document repeated a million times does not make a million-squared pair list. A key
    shared by more than ``max_pairs`` documents gives a star around its lowest rank, the copy dedup
    keeps, so every member is verified against the canonical one (pairs among the other members are
    left to the bands they share with fewer documents).
    """
    key, rank, khi = batch["key"], batch["rank"], batch["khi"]
    if key.size < 2:
        return empty_edges()
    if collapse_exact:
        order = np.lexsort((rank, khi, key))
        key, rank, khi = key[order], rank[order], khi[order]
        first = np.r_[True, (key[1:] != key[:-1]) | (khi[1:] != khi[:-1])]
        key, rank = key[first], rank[first]
    order = np.lexsort((rank, key))  # by key, then rank: each run's first member is its lowest rank
    key, rank = key[order], rank[order]
    brk = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    sizes = np.diff(brk)
    us, vs = [], []
    for i in np.flatnonzero(sizes > 1):
        members = rank[brk[i] : brk[i + 1]]  # sorted ascending
        k = members.size
        if k <= max_pairs:
            a, b = np.triu_indices(k, 1)
            us.append(members[a])
            vs.append(members[b])
        else:
            us.append(np.full(k - 1, members[0]))
            vs.append(members[1:])
    if not us:
        return empty_edges()
    return {"u": np.concatenate(us), "v": np.concatenate(vs)}
