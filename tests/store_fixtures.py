"""Token stores for tests: a prep folder exactly as the mix's prep pass leaves it (document rows in
Parquet, token shards), indexed by the real :func:`dapt.corpora.mix.index.build_store` in-process.

Used by the token-store tests (against the reference packer) and by the train tests, so the train loop
reads the same format, across shard boundaries, that a real mix writes.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from reference_pack import BlockWriter, source_stream

from dapt.corpora.mix.index import StoreJob, StoreResult, build_store, supply_stats
from dapt.corpora.mix.prep import OUT_SCHEMA
from dapt.corpora.mix.store import INDEX, part_name, token_dtype, write_raw

Docs = dict[str, tuple[str, list[list[int]]]]
"""source -> (kind, documents as content token ids, no EOS)."""


def write_prep(
    prep: Path, sources: Docs, eos_id: int, vocab_size: int, docs_per_part: int, seed: int = 0
) -> int:
    """Write ``prep/docs/*.parquet`` and ``prep/tokens/part-*.bin`` for ``sources``; returns the part count.

    Split keys are random (fixed ``seed``); an empty document gets a row with no tokens, as in the prep
    pass. Every fifth document of a source is also given a near-duplicate sibling row, which must
    never be indexed."""
    rng = np.random.default_rng(seed)
    dtype = token_dtype(vocab_size)
    part = 0
    for name, (kind, docs) in sources.items():
        for lo in range(0, len(docs), docs_per_part):
            rows, flat, filled = [], [], 0
            for i, toks in enumerate(docs[lo : lo + docs_per_part], start=lo):
                n = len(toks)
                rows.append(
                    _row(
                        name,
                        f"{name}-{i}",
                        kind,
                        int(rng.integers(0, 1 << 64, dtype=np.uint64)),
                        "train",
                        n,
                        part,
                        filled if n else -1,
                    )
                )
                if n:
                    flat += [*toks, eos_id]
                    filled += n + 1
                if i % 5 == 0:
                    rows.append(
                        _row(
                            name,
                            f"{name}-{i}-dup",
                            kind,
                            int(rng.integers(0, 1 << 63)),
                            "near_dup",
                            0,
                            part,
                            -1,
                        )
                    )
            (prep / "docs").mkdir(parents=True, exist_ok=True)
            pq.write_table(
                pa.Table.from_pylist(rows, schema=OUT_SCHEMA), prep / "docs" / f"{part:06d}.parquet"
            )
            write_raw(prep / part_name(part), np.asarray(flat, dtype=np.int64), dtype)
            part += 1
    return part


def _row(source: str, id_: str, kind: str, key: int, status: str, n: int, part: int, offset: int) -> dict:
    return {
        "source": source,
        "id": id_,
        "kind": kind,
        "key": key,
        "status": status,
        "n_tokens": n,
        "n_bytes": 4 * n,
        "part": part,
        "offset": offset,
        "near_dup_of": "x/y" if status == "near_dup" else None,
        "contam": [],
    }


def index_prep(
    prep: Path,
    out: Path,
    budgets: dict[str, tuple[str, int]],
    block_len: int,
    seed: int,
    eos_id: int,
    vocab_size: int,
    parts: int,
    **sizes: int,
) -> StoreResult:
    """The real index build over ``prep`` into ``out`` (``budgets``: source -> (kind, tokens)); ``sizes``
    overrides :class:`StoreJob`'s sort bucket and chunk sizes."""
    docs = supply_stats(str(prep))
    job = StoreJob(
        prep=str(prep),
        out_dir=str(out),
        sources=tuple((n, k, b, docs.get(n, {}).get("docs", 0)) for n, (k, b) in budgets.items()),
        block_len=block_len,
        seq_len=block_len - 1,
        seed=seed,
        eos_id=eos_id,
        dtype=token_dtype(vocab_size).str,
        parts=parts,
        **sizes,
    )
    return build_store(job)


def store_from_docs(
    folder: Path,
    sources: Docs,
    block_len: int,
    eos_id: int,
    vocab_size: int,
    docs_per_part: int = 8,
    seed: int = 0,
    prep: Path | None = None,
) -> Path:
    """A token store in ``folder/train`` holding every document of ``sources`` once (the total cut down
    to whole blocks, the cut taken from the last source); returns its ``index.json``. The prep folder
    (``prep``, default ``folder/prep``) is the store's source, as the mix's cache is."""
    prep = prep or folder / "prep"
    parts = write_prep(prep, sources, eos_id, vocab_size, docs_per_part, seed)
    supply = {n: sum(len(d) + 1 for d in docs if d) for n, (_k, docs) in sources.items()}
    total = sum(supply.values()) // block_len * block_len
    budgets, left = {}, total
    for n, (k, _docs) in sources.items():
        budgets[n] = (k, min(supply[n], left))
        left -= budgets[n][1]
    index_prep(prep, folder / "train", budgets, block_len, seed, eos_id, vocab_size, parts)
    return folder / "train" / INDEX


def reference_pack_prep(
    prep: Path,
    out: Path,
    budgets: dict[str, tuple[str, int]],
    block_len: int,
    seed: int,
    eos_id: int,
    n_blocks: int,
    dtype: np.dtype,
) -> dict[str, np.ndarray]:
    """The pre-store packer (tests/reference_pack.py) over the same prep folder: documents in
    (split key, id) order per source, as it sorted them; returns its arrays by name."""
    rows = pq.read_table(prep / "docs").to_pylist()
    w = BlockWriter(out, n_blocks, block_len, seed)
    shards: dict[int, np.ndarray] = {}
    for name, (kind, budget) in budgets.items():
        if budget == 0:
            continue
        docs = sorted(
            (r["key"], r["id"], r)
            for r in rows
            if r["source"] == name and r["status"] == "train" and r["n_tokens"]
        )
        toks = []
        for _k, _i, r in docs:
            if r["part"] not in shards:
                shards[r["part"]] = np.fromfile(prep / part_name(r["part"]), dtype=dtype)
            toks.append(shards[r["part"]][r["offset"] : r["offset"] + r["n_tokens"]].astype(np.uint32))
        offsets = np.r_[0, np.cumsum([t.size for t in toks])]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        for t, starts, _n in source_stream(
            np.concatenate(toks), offsets, budget, eos_id, rng, chunk_tokens=64
        ):
            w.add(t, starts, kind == "domain")
    files = w.close()
    return {k: np.load(out / v) for k, v in files.items()}
