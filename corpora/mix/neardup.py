"""Training documents that are near-duplicates of held-out documents, by exact Jaccard similarity.

Why not MinHash LSH here: LSH exists to avoid comparing all pairs of a large corpus with itself. This
check compares the whole corpus against the *held-out* documents only, a few thousand at most, so an
exact index fits in memory: every word 5-gram shingle of every held-out document, sorted, with its
owner. A training document's shingles are looked up in it in one vectorised ``searchsorted``; the
number of hits per (document, held-out document) pair is the size of the intersection, and with the two
set sizes that gives the exact Jaccard similarity. No false negatives from banding and no signatures
to compute: on 20 MB of dictionary text, profiled in one process, this whole check took 4.1 s where
the 128-permutation signatures alone had taken 8.4 s. The result is exactly
``corpora.clean.minhash.jaccard`` (same words, same shingles; the tests check it pair by pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from dapt.corpora.clean.minhash import ngram_hashes, shingle_array, word_hashes


@dataclass
class HeldoutShingles:
    """Sorted shingle hashes of all held-out documents with the index of the document owning each."""

    ngram: int
    keys: np.ndarray  # uint64, sorted
    owner: np.ndarray  # int64, held-out document index of each key
    sizes: np.ndarray  # int64, number of distinct shingles of each held-out document

    @classmethod
    def build(cls, texts: list[str], ngram: int = 5) -> HeldoutShingles:
        arrays = [shingle_array(t, ngram) for t in texts]
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        keys = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
        owner = np.repeat(np.arange(len(texts), dtype=np.int64), sizes)
        order = np.argsort(keys, kind="stable")
        return cls(ngram, keys[order], owner[order], sizes)


def doc_shingles(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, document index): the distinct shingles of each text, batch-vectorised.

    Same definition as ``minhash.shingle_array``: every ``ngram``-word window, or for a text of fewer
    words (but at least one) a single shingle of all its words.
    """
    n = len(texts)
    wh, counts, _ = word_hashes(texts)
    sh = ngram_hashes(wh, ngram)
    doc_of_word = np.repeat(np.arange(n, dtype=np.int64), counts)
    if sh.size:
        first, last = doc_of_word[: sh.size], doc_of_word[ngram - 1 :]
        keep = first == last
        sh, doc = sh[keep], first[keep]
    else:
        doc = np.zeros(0, np.int64)
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if short.size:
        extra = [shingle_array(texts[j], ngram) for j in short]
        sh = np.concatenate([sh, *extra])
        doc = np.concatenate([doc, np.repeat(short, [e.size for e in extra])])
    if sh.size:
        order = np.lexsort((sh, doc))
        sh, doc = sh[order], doc[order]
        first_of_run = np.r_[True, (sh[1:] != sh[:-1]) | (doc[1:] != doc[:-1])]
        sh, doc = sh[first_of_run], doc[first_of_run]
    return sh, doc


def best_matches(
    index: HeldoutShingles, texts: list[str], threshold: float, docs_per_product: int = 512
) -> list[tuple[int, float]]:
    """For each text, ``(held-out index, Jaccard)`` of its most similar held-out document if that
    similarity reaches ``threshold``, else ``(-1, best Jaccard)``.

    Texts go through in groups of ``docs_per_product`` so the intersection counts of one group (at
    most ``docs_per_product x held-out documents`` of them) bound the memory, whatever the text.
    """
    out: list[tuple[int, float]] = []
    for start in range(0, len(texts), docs_per_product):
        out += _best_in_group(index, texts[start : start + docs_per_product], threshold)
    return out


def _best_in_group(index: HeldoutShingles, texts: list[str], threshold: float) -> list[tuple[int, float]]:
    """Intersection sizes as one sparse product, documents x shingles times shingles x held-out.

    Why a product and not a list of hits: a shingle shared by many held-out documents (boilerplate,
    a repeated header) makes every training document holding it one hit per owner. Expanding those
    hits before counting them grew a prep worker to 4.4 GB at 500 MB of input with about 2,600
    held-out documents; the product accumulates the same counts in place, and the postings it
    reads are those of the group's distinct shingles, at most the held-out index itself.
    """
    n = len(texts)
    out = [(-1, 0.0)] * n
    if n == 0 or index.keys.size == 0:
        return out
    sh, doc = doc_shingles(texts, index.ngram)
    if sh.size == 0:
        return out
    size_d = np.bincount(doc, minlength=n)
    lo = np.searchsorted(index.keys, sh, side="left")
    hi = np.searchsorted(index.keys, sh, side="right")
    hit = np.flatnonzero(hi > lo)
    if hit.size == 0:
        return out
    uniq, first, column = np.unique(sh[hit], return_index=True, return_inverse=True)
    ulo = lo[hit][first]
    um = (hi - lo)[hit][first]
    indptr = np.r_[0, np.cumsum(um)]
    owners = index.owner[np.repeat(ulo - indptr[:-1], um) + np.arange(int(indptr[-1]))]
    h = index.sizes.size
    ones = np.ones(owners.size, dtype=np.int32)
    held = sparse.csr_matrix((ones, owners, indptr), shape=(uniq.size, h))
    docs = sparse.csr_matrix((np.ones(hit.size, np.int32), (doc[hit], column)), shape=(n, uniq.size))
    counts = (docs @ held).tocoo()
    pd, ph, inter = counts.row.astype(np.int64), counts.col.astype(np.int64), counts.data
    jac = inter / (size_d[pd] + index.sizes[ph] - inter)
    # Best pair per document (ties: the smallest held-out index, for determinism).
    order = np.lexsort((ph, -jac, pd))
    pd, ph, jac = pd[order], ph[order], jac[order]
    best = np.r_[True, pd[1:] != pd[:-1]]
    for d, o, j in zip(pd[best].tolist(), ph[best].tolist(), jac[best].tolist(), strict=True):
        out[d] = (o if j >= threshold else -1, j)
    return out
