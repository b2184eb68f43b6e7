"""The packer the token store replaced (``corpora/mix/pack.py`` up to eeb0c8f), kept as the golden
test's oracle: the token store (``dapt.corpora.mix.index``) must give exactly the rows, document starts
and domain tokens this gives on the same documents. It held a source's tokens and a numpy array per
block in the driver, which is why it was replaced; its semantics are the contract.

Packing: a stream of documents (each followed by EOS) cut into blocks of ``seq_len + 1`` tokens.

Blocks are cut in stream order and each stream block is written straight to its shuffled row of a
memory-mapped ``.npy`` file, so the global block shuffle costs no extra pass and no more memory than
one block. Per block we also record where documents start (CSR: ``doc_offsets`` / ``doc_starts``) and
how many of its tokens come from domain sources, which lets the trainer mask cross-document attention
if it wants to and lets tests and the report verify the realised domain share block by block.

Written files (all ``np.save`` format, readable with ``np.load(path, mmap_mode="r")``):

- ``tokens.npy``: uint32 ``(n_blocks, seq_len + 1)``; row ``r`` is a training example, rows are already in
  shuffled order, so reading rows 0, 1, 2, ... is a shuffled pass and the resume position is a row index.
- ``doc_offsets.npy``: int64 ``(n_blocks + 1,)``; ``doc_starts[doc_offsets[r]:doc_offsets[r + 1]]`` are
  the positions in row ``r`` where a document starts (0 only if a document starts exactly there; a
  row that begins mid-document has no 0).
- ``doc_starts.npy``: uint32, the positions described above.
- ``block_domain_tokens.npy``: uint32 ``(n_blocks,)``, tokens of row ``r`` that belong to domain documents.
- ``block_stream_index.npy``: int64 ``(n_blocks,)``, the stream (pre-shuffle) position of row ``r``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOKEN_DTYPE = np.uint32


class BlockWriter:
    """Accepts document-token chunks in stream order; writes shuffled fixed-length blocks."""

    def __init__(self, out_dir: Path, n_blocks: int, block_len: int, seed: int) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.n_blocks = n_blocks
        self.block_len = block_len
        self.tokens = np.lib.format.open_memmap(
            self.out_dir / "tokens.npy", mode="w+", dtype=TOKEN_DTYPE, shape=(n_blocks, block_len)
        )
        # Stream block i is written to row row_of[i]; the permutation is the whole shuffle.
        rng = np.random.default_rng([int(seed), 0xB10C])
        self.row_of = rng.permutation(n_blocks)
        self.buf = np.empty(block_len, dtype=TOKEN_DTYPE)
        self.fill = 0
        self.block = 0
        self.buf_starts: list[np.ndarray] = []
        self.buf_domain = 0
        self.starts_by_row: list[np.ndarray | None] = [None] * n_blocks
        self.domain_by_row = np.zeros(n_blocks, dtype=np.uint32)
        self.domain_tokens = 0
        self.total_tokens = 0

    def add(self, tokens: np.ndarray, doc_starts: np.ndarray, domain: bool) -> None:
        """Append a chunk: ``tokens`` (documents with their EOS), ``doc_starts`` offsets of its documents."""
        n = tokens.size
        if self.total_tokens + n > self.n_blocks * self.block_len:
            raise ValueError("more tokens than the planned blocks hold (solver and packer disagree)")
        doc_starts = np.asarray(doc_starts, dtype=np.int64)
        pos = 0
        while pos < n:
            take = min(self.block_len - self.fill, n - pos)
            self.buf[self.fill : self.fill + take] = tokens[pos : pos + take]
            lo, hi = np.searchsorted(doc_starts, [pos, pos + take])
            if hi > lo:
                self.buf_starts.append(doc_starts[lo:hi] - pos + self.fill)
            if domain:
                self.buf_domain += take
            self.fill += take
            pos += take
            if self.fill == self.block_len:
                self._flush()
        self.total_tokens += n
        if domain:
            self.domain_tokens += n

    def _flush(self) -> None:
        row = int(self.row_of[self.block])
        self.tokens[row] = self.buf
        self.starts_by_row[row] = (
            np.concatenate(self.buf_starts).astype(np.uint32) if self.buf_starts else np.zeros(0, np.uint32)
        )
        self.domain_by_row[row] = self.buf_domain
        self.block += 1
        self.fill = 0
        self.buf_starts = []
        self.buf_domain = 0

    def close(self) -> dict[str, str]:
        """Write the index files; returns their names relative to ``out_dir``."""
        if self.block != self.n_blocks or self.fill != 0:
            raise ValueError(
                f"packed {self.block} blocks + {self.fill} tokens, planned exactly {self.n_blocks} blocks"
            )
        self.tokens.flush()
        del self.tokens
        starts = [s if s is not None else np.zeros(0, np.uint32) for s in self.starts_by_row]
        offsets = np.zeros(self.n_blocks + 1, dtype=np.int64)
        np.cumsum([s.size for s in starts], out=offsets[1:])
        flat = np.concatenate(starts) if starts else np.zeros(0, np.uint32)
        stream_index = np.empty(self.n_blocks, dtype=np.int64)
        stream_index[self.row_of] = np.arange(self.n_blocks)
        files = {
            "doc_offsets": ("doc_offsets.npy", offsets),
            "doc_starts": ("doc_starts.npy", flat.astype(np.uint32)),
            "block_domain_tokens": ("block_domain_tokens.npy", self.domain_by_row),
            "block_stream_index": ("block_stream_index.npy", stream_index),
        }
        for name, arr in files.values():
            np.save(self.out_dir / name, arr)
        return {"tokens": "tokens.npy", **{k: v[0] for k, v in files.items()}}


def source_stream(
    flat: np.ndarray,
    offsets: np.ndarray,
    budget: int,
    eos_id: int,
    rng: np.random.Generator,
    chunk_tokens: int = 1 << 22,
):
    """Yield ``(tokens, doc_starts, docs_in_chunk)`` for exactly ``budget`` tokens of one source.

    ``flat``/``offsets`` hold the source's documents (content tokens only, no EOS), in a canonical order.
    Each epoch is a fresh permutation (sampling without replacement inside an epoch); the last epoch is
    a prefix of its permutation, and its last document is truncated so the total is exactly ``budget``:
    the first ``m - 1`` tokens of that document followed by EOS (a lone EOS if ``m == 1``), so every
    piece of text in the stream still ends at a document boundary.
    """
    lens = np.diff(offsets) + 1  # + EOS
    n_docs = lens.size
    remaining = int(budget)
    while remaining > 0:
        order = rng.permutation(n_docs)
        cum = np.cumsum(lens[order])
        k_full = int(np.searchsorted(cum, remaining, side="right"))  # docs that fit whole
        epoch_docs = order[:k_full]
        used = int(cum[k_full - 1]) if k_full else 0
        step = max(1, chunk_tokens // max(1, int(lens.mean())))
        for s in range(0, k_full, step):
            yield _gather(flat, offsets, epoch_docs[s : s + step], eos_id)
        remaining -= used
        if k_full < n_docs and remaining > 0:
            d = order[k_full]
            m = remaining
            body = flat[offsets[d] : offsets[d] + m - 1]
            toks = np.empty(m, dtype=flat.dtype)
            toks[: m - 1] = body
            toks[m - 1] = eos_id
            yield toks, np.zeros(1, np.int64), 1
            remaining = 0


def _gather(flat: np.ndarray, offsets: np.ndarray, sel: np.ndarray, eos_id: int):
    """Concatenate documents ``sel`` (each + EOS) into one array, with their start offsets."""
    lens = (offsets[sel + 1] - offsets[sel]).astype(np.int64)
    out_lens = lens + 1
    starts = np.zeros(sel.size, dtype=np.int64)
    np.cumsum(out_lens[:-1], out=starts[1:])
    total = int(out_lens.sum())
    out = np.full(total, eos_id, dtype=flat.dtype)
    # Gather indices for the content tokens: position j of document i comes from offsets[sel[i]] + j.
    rep = np.repeat(offsets[sel] - starts, lens)
    dst = np.arange(total, dtype=np.int64)
    is_body = np.ones(total, dtype=bool)
    is_body[starts + lens] = False
    dst_body = dst[is_body]
    out[is_body] = flat[rep + dst_body]
    return out, starts, int(sel.size)
