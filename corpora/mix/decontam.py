"""Benchmark decontamination: find training documents sharing a word n-gram with evaluation data.

Words and n-gram hashes follow exactly the definitions of ``corpora.clean.minhash`` (lower-cased,
punctuation and whitespace separate words and never count), so "13-gram" means the same thing here as
in the near-dedup pass, and matching is a vectorised hash lookup per batch of documents, not a Python
loop over words.

An evaluation text of at least ``ngram`` words contributes all its ``ngram``-word windows. A shorter
one (multiple-choice questions often are) contributes itself as one n-gram of its own length if it has
at least ``min_words`` words; a training document matches it when the same words appear contiguously.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dapt.corpora.clean.minhash import ngram_hashes, word_hashes


@dataclass
class NgramIndex:
    """Sorted n-gram hashes of the evaluation data, per n-gram width, with the task of each."""

    ngram: int
    tasks: list[str]
    by_width: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """width -> (sorted uint64 hashes, int32 task index of each hash)."""
    texts_used: dict[str, int] = field(default_factory=dict)
    texts_ignored: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(h.size for h, _ in self.by_width.values())


def build_index(task_texts: dict[str, list[str]], ngram: int = 13, min_words: int = 8) -> NgramIndex:
    """Index every evaluation text's n-grams (see the module docstring for short texts)."""
    tasks = sorted(task_texts)
    index = NgramIndex(ngram=ngram, tasks=tasks)
    parts: dict[int, list[tuple[np.ndarray, int]]] = {}
    for ti, task in enumerate(tasks):
        texts = [t for t in task_texts[task] if t]
        used = ignored = 0
        if texts:
            wh, counts, _ = word_hashes(texts)
            widths = {ngram} | {int(w) for w in np.unique(counts[(counts < ngram) & (counts >= min_words)])}
            for w in sorted(widths):
                # Texts of exactly w words (or at least ngram words for the full width) contribute.
                sel = counts >= ngram if w == ngram else counts == w
                if not sel.any():
                    continue
                sh, doc_of = _windows(wh, counts, w)
                sh = sh[sel[doc_of]]
                parts.setdefault(w, []).append((sh, ti))
                used += int(sel.sum())
            ignored = len(texts) - used
        index.texts_used[task] = used
        index.texts_ignored[task] = ignored
    for width, items in parts.items():
        hashes = np.concatenate([h for h, _ in items])
        tids = np.concatenate([np.full(h.size, t, dtype=np.int32) for h, t in items])
        order = np.argsort(hashes, kind="stable")
        index.by_width[width] = (hashes[order], tids[order])
    return index


def _windows(wh: np.ndarray, counts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, document index) of every full ``width``-word window of every document.

    Hashes all windows of the batch's concatenated words at once, then drops the windows that straddle
    two documents (first and last word in different documents).
    """
    sh = ngram_hashes(wh, width)
    if sh.size == 0:
        return sh, np.zeros(0, np.int64)
    doc_of_word = np.repeat(np.arange(counts.size), counts)
    first, last = doc_of_word[: sh.size], doc_of_word[width - 1 :]
    keep = first == last
    return sh[keep], first[keep]


def match_documents(index: NgramIndex, texts: list[str]) -> list[list[str]]:
    """For each text, the sorted names of the tasks it shares an n-gram with (empty if clean)."""
    n = len(texts)
    hits: list[set[int]] = [set() for _ in range(n)]
    if n == 0 or not index.by_width:
        return [[] for _ in range(n)]
    wh, counts, _ = word_hashes(texts)
    for width, (keys, tids) in index.by_width.items():
        sh, doc_of = _windows(wh, counts, width)
        if sh.size == 0:
            continue
        pos = np.searchsorted(keys, sh)
        pos_c = np.minimum(pos, keys.size - 1)
        found = keys[pos_c] == sh
        if not found.any():
            continue
        for k in np.flatnonzero(found):
            lo = pos_c[k]
            hi = np.searchsorted(keys, sh[k], side="right")
            hits[doc_of[k]].update(int(t) for t in tids[lo:hi])
    return [sorted(index.tasks[t] for t in h) for h in hits]
