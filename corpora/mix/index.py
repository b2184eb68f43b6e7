"""The mix's two worker-side passes over the prep output: supply counts, and the token store's index.

Both run as one Ray task each (:func:`dapt.pipeline.ray_runtime.call_in_task`), so the driver holds
only counts and budgets. Neither reads a token: the tokens were written once, into the prep pass's
shards, and the index says which of them training reads in which order.

Memory, measured by reasoning about the arrays (no process holds tokens): :func:`supply_stats` reads the
metadata a Parquet batch at a time (bounded); :func:`build_store` holds one source's per-document arrays
at a time, about 80 bytes per document of the largest source (4 GB at 50 million documents), and the
block permutation, 16 bytes per block (200 MB at 25 B tokens of 2,049-token blocks).

The sampling is the one docs/mixing.md describes, reproduced exactly from the packer this replaced
(``tests/reference_pack.py`` keeps that packer as the oracle of the golden test): per source, documents
in canonical order (split key, then input order); each epoch ``rng.permutation`` of them with
``rng = default_rng([seed, crc32(name)])``; the last epoch a prefix whose last document is truncated to
hit the budget exactly; blocks shuffled by ``default_rng([seed, 0xB10C]).permutation(n_blocks)``.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.corpora.mix.store import (
    ARRAYS,
    FORMAT,
    INDEX,
    PART_DIR,
    RawAppender,
    SourceRange,
    part_name,
    write_raw,
)
from dapt.pipeline.fsutil import atomic_write_json, link_or_copy

SHUFFLE_SALT = 0xB10C
STATS_BATCH_ROWS = 1 << 16


def _parquet_files(prep: Path) -> list[Path]:
    return sorted((prep / "docs").glob("*.parquet"))


def _empty_stats() -> dict[str, Any]:
    return {"docs": 0, "tokens": 0, "bytes": 0, "near_dup": 0, "contaminated": 0, "contam_by_task": Counter()}


def supply_stats(prep: str) -> dict[str, dict[str, Any]]:
    """Per source: training documents, their tokens (EOS included), bytes, and the near-duplicate and
    contaminated drops by task, counted a Parquet batch at a time."""
    stats: dict[str, dict[str, Any]] = defaultdict(_empty_stats)
    cols = ["source", "status", "n_tokens", "n_bytes", "contam"]
    for f in _parquet_files(Path(prep)):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=STATS_BATCH_ROWS, columns=cols):
            t = pa.Table.from_batches([batch])
            train = t.filter(pc.and_(pc.equal(t["status"], "train"), pc.greater(t["n_tokens"], 0)))
            agg = train.group_by("source").aggregate(
                [("n_tokens", "sum"), ("n_tokens", "count"), ("n_bytes", "sum")]
            )
            for src, ntok, ndocs, nbytes in zip(
                *(agg[c].to_pylist() for c in ("source", "n_tokens_sum", "n_tokens_count", "n_bytes_sum")),
                strict=True,
            ):
                s = stats[src]
                s["docs"] += ndocs
                s["tokens"] += ntok + ndocs  # + one EOS per document
                s["bytes"] += nbytes
            by_status = t.group_by(["source", "status"]).aggregate([("status", "count")])
            for src, status, n in zip(
                *(by_status[c].to_pylist() for c in ("source", "status", "status_count")), strict=True
            ):
                if status in ("near_dup", "contaminated"):
                    stats[src][status] += n
            dropped = t.filter(pc.not_equal(t["status"], "train"))
            flat = pc.list_flatten(dropped["contam"])
            if len(flat):
                owner = pc.take(dropped["source"], pc.list_parent_indices(dropped["contam"]))
                pairs = pa.table({"source": owner, "task": flat}).group_by(["source", "task"])
                counted = pairs.aggregate([("task", "count")])
                for src, task, n in zip(
                    *(counted[c].to_pylist() for c in ("source", "task", "task_count")), strict=True
                ):
                    stats[src]["contam_by_task"][task] += n
    return {k: {**v, "contam_by_task": dict(v["contam_by_task"])} for k, v in stats.items()}


@dataclass(frozen=True)
class StoreJob:
    """The payload of :func:`build_store`: where the prep output is, where the store goes, and the plan."""

    prep: str
    out_dir: str
    sources: tuple[tuple[str, str, int], ...]
    """(name, kind, token budget) in config order."""
    block_len: int
    seq_len: int
    seed: int
    eos_id: int
    dtype: str
    parts: int


@dataclass(frozen=True)
class StoreResult:
    n_blocks: int
    total_tokens: int
    domain_tokens: int
    used: dict[str, dict[str, int]]
    """Per source: ``tokens`` (its stream length, counted from the index) and ``docs`` (instances)."""


def _source_docs(prep: Path, source: str, part_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset in the shards, length with EOS) of a source's training documents in canonical order."""
    t = pq.read_table(
        prep / "docs",
        columns=["key", "n_tokens", "part", "offset"],
        filters=[("source", "=", source), ("status", "=", "train"), ("n_tokens", ">", 0)],
    )
    key = t["key"].to_numpy()
    part = t["part"].to_numpy().astype(np.int64)
    offset = t["offset"].to_numpy()
    lens = t["n_tokens"].to_numpy() + 1
    del t
    order = np.lexsort((offset, part, key))  # split key, then input order (part, position in part)
    return (part_start[part] + offset)[order], lens[order]


