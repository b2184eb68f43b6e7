"""Integer keys shared by the dedup shuffles: hash buckets, the mixing function, empty edge batches.

Every shuffle groups rows by a bucket of a 64-bit key, and every group function may have to return
"no edges"; these few helpers are what the exact, LSH, verify and connected-components passes have in
common, so they live below all of them.
"""

from __future__ import annotations

import numpy as np

from dapt.corpora.clean.minhash import mix64

C1 = np.uint64(0x9E3779B97F4A7C15)
"""Odd 64-bit constant (golden ratio) for salting keys before :func:`mix`."""


def mix(x: np.ndarray) -> np.ndarray:
    return mix64(x.astype(np.uint64))


def bucket(x: np.ndarray, buckets: int) -> np.ndarray:
    """Shuffle bucket of each key: groups are buckets, not single keys (per-group overhead)."""
    return (mix(x) % np.uint64(buckets)).astype(np.int64)


def empty_edges() -> dict[str, np.ndarray]:
    return {"u": np.zeros(0, np.int64), "v": np.zeros(0, np.int64)}
