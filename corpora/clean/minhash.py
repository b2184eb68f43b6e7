"""Vectorised MinHash over word n-gram shingles (numpy only; no per-word Python loop).

Why this shape: the pure-Python MinHash in datatrove spends its time in per-word and per-shingle
interpreter work (~1 MB/s on this kind of machine). Here a whole batch of documents becomes one
UTF-8 byte array; word boundaries, word hashes, shingle hashes and the ``num_perm`` permutations are
numpy array operations over that batch, so the Python cost is per batch, not per word.

Definitions (shared by :func:`shingles`, :func:`jaccard` and :meth:`MinHasher.signatures`, so a
signature estimates exactly the Jaccard similarity that :func:`jaccard` computes):

- text is lower-cased (``str.lower``); a *word* is a maximal run of ASCII letters/digits or non-ASCII
  bytes (so punctuation and whitespace separate words and never count);
- a *shingle* is ``ngram`` consecutive words, hashed to 64 bits; a document with fewer than
  ``ngram`` (but at least one) words has exactly one shingle made of all its words; a document with
  no word has no shingle;
- permutation ``i`` maps a shingle hash ``x`` to ``((a_i * x + b_i) mod 2**64) >> 32`` (the
  multiply-add-shift universal family), and the signature keeps the minimum per permutation as
  uint32. Documents with no shingle get the all-``0xFFFFFFFF`` signature: callers must not bucket
  them (see :meth:`MinHasher.has_shingles`).

Signatures depend only on the document and ``(num_perm, ngram, seed)``, never on the other
documents of the batch, so any partitioning of a corpus gives the same result.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MinHasher",
    "band_keys",
    "shingles",
    "jaccard",
    "word_hashes",
    "ngram_hashes",
    "shingle_array",
    "jaccard_arrays",
    "EMPTY_SIG",
]

EMPTY_SIG = np.uint32(0xFFFFFFFF)
_U64 = np.uint64
_MASK32 = _U64(32)

# Byte classes: True for bytes that belong to a word (ASCII alnum, any byte of a non-ASCII char).
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
    _WORD_BYTE[_c] = True
_WORD_BYTE[0x80:] = True

# Fixed (seed-independent) tables for word and shingle hashing, so shingle hashes are comparable
# across MinHashers with different seeds; the seed only chooses the permutations.
_TAB_RNG = np.random.default_rng(0x5EED_D4A7)
_TAB_POS = 64
_BYTE_TAB = _TAB_RNG.integers(0, 2**64 - 1, size=(_TAB_POS, 256), dtype=np.uint64, endpoint=True)
_BYTE_TAB_FLAT = _BYTE_TAB.ravel()
_NGRAM_MULT = _TAB_RNG.integers(0, 2**63, size=64, dtype=np.uint64) * _U64(2) + _U64(1)
_BAND_MULT = _TAB_RNG.integers(0, 2**63, size=1024, dtype=np.uint64) * _U64(2) + _U64(1)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche on uint64 arrays (wrap-around arithmetic)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word of every text. Returns (word hashes uint64, words per text int64)."""
    wh, counts, _ = word_hashes(texts)
    return wh, counts


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash every word of every text: (word hashes uint64, words per text, word byte lengths).

    Also used by the Gopher repetition rules, which count repeated word n-grams the same way.
    """
    enc = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    n = len(enc)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # One separator byte between documents so no word spans two of them.
    buf = np.frombuffer(b" ".join(enc), dtype=np.uint8)
    lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=n)
    doc_start = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1] + 1, out=doc_start[1:])
    if buf.size == 0:
        return np.zeros(0, np.uint64), np.zeros(n, np.int64), np.zeros(0, np.int64)
    isw = _WORD_BYTE[buf]
    start_flag = np.empty_like(isw)
    start_flag[0] = isw[0]
    np.greater(isw[1:], isw[:-1], out=start_flag[1:])
    starts = np.flatnonzero(start_flag)
    if starts.size == 0:
        return np.zeros(0, np.uint64), np.zeros(n, np.int64), np.zeros(0, np.int64)
    end_flag = np.empty_like(isw)
    end_flag[-1] = isw[-1]
    np.greater(isw[:-1], isw[1:], out=end_flag[:-1])
    ends = np.flatnonzero(end_flag)  # last byte of each word
    # Position of each byte inside its word, from the running maximum of word-start offsets.
    ar = np.arange(buf.size, dtype=np.int64)
    last_start = np.maximum.accumulate(np.where(start_flag, ar, 0))
    ar -= last_start
    np.bitwise_and(ar, _TAB_POS - 1, out=ar)
    ar <<= 8
    ar |= buf
    vals = _BYTE_TAB_FLAT[ar]
    vals[~isw] = 0
    # Word hash = sum of its bytes' table entries: a difference of one running (wrapping) sum.
    cs = np.cumsum(vals, dtype=np.uint64)
    wh = cs[ends].copy()
    wh[1:] -= cs[ends[:-1]]
    # Mix in the length so words that differ only past position 64 still tend to differ.
    wlen = ends - starts + 1
    wh = mix64(wh ^ (wlen.astype(np.uint64) * _U64(0x9E3779B97F4A7C15)))
    # Words per document: count word starts inside each document's byte range.
    counts = np.diff(np.searchsorted(starts, np.r_[doc_start, buf.size]))
    return wh, counts.astype(np.int64), wlen


def _shingle_hashes(wh: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of all documents and the number of shingles per document."""
    n = counts.size
    nsh = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    total = int(nsh.sum())
    if total == 0:
        return np.zeros(0, np.uint64), nsh
    word_start = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=word_start[1:])
    sh_doc_start = np.zeros(n, dtype=np.int64)
    np.cumsum(nsh[:-1], out=sh_doc_start[1:])
    doc_of = np.repeat(np.arange(n), nsh)
    # First word of each shingle: document's first word + offset within the document.
    j = word_start[doc_of] + (np.arange(total) - sh_doc_start[doc_of])
    # Words used by each shingle: ngram, or fewer for short documents.
    width = np.minimum(counts[doc_of], ngram)
    acc = np.zeros(total, dtype=np.uint64)
    padded = np.concatenate([wh, np.zeros(ngram, dtype=np.uint64)])
    for k in range(ngram):
        term = padded[j + k] * _NGRAM_MULT[k]
        acc += np.where(width > k, term, _U64(0))
    acc += width.astype(np.uint64) * _U64(0xD6E8FEB86659FD93)
    return mix64(acc), nsh