def build_store(job: StoreJob) -> StoreResult:
    """Link the prep's token shards into ``out_dir`` and write the index arrays and ``index.json``."""
    prep, out = Path(job.prep), Path(job.out_dir)
    (out / PART_DIR).mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".*.tmp"), *(out / PART_DIR).glob(".*.tmp")]:
        stale.unlink()  # what a killed earlier attempt of this task left
    itemsize = np.dtype(job.dtype).itemsize
    part_tokens = []
    for p in range(job.parts):
        src = prep / part_name(p)
        part_tokens.append(src.stat().st_size // itemsize)
        link_or_copy(src, out / part_name(p))
    part_start = np.zeros(job.parts + 1, dtype=np.int64)
    np.cumsum(part_tokens, out=part_start[1:])

    files = {name: RawAppender(out / f"{name}.bin") for name in ARRAYS if name != "block_stream"}
    pos = 0
    ranges: list[SourceRange] = []
    used: dict[str, dict[str, int]] = {}
    for name, kind, budget in job.sources:
        doc0, inst0, pos0 = files["doc_offset"].count, files["instance_doc"].count, pos
        if budget > 0:
            offsets, lens = _source_docs(prep, name, part_start)
            if lens.size == 0:
                raise ValueError(
                    f"mix: source {name} has a budget of {budget} tokens but no training documents"
                )
            files["doc_offset"].add(offsets)
            files["doc_length"].add(lens)
            pos = _sample(lens, budget, doc0, pos, job.seed, name, files)
            del offsets, lens
        ranges.append(
            SourceRange(
                name,
                kind,
                (doc0, files["doc_offset"].count),
                (inst0, files["instance_doc"].count),
                (pos0, pos),
            )
        )
        used[name] = {"tokens": pos - pos0, "docs": files["instance_doc"].count - inst0}
    files["instance_start"].add(np.array([pos]))
    if pos % job.block_len:
        raise ValueError(
            f"mix: the stream has {pos} tokens, not a whole number of {job.block_len}-token blocks"
        )
    n_blocks = pos // job.block_len
    row_of = np.random.default_rng([int(job.seed), SHUFFLE_SALT]).permutation(n_blocks)
    block_stream = np.empty(n_blocks, dtype=np.int64)
    block_stream[row_of] = np.arange(n_blocks)  # stream block i is row row_of[i]
    del row_of
    write_raw(out / "block_stream.bin", block_stream, np.dtype("<i8"))
    lengths = {name: f.close() for name, f in files.items()}
    lengths["block_stream"] = n_blocks

    domain = sum(r.stream[1] - r.stream[0] for r in ranges if r.kind == "domain")
    atomic_write_json(
        out / INDEX,
        {
            "format": FORMAT,
            "dtype": np.dtype(job.dtype).str,
            "seq_len": job.seq_len,
            "block_len": job.block_len,
            "n_blocks": n_blocks,
            "eos_id": job.eos_id,
            "seed": job.seed,
            "tokens": pos,
            "domain_tokens": domain,
            "parts": [{"file": part_name(p), "tokens": int(n)} for p, n in enumerate(part_tokens)],
            "lengths": lengths,
            "sources": [r.as_json() for r in ranges],
            "layout": "docs/mixing.md (Output); reader: dapt.corpora.mix.store.TokenStore",
        },
    )
    return StoreResult(n_blocks=n_blocks, total_tokens=pos, domain_tokens=domain, used=used)


def _sample(
    lens: np.ndarray, budget: int, doc0: int, pos: int, seed: int, name: str, files: dict[str, RawAppender]
) -> int:
    """Append one source's instances (exactly ``budget`` tokens) to the index; returns the new stream end."""
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    n_docs = lens.size
    remaining = int(budget)
    while remaining > 0:
        order = rng.permutation(n_docs)
        cum = np.cumsum(lens[order])
        k_full = int(np.searchsorted(cum, remaining, side="right"))  # documents that fit whole
        if k_full:
            files["instance_doc"].add(doc0 + order[:k_full])
            files["instance_start"].add(pos + cum[:k_full] - lens[order[:k_full]])
            used = int(cum[k_full - 1])
            pos += used
            remaining -= used
        if k_full < n_docs and remaining > 0:  # the truncated last document: first m - 1 tokens + EOS
            files["instance_doc"].add(np.array([doc0 + order[k_full]]))
            files["instance_start"].add(np.array([pos]))
            pos += remaining
            remaining = 0
    return pos
