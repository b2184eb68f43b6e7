"""The mix stage's training data: a sharded token store and the index that makes it blocks (public reader).

Why this layout (Megatron's ``.bin``/``.idx`` idea): the tokens of every training document are written
**once**, by the Ray tasks that tokenise them, into token shards (one per prep task, bounded by
``mix.docs_per_task`` documents); epochs, the per-source budgets, the truncated last document and the
global block shuffle are all index arrays over those shards. So no process ever holds a source's tokens,
repeating a source costs index bytes rather than a copy, and a multi-node run reads a handful of files
from shared storage instead of one file per block.

Folder (``<run_dir>/mix/train/``), every array raw little-endian, its dtype and length in ``index.json``:

- ``tokens/part-NNNNNN.bin``: ``uint16`` (vocabulary up to 65,536) or ``uint32`` tokens; each stored
  document is its content tokens followed by ``eos_id``. Shards hold whole documents.
- ``doc_offset.bin``, ``doc_length.bin`` (int64): per training document, in the mix's canonical order
  (per source: split key, then input order; sources in config order), where its tokens start in the
  concatenation of the shards and how many there are (EOS included).
- ``instance_doc.bin`` (int64): the document of each *instance*, in stream order. The stream is the
  sources' epochs one after another (each epoch a permutation of the source's documents), cut so each
  source contributes exactly its budget.
- ``instance_start.bin`` (int64, one more than the instances): where each instance starts in the
  stream. An instance shorter than its document is the one truncated piece per source: the document's
  first ``length - 1`` tokens and then ``eos_id``.
- ``block_stream.bin`` (int64): row ``r`` of the training data is stream block ``block_stream[r]``,
  i.e. stream tokens ``[b * block_len, (b + 1) * block_len)``. Rows are read 0, 1, 2, ...: the
  resume position is a row index.

:class:`TokenStore` reads it (memory-mapped; a block costs a binary search and a few slices);
:class:`PackedBlocks` reads the format before it (one ``tokens.npy`` of shuffled rows) and is what test
fixtures write; :func:`open_blocks` picks either from a path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dapt-tokens-v2"
LEGACY_FORMAT = "dapt-packed-v1"
INDEX = "index.json"
PART_DIR = "tokens"
INDEX_DTYPE = np.dtype("<i8")
ARRAYS = ("doc_offset", "doc_length", "instance_doc", "instance_start", "block_stream")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest token dtype for a vocabulary: uint16 halves the store below 65,537 ids."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def part_name(index: int) -> str:
    return f"{PART_DIR}/part-{index:06d}.bin"


def write_raw(path: Path, arr: np.ndarray, dtype: np.dtype) -> None:
    """Write ``arr`` as raw ``dtype`` bytes through a temporary name, so a retried or killed writer never
    leaves a half file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    np.ascontiguousarray(arr, dtype=dtype).tofile(tmp)
    os.replace(tmp, path)


class RawAppender:
    """Appends int64 chunks to a raw file (the index arrays are built a source and an epoch at a time,
    so their final length is known only at the end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 (closed in close())
        self.count = 0

    def add(self, arr: np.ndarray) -> None:
        a = np.ascontiguousarray(arr, dtype=INDEX_DTYPE)
        a.tofile(self.fh)
        self.count += a.size

    def view(self, start: int, stop: int) -> np.ndarray:
        """Entries ``[start, stop)`` written so far, read back memory-mapped (not copied)."""
        self.fh.flush()
        if stop <= start:
            return np.zeros(0, dtype=INDEX_DTYPE)
        offset = start * INDEX_DTYPE.itemsize
        return np.memmap(self.tmp, dtype=INDEX_DTYPE, mode="r", offset=offset, shape=(stop - start,))

    def close(self) -> int:
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.count


@dataclass(frozen=True)
class SourceRange:
    """One source's slice of each index array, recorded in ``index.json``."""

    name: str
    kind: str
    docs: tuple[int, int]
    instances: tuple[int, int]
    stream: tuple[int, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "docs": list(self.docs),
            "instances": list(self.instances),
            "stream": list(self.stream),
        }