def ngram_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the ``len(wh) - n + 1`` consecutive word n-grams of one document's word hashes."""
    m = wh.size - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64)
    acc = wh[:m] * _NGRAM_MULT[0]
    for k in range(1, n):
        acc = acc + wh[k : k + m] * _NGRAM_MULT[k]
    return mix64(acc + _U64((n * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF))


class MinHasher:
    """MinHash signatures of word ``ngram`` shingles with ``num_perm`` permutations.

    ``signatures`` is deterministic in ``(num_perm, ngram, seed)`` and the document text alone.
    """

    def __init__(self, num_perm: int = 112, ngram: int = 5, seed: int = 0, chunk: int = 2048):
        if num_perm < 1 or ngram < 1 or ngram > len(_NGRAM_MULT):
            raise ValueError(f"num_perm must be >= 1 and ngram in 1..{len(_NGRAM_MULT)}")
        self.num_perm = int(num_perm)
        self.ngram = int(ngram)
        self.seed = int(seed)
        self.chunk = int(chunk)
        rng = np.random.default_rng(self.seed)
        self._a = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64) * _U64(2) + _U64(1)
        self._b = rng.integers(0, 2**64 - 1, size=self.num_perm, dtype=np.uint64, endpoint=True)

    def shingle_counts(self, texts: list[str]) -> np.ndarray:
        """Number of shingles per text (0 means the text has no word and no usable signature)."""
        wh, counts = _word_hashes(texts)
        return np.where(counts >= self.ngram, counts - self.ngram + 1, np.minimum(counts, 1))

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        n = len(texts)
        sig = np.full((n, self.num_perm), EMPTY_SIG, dtype=np.uint32)
        if n == 0:
            return sig
        wh, counts = _word_hashes(texts)
        sh, nsh = _shingle_hashes(wh, counts, self.ngram)
        if sh.size == 0:
            return sig
        doc_of = np.repeat(np.arange(n), nsh)
        a, b = self._a[None, :], self._b[None, :]
        work = np.empty((self.chunk, self.num_perm), dtype=np.uint64)
        for s in range(0, sh.size, self.chunk):
            e = min(sh.size, s + self.chunk)
            d = doc_of[s:e]
            seg = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
            w = work[: e - s]
            # In place on a cache-sized buffer: (a*x + b) mod 2**64, keep the high 32 bits.
            np.multiply(sh[s:e, None], a, out=w)
            np.add(w, b, out=w)
            np.right_shift(w, _MASK32, out=w)
            mins = np.minimum.reduceat(w, seg, axis=0).astype(np.uint32)
            rows = d[seg]  # distinct within a chunk (doc_of is sorted)
            sig[rows] = np.minimum(sig[rows], mins)
        return sig

    @staticmethod
    def has_shingles(sigs: np.ndarray) -> np.ndarray:
        """True for rows that came from a document with at least one shingle."""
        return ~np.all(sigs == EMPTY_SIG, axis=1)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 LSH keys: band ``i`` hashes signature columns ``i*rows:(i+1)*rows``.

    The band index is mixed in, so equal keys mean the same band matched (keys of different bands
    never coincide except by a 2**-64 accident). Two documents are LSH candidates iff they share a
    key in at least one band.
    """
    n, p = sigs.shape
    if bands * rows > p:
        raise ValueError(f"bands x rows = {bands * rows} exceeds the signature length {p}")
    if rows > len(_BAND_MULT):
        raise ValueError(f"rows must be <= {len(_BAND_MULT)}")
    s = sigs[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    acc = (s * _BAND_MULT[:rows][None, None, :]).sum(axis=2, dtype=np.uint64)
    acc += (np.arange(bands, dtype=np.uint64) + _U64(1)) * _U64(0xA24BAED4963EE407)
    return mix64(acc)


def shingles(text: str, ngram: int = 5) -> set[int]:
    """The set of 64-bit shingle hashes of ``text`` (same definition as the signatures use)."""
    wh, counts = _word_hashes([text])
    sh, _ = _shingle_hashes(wh, counts, ngram)
    return set(sh.tolist())


def shingle_array(text: str, ngram: int = 5) -> np.ndarray:
    """Sorted unique uint64 shingle hashes of ``text`` (the compact form used to verify pairs)."""
    wh, counts = _word_hashes([text])
    sh, _ = _shingle_hashes(wh, counts, ngram)
    return np.unique(sh)


def jaccard_arrays(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique shingle arrays (1.0 when both are empty)."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """True Jaccard similarity of the shingle sets of two texts (1.0 for two texts with no word)."""
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)
