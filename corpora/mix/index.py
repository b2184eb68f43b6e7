"""The mix's two worker-side passes over the prep output: supply counts, and the token store's index.

Both run as one Ray task each (:func:`dapt.pipeline.ray_runtime.call_in_task`), so the driver holds
only counts and budgets. Neither reads a token: the tokens were written once, into the prep pass's
shards, and the index says which of them training reads in which order.

Memory is bounded by a chunk, not by the corpus: :func:`supply_stats` reads the metadata a Parquet
batch at a time; :func:`build_store` sorts a source's documents into canonical order by buckets of the
split key (one bucket of about ``sort_rows`` documents in memory) and builds every permutation (each
epoch's, the block shuffle's) in a scratch file, read and inverted ``chunk`` entries at a time. The
arrays that grow with the corpus are files (page cache the kernel can write back), not heap. Measured
(``bench/mix_index.py``, docs/scale.md): 0.18-0.20 GB peak anonymous memory from 2 to 100 million
documents, where the whole-array version it replaced took 0.27 to 5.4 GB, with byte-identical arrays.

The sampling is the one docs/mixing.md describes, reproduced exactly from the packer this replaced
(``tests/reference_pack.py`` keeps that packer as the oracle of the golden test): per source, documents
in canonical order (split key, then input order); each epoch ``rng.permutation`` of them with
``rng = default_rng([seed, crc32(name)])``; the last epoch a prefix whose last document is truncated to
hit the budget exactly; blocks shuffled by ``default_rng([seed, 0xB10C]).permutation(n_blocks)``.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
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
    INDEX_DTYPE,
    PART_DIR,
    RawAppender,
    SourceRange,
    part_name,
)
from dapt.pipeline.fsutil import atomic_write_json, link_or_copy
from dapt.pipeline.memory import releasing

SHUFFLE_SALT = 0xB10C
STATS_BATCH_ROWS = 1 << 16


def _parquet_files(prep: Path) -> list[Path]:
    return sorted((prep / "docs").glob("*.parquet"))


def _empty_stats() -> dict[str, Any]:
    return {"docs": 0, "tokens": 0, "bytes": 0, "near_dup": 0, "contaminated": 0, "contam_by_task": Counter()}


def _is_training(rows: pa.Table | pa.RecordBatch) -> pa.ChunkedArray | pa.Array:
    """The rows that are training documents: kept (``train``) and with at least one token. The supply
    count and the index must agree on this, or the budgets would not match what is sampled."""
    return pc.and_(pc.equal(rows["status"], "train"), pc.greater(rows["n_tokens"], 0))


def supply_stats(prep: str) -> dict[str, dict[str, Any]]:
    """Per source: training documents, their tokens (EOS included), bytes, and the near-duplicate and
    contaminated drops by task, counted a Parquet batch at a time."""
    stats: dict[str, dict[str, Any]] = defaultdict(_empty_stats)
    cols = ["source", "status", "n_tokens", "n_bytes", "contam"]
    for f in _parquet_files(Path(prep)):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=STATS_BATCH_ROWS, columns=cols):
            t = pa.Table.from_batches([batch])
            train = t.filter(_is_training(t))
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
    sources: tuple[tuple[str, str, int, int], ...]
    """(name, kind, token budget, training documents) in config order; the document count (from
    :func:`supply_stats`) only sizes the sort's buckets."""
    block_len: int
    seq_len: int
    seed: int
    eos_id: int
    dtype: str
    parts: int
    sort_rows: int = 1 << 20
    """Documents per bucket of the canonical-order sort (24 bytes each in memory, plus its sort)."""
    chunk: int = 1 << 20
    """Entries per chunk when sampling instances and inverting the block shuffle (8-40 bytes each)."""


@dataclass(frozen=True)
class StoreResult:
    n_blocks: int
    total_tokens: int
    domain_tokens: int
    used: dict[str, dict[str, int]]
    """Per source: ``tokens`` (its stream length, counted from the index) and ``docs`` (instances)."""


DOC_RECORD = np.dtype([("key", "<u8"), ("offset", "<i8"), ("length", "<i8")])
MAX_BUCKETS = 256
"""At most this many bucket files open at once (well under the usual 1,024-descriptor limit); past
``MAX_BUCKETS * sort_rows`` documents in one source (268 million by default) a bucket outgrows
``sort_rows``."""


def _scratch(path: Path, dtype: Any, n: int) -> np.ndarray:
    """A writable ``n``-entry array in a file: page cache the kernel can write back, not heap."""
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="w+", shape=(n,))


def permutation_on_disk(rng: np.random.Generator, n: int, path: Path, chunk: int) -> np.ndarray:
    """``rng.permutation(n)``, the same numbers and the same draws from ``rng``, built in a file.

    numpy's ``permutation(n)`` is ``arange(n)`` shuffled in place by ``Generator.shuffle`` (Fisher-Yates,
    one bounded draw per position whatever the dtype), so shuffling a file-backed ``arange`` reproduces
    it without holding ``8 n`` bytes of heap. Shuffle needs a plain ``ndarray``, hence the view."""
    dtype = np.int32 if n < 1 << 31 else np.int64
    perm = _scratch(path, dtype, n)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        perm[lo:hi] = np.arange(lo, hi, dtype=dtype)
    rng.shuffle(perm.view(np.ndarray))
    return perm