class TokenStore:
    """Reader of a ``dapt-tokens-v2`` folder (see the module docstring). Memory-mapped throughout; safe to
    open in every rank of a training job."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX
        try:
            self.info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the token store index ({e}); rerun `dapt mix`") from None
        if self.info.get("format") != FORMAT:
            raise ValueError(
                f"{path}: format {self.info.get('format')!r}, expected {FORMAT!r}; rerun `dapt mix`"
            )
        self.block_len = int(self.info["block_len"])
        self.n_blocks = int(self.info["n_blocks"])
        self.eos_id = int(self.info["eos_id"])
        self.dtype = np.dtype(self.info["dtype"])
        parts = self.info["parts"]
        self.part_files = [p["file"] for p in parts]
        self.part_start = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([int(p["tokens"]) for p in parts], out=self.part_start[1:])
        self._parts: dict[int, np.ndarray] = {}
        self.arrays = {name: self._array(name) for name in ARRAYS}
        self.sources = [
            SourceRange(s["name"], s["kind"], tuple(s["docs"]), tuple(s["instances"]), tuple(s["stream"]))
            for s in self.info["sources"]
        ]
        self._domain = [s.stream for s in self.sources if s.kind == "domain"]

    def _array(self, name: str) -> np.ndarray:
        path = self.folder / f"{name}.bin"
        want = int(self.info["lengths"][name])
        have = path.stat().st_size // INDEX_DTYPE.itemsize if path.exists() else -1
        if have != want:
            raise ValueError(f"{path}: {have} entries, index.json says {want} (rerun `dapt mix`)")
        return np.memmap(path, dtype=INDEX_DTYPE, mode="r") if want else np.zeros(0, INDEX_DTYPE)

    def __len__(self) -> int:
        return self.n_blocks

    def _part(self, p: int) -> np.ndarray:
        arr = self._parts.get(p)
        if arr is None:
            path = self.folder / self.part_files[p]
            n = int(self.part_start[p + 1] - self.part_start[p])
            arr = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)
            self._parts[p] = arr
        return arr

    def _doc_tokens(self, doc: int, lo: int, hi: int, length: int) -> np.ndarray:
        """Tokens ``[lo, hi)`` of an instance of ``length`` tokens of document ``doc``."""
        off = int(self.arrays["doc_offset"][doc])
        full = int(self.arrays["doc_length"][doc])
        p = int(np.searchsorted(self.part_start, off, side="right")) - 1
        base = off - int(self.part_start[p])
        toks = self._part(p)
        if length == full or hi < length:  # a whole document, or the truncated one before its EOS
            return toks[base + lo : base + hi]
        out = np.empty(hi - lo, dtype=self.dtype)  # the truncated piece: body, then EOS
        out[:-1] = toks[base + lo : base + hi - 1]
        out[-1] = self.eos_id
        return out

    def _instances(self, row: int) -> tuple[int, int, int]:
        """(stream start, first instance, last instance + 1) of row ``row``."""
        b = int(self.arrays["block_stream"][row])
        lo = b * self.block_len
        starts = self.arrays["instance_start"]
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, lo + self.block_len, side="left"))
        return lo, first, last

    def block(self, row: int) -> np.ndarray:
        """Row ``row`` of the training data: ``block_len`` tokens."""
        if not 0 <= row < self.n_blocks:
            raise IndexError(f"row {row} of {self.n_blocks}")
        lo, first, last = self._instances(row)
        hi = lo + self.block_len
        starts, docs = self.arrays["instance_start"], self.arrays["instance_doc"]
        pieces = []
        for i in range(first, last):
            s, e = int(starts[i]), int(starts[i + 1])
            pieces.append(self._doc_tokens(int(docs[i]), max(lo, s) - s, min(hi, e) - s, e - s))
        return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])

    def blocks(self, rows: Any) -> np.ndarray:
        return np.stack([self.block(int(r)) for r in rows]) if len(rows) else np.zeros((0, self.block_len))

    def doc_starts(self, row: int) -> np.ndarray:
        """Positions in row ``row`` where a document (instance) begins; 0 only if one begins exactly there."""
        lo, first, last = self._instances(row)
        s = np.asarray(self.arrays["instance_start"][first:last], dtype=np.int64) - lo
        return s[s >= 0]

    def domain_tokens(self, row: int) -> int:
        """Tokens of row ``row`` that come from domain sources."""
        lo, hi = self.block_start(row), self.block_start(row) + self.block_len
        return int(sum(max(0, min(hi, e) - max(lo, s)) for s, e in self._domain))

    def block_start(self, row: int) -> int:
        return int(self.arrays["block_stream"][row]) * self.block_len


class PackedBlocks:
    """Reader of the ``dapt-packed-v1`` layout: one ``(n_blocks, block_len)`` ``tokens.npy`` of shuffled
    rows. Mix runs before the token store wrote it; test fixtures and benchmarks write it directly."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tokens = np.load(self.path, mmap_mode="r")
        if self.tokens.ndim != 2:
            raise ValueError(
                f"{self.path}: packed blocks of shape {self.tokens.shape}, expected 2-D; rerun `dapt mix`"
            )
        self.n_blocks, self.block_len = (int(x) for x in self.tokens.shape)

    def __len__(self) -> int:
        return self.n_blocks

    def block(self, row: int) -> np.ndarray:
        return np.asarray(self.tokens[row])

    def blocks(self, rows: Any) -> np.ndarray:
        return np.stack([self.block(int(r)) for r in rows])


