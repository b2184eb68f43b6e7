"""The sweep's data: one token pool made by the mix stage, and each trial's mix as an index over it.

Why a pool and not a mix per trial: every trial needs the same tokenised, decontaminated, packed text
in different proportions. The mix stage's token store keeps the sources' streams one after another
(corpora/mix/store.py) and a row of the training data is a stream block, so the blocks that lie wholly
in domain sources and those wholly in general sources are known from the index alone. A trial's data is
then ``round(r * B)`` domain and ``B - round(r * B)`` general blocks, a new ``block_stream.bin`` (8 bytes
a row) beside links to the pool's token shards: no text is tokenised twice, and a trial's domain share
is exact to the block.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dapt.corpora.mix.store import INDEX, INDEX_DTYPE, write_raw
from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import atomic_write_json


@dataclass(frozen=True)
class TrialData:
    """What a trial trains on, and what it is made of."""

    path: str
    blocks: int
    domain_blocks: int
    domain_fraction: float
    repeats: dict[str, float]
    """Epochs over the pool's distinct domain / general blocks (above 1: blocks repeat)."""
    rows_sha256: str
    """Hash of the trial's block list: what it trains on, for the trial's key."""


def pool_tokens(fractions: list[float], budgets: list[int]) -> int:
    """Pool size for a 50/50 pool that holds the largest domain and general share any trial takes."""
    need = max(max(fractions), 1 - min(fractions)) * max(budgets)
    return int(math.ceil(2 * need * 1.02))


def block_kinds(index: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Stream block ids lying wholly in domain sources, and wholly in general ones."""
    block_len = int(index["block_len"])
    n_stream = int(index["lengths"]["block_stream"])
    starts = np.arange(n_stream, dtype=np.int64) * block_len
    ends = starts + block_len
    kinds = {"domain": np.zeros(n_stream, bool), "general": np.zeros(n_stream, bool)}
    for src in index.get("sources") or []:
        lo, hi = src["stream"]
        kinds[src["kind"]] |= (starts >= lo) & (ends <= hi)
    return np.flatnonzero(kinds["domain"]), np.flatnonzero(kinds["general"])


def _take(ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` ids, each pass over ``ids`` a new permutation (so repeats only once all were used)."""
    if n == 0:
        return np.zeros(0, np.int64)
    passes = [rng.permutation(ids) for _ in range(-(-n // len(ids)))]
    return np.concatenate(passes)[:n]


def make_trial_data(pool_store: Path, out: Path, fraction: float, blocks: int, seed: int) -> TrialData:
    """Write the trial's store folder: links to the pool's files and its own block list."""
    index = json.loads((pool_store / INDEX).read_text())
    domain, general = block_kinds(index)
    n_dom = int(round(fraction * blocks))
    for kind, ids, n in (("domain", domain, n_dom), ("general", general, blocks - n_dom)):
        if n and not len(ids):
            raise InputError(
                f"{pool_store}: the sweep's pool has no whole {kind} blocks; raise sweep.budgets"
            )
    rng = np.random.default_rng(seed)
    rows = np.concatenate([_take(domain, n_dom, rng), _take(general, blocks - n_dom, rng)])
    rows = rows[rng.permutation(len(rows))]
    out.mkdir(parents=True, exist_ok=True)
    for entry in pool_store.iterdir():
        if entry.name in (INDEX, "block_stream.bin"):
            continue
        link = out / entry.name
        if not link.exists():
            os.symlink(entry.resolve(), link)
    rows = rows.astype(INDEX_DTYPE)
    write_raw(out / "block_stream.bin", rows, INDEX_DTYPE)
    trial_index = {
        **index,
        "n_blocks": int(len(rows)),
        "lengths": {**index["lengths"], "block_stream": int(len(rows))},
        "sweep": {"domain_fraction": fraction, "domain_blocks": n_dom, "seed": seed},
    }
    atomic_write_json(out / INDEX, trial_index)
    return TrialData(
        path=str((out / INDEX).resolve()),
        blocks=int(len(rows)),
        domain_blocks=n_dom,
        domain_fraction=n_dom / max(1, len(rows)),
        rows_sha256=hashlib.sha256(rows.tobytes()).hexdigest(),
        repeats={
            "domain": round(n_dom / max(1, len(domain)), 4),
            "general": round((len(rows) - n_dom) / max(1, len(general)), 4),
        },
    )