def _training_rows(prep: Path, source: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A source's training documents' ``columns``, a Parquet batch at a time.

    Read file by file in this thread rather than by a ``pyarrow.dataset`` scan: the scanner's background
    readahead ran ahead of the sort and held up to 0.3 GB more at 15 million documents (measured with
    ``bench/mix_index.py``); this stays at one row group."""
    for f in _parquet_files(prep):
        for batch in pq.ParquetFile(f).iter_batches(
            batch_size=STATS_BATCH_ROWS, columns=[*columns, "source", "status"]
        ):
            yield batch.filter(pc.and_(pc.equal(batch["source"], source), _is_training(batch)))


@releasing  # gives back what the buckets' sorts leave in the allocator's free lists (0.04 GB)
def _sorted_source_docs(
    prep: Path, source: str, n_docs: int, part_start: np.ndarray, job: StoreJob, files: dict[str, RawAppender]
) -> int:
    """Append a source's training documents, in canonical order, to ``doc_offset`` and ``doc_length``;
    returns how many there were.

    Canonical order is (split key, position in the shards), the position standing for input order
    (part, then offset in part). The sort is a bucket sort on the key's top bits: split keys are
    xxh64 hashes, uniform, so ``n_docs / sort_rows`` buckets hold about ``sort_rows`` documents each,
    and sorting them one at a time and concatenating is the global sort with one bucket in memory."""
    out = Path(job.out_dir)
    bits = min(max(0, (max(1, -(-n_docs // job.sort_rows)) - 1).bit_length()), MAX_BUCKETS.bit_length() - 1)
    paths = [out / f".bucket-{b:03d}.{os.getpid()}.tmp" for b in range(1 << bits)]
    handles = [open(p, "wb") for p in paths]  # noqa: SIM115 (closed below)
    try:
        for batch in _training_rows(prep, source, ["key", "n_tokens", "part", "offset"]):
            rec = np.empty(batch.num_rows, dtype=DOC_RECORD)
            rec["key"] = batch["key"].to_numpy()
            rec["offset"] = part_start[batch["part"].to_numpy().astype(np.int64)] + batch["offset"].to_numpy()
            rec["length"] = batch["n_tokens"].to_numpy() + 1
            bucket = (
                (rec["key"] >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(rec), int)
            )
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange((1 << bits) + 1))
            for b, fh in enumerate(handles):
                if bounds[b] < bounds[b + 1]:
                    rec[order[bounds[b] : bounds[b + 1]]].tofile(fh)
    finally:
        for fh in handles:
            fh.close()
    count = 0
    for path in paths:
        rec = np.fromfile(path, dtype=DOC_RECORD)
        path.unlink()
        rec = rec[np.lexsort((rec["offset"], rec["key"]))]
        files["doc_offset"].add(rec["offset"])
        files["doc_length"].add(rec["length"])
        count += rec.size
    return count


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
    for name, kind, budget, n_docs in job.sources:
        doc0, inst0, pos0 = files["doc_offset"].count, files["instance_doc"].count, pos
        if budget > 0:
            n = _sorted_source_docs(prep, name, n_docs, part_start, job, files)
            if n == 0:
                raise ValueError(
                    f"mix: source {name} has a budget of {budget} tokens but no training documents"
                )
            lens = files["doc_length"].view(doc0, doc0 + n)
            pos = _sample(lens, budget, doc0, pos, job, name, files)
            del lens
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
    _write_block_stream(out, n_blocks, job)
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


def _write_block_stream(out: Path, n_blocks: int, job: StoreJob) -> None:
    """``block_stream.bin``: the inverse of the block shuffle, stream block ``i`` at row ``row_of[i]``,
    scattered a chunk at a time into the file."""
    scratch = out / f".row_of.{os.getpid()}.tmp"
    row_of = permutation_on_disk(
        np.random.default_rng([int(job.seed), SHUFFLE_SALT]), n_blocks, scratch, job.chunk
    )
    final = out / "block_stream.bin"
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.touch()
    block_stream = _scratch(tmp, INDEX_DTYPE, n_blocks)
    for lo in range(0, n_blocks, job.chunk):
        hi = min(n_blocks, lo + job.chunk)
        block_stream[np.asarray(row_of[lo:hi])] = np.arange(lo, hi)
    if isinstance(block_stream, np.memmap):
        block_stream.flush()
    del block_stream, row_of
    scratch.unlink(missing_ok=True)
    os.replace(tmp, final)


def _sample(
    lens: np.ndarray,
    budget: int,
    doc0: int,
    pos: int,
    job: StoreJob,
    name: str,
    files: dict[str, RawAppender],
) -> int:
    """Append one source's instances (exactly ``budget`` tokens) to the index; returns the new stream end.

    Each epoch is a permutation of the source's documents (on disk, :func:`permutation_on_disk`), read
    a chunk at a time: the documents that fit whole, then the one truncated to hit the budget."""
    rng = np.random.default_rng([int(job.seed), zlib.crc32(name.encode())])
    n_docs = lens.size
    scratch = Path(job.out_dir) / f".epoch.{os.getpid()}.tmp"
    remaining = int(budget)
    while remaining > 0:
        order = permutation_on_disk(rng, n_docs, scratch, job.chunk)
        for lo in range(0, n_docs, job.chunk):
            docs = np.asarray(order[lo : lo + job.chunk], dtype=np.int64)
            doc_lens = np.asarray(lens[docs])
            cum = np.cumsum(doc_lens)
            k_full = int(np.searchsorted(cum, remaining, side="right"))  # documents that fit whole
            if k_full:
                files["instance_doc"].add(doc0 + docs[:k_full])
                files["instance_start"].add(pos + cum[:k_full] - doc_lens[:k_full])
                pos += int(cum[k_full - 1])
                remaining -= int(cum[k_full - 1])
            if k_full < docs.size:
                if remaining > 0:  # the truncated last document: first m - 1 tokens + EOS
                    files["instance_doc"].add(np.array([doc0 + docs[k_full]]))
                    files["instance_start"].add(np.array([pos]))
                    pos += remaining
                    remaining = 0
                break
        del order
    scratch.unlink(missing_ok=True)
    return pos