def open_blocks(path: str | Path) -> TokenStore | PackedBlocks:
    """The training blocks at ``path``: a token-store folder (or its ``index.json``), or a v1 ``.npy``."""
    p = Path(path)
    if p.suffix == ".npy":
        return PackedBlocks(p)
    return TokenStore(p.parent if p.name == INDEX else p)


def write_plain_store(
    folder: str | Path, docs: list[np.ndarray], block_len: int, eos_id: int, vocab_size: int
) -> TokenStore:
    """The simplest valid store: one domain source whose documents (each ending in ``eos_id``) are the
    stream in the order given, one shard, rows in stream order, the last partial block dropped.

    For benchmarks and checks that need a store with real document boundaries (document masking)
    without the mix stage: ``bench/gpu_check.py``. The mix stage writes its stores with
    :mod:`corpora.mix.index` (budgets, epochs, shuffles)."""
    from dapt.pipeline.fsutil import atomic_write_json

    out = Path(folder)
    dtype = token_dtype(vocab_size)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    total = int(lengths.sum())
    n_blocks = total // block_len
    write_raw(out / part_name(0), np.concatenate(docs) if docs else np.zeros(0), dtype)
    arrays = {
        "doc_offset": offsets,
        "doc_length": lengths,
        "instance_doc": np.arange(len(docs), dtype=np.int64),
        "instance_start": np.concatenate([offsets, [total]]).astype(np.int64),
        "block_stream": np.arange(n_blocks, dtype=np.int64),
    }
    for name, arr in arrays.items():
        write_raw(out / f"{name}.bin", arr, INDEX_DTYPE)
    atomic_write_json(
        out / INDEX,
        {
            "format": FORMAT,
            "dtype": dtype.str,
            "seq_len": block_len - 1,
            "block_len": block_len,
            "n_blocks": n_blocks,
            "eos_id": eos_id,
            "seed": 0,
            "tokens": total,
            "domain_tokens": total,
            "parts": [{"file": part_name(0), "tokens": total}],
            "lengths": {name: int(arr.size) for name, arr in arrays.items()},
            "sources": [SourceRange("plain", "domain", (0, len(docs)), (0, len(docs)), (0, total)).as_json()],
            "layout": "docs/mixing.md (Output); reader: dapt.corpora.mix.store.TokenStore",
        },
    )
    return TokenStore(out)
