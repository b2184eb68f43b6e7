"""Quality filters: steps that keep or reject a document and never change it.

Length, Gopher quality and repetition (Rae et al. 2021), C4 (Raffel et al. 2020), FineWeb's extra
rules (Penedo et al. 2024) and a language-ID gate. Speed matters more than elegance here (the stage
must beat datatrove by 2x): document-level regexes and ``str`` methods run in C; repeated word
n-grams are counted with numpy over word hashes (``minhash.word_hashes``) rather than per-word Python
loops; each rule returns at the first failure.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from dapt.corpora.clean import config as C
from dapt.corpora.clean.minhash import ngram_hashes, word_hashes
from dapt.corpora.clean.steps.base import StepFn

# ----------------------------------------------------------------------------------------------
# length


def make_length(p: C.LengthParams) -> StepFn:
    def length(text: str, pii: Counter) -> tuple[str, str | None]:
        n = len(text)
        if n < p.min_chars:
            return text, "length:min_chars"
        if n > p.max_chars:
            return text, "length:max_chars"
        if p.min_words and len(text.split()) < p.min_words:
            return text, "length:min_words"
        return text, None

    return length


# ----------------------------------------------------------------------------------------------
# Gopher quality

_ALPHA_WORD = re.compile(r"(?<!\S)\S*?[^\W\d_]\S*")
_STOP = re.compile(r"\b(?:the|be|to|of|and|that|have|with)\b", re.IGNORECASE)
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "⁃", "-", "*", "–", "—")


def make_gopher_quality(p: C.GopherQualityParams) -> StepFn:
    """MassiveText quality rules over whitespace-separated words (not spaCy tokens: punctuation is
    not a word here, which is what the published definition means and what keeps clean prose)."""

    def gopher_quality(text: str, pii: Counter) -> tuple[str, str | None]:
        words = text.split()
        n = len(words)
        if p.min_words is not None and n < p.min_words:
            return text, "gopher_quality:min_words"
        if p.max_words is not None and n > p.max_words:
            return text, "gopher_quality:max_words"
        if n == 0:
            return text, None
        avg = sum(map(len, words)) / n
        if p.min_avg_word_length is not None and avg < p.min_avg_word_length:
            return text, "gopher_quality:min_avg_word_length"
        if p.max_avg_word_length is not None and avg > p.max_avg_word_length:
            return text, "gopher_quality:max_avg_word_length"
        if p.max_symbol_word_ratio is not None:
            sym = text.count("#") + text.count("...") + text.count("…")
            if sym / n > p.max_symbol_word_ratio:
                return text, "gopher_quality:max_symbol_word_ratio"
        if p.max_bullet_lines_ratio is not None or p.max_ellipsis_lines_ratio is not None:
            lines = [ln.strip() for ln in text.split("\n")]
            lines = [ln for ln in lines if ln]
            if lines:
                if p.max_bullet_lines_ratio is not None:
                    bullets = sum(1 for ln in lines if ln.startswith(_BULLETS))
                    if bullets / len(lines) > p.max_bullet_lines_ratio:
                        return text, "gopher_quality:max_bullet_lines_ratio"
                if p.max_ellipsis_lines_ratio is not None:
                    ell = sum(1 for ln in lines if ln.endswith(("...", "…")))
                    if ell / len(lines) > p.max_ellipsis_lines_ratio:
                        return text, "gopher_quality:max_ellipsis_lines_ratio"
        if p.min_alpha_words_ratio is not None:
            alpha = len(_ALPHA_WORD.findall(text))
            if alpha / n < p.min_alpha_words_ratio:
                return text, "gopher_quality:min_alpha_words_ratio"
        if p.min_stop_words:
            found = 0
            for found, _ in enumerate(_STOP.finditer(text), start=1):  # noqa: B007 - stops early
                if found >= p.min_stop_words:
                    break
            if found < p.min_stop_words:
                return text, "gopher_quality:min_stop_words"
        return text, None

    return gopher_quality


# ----------------------------------------------------------------------------------------------
# Gopher repetition

_PARA_SPLIT = re.compile(r"\n{2,}")


def _dup_stats(parts: list[str]) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier part, fraction of characters in those repeats)."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for s in parts:
        total_chars += len(s)
        if s in seen:
            dup += 1
            dup_chars += len(s)
        else:
            seen.add(s)
    n = len(parts)
    return (dup / n if n else 0.0), (dup_chars / total_chars if total_chars else 0.0)


def top_ngram_char_frac(wh: np.ndarray, wlen: np.ndarray, n: int) -> float:
    """Characters of the most frequent word n-gram times its count, over all word characters."""
    g = ngram_hashes(wh, n)
    if g.size == 0:
        return 0.0
    _, first, counts = np.unique(g, return_index=True, return_counts=True)
    k = int(np.argmax(counts))
    if counts[k] < 2:
        return 0.0
    chars = int(wlen[first[k] : first[k] + n].sum())
    return counts[k] * chars / max(int(wlen.sum()), 1)


def dup_ngram_char_frac(wh: np.ndarray, wlen: np.ndarray, n: int) -> float:
    """Fraction of word characters covered by n-gram occurrences that repeat an earlier one."""
    g = ngram_hashes(wh, n)
    if g.size == 0:
        return 0.0
    order = np.argsort(g, kind="stable")
    gs = g[order]
    repeat = np.zeros(g.size, dtype=bool)
    repeat[order[1:]] = gs[1:] == gs[:-1]
    pos = np.flatnonzero(repeat)
    if pos.size == 0:
        return 0.0
    cover = np.zeros(wh.size + 1, dtype=np.int64)
    np.add.at(cover, pos, 1)
    np.add.at(cover, pos + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(wlen[covered].sum()) / max(int(wlen.sum()), 1)


def _ngram_reasons_batch(texts: list[str], top: dict[int, float], dup: dict[int, float]) -> list[str | None]:
    """The n-gram repetition rules for a whole batch at once (numpy over all its words).

    Per n: hash every word n-gram of every document (n-grams never span two documents), salt the
    hash with the document number, sort once, and read off per document (a) the characters covered
    by repeated occurrences and (b) the count x characters of its most frequent n-gram.
    """
    from dapt.corpora.clean.minhash import mix64

    reasons: list[str | None] = [None] * len(texts)
    wh, counts, wlen = word_hashes(texts)
    if wh.size == 0:
        return reasons
    nd = len(texts)
    doc = np.repeat(np.arange(nd), counts)
    wstart = np.zeros(nd, np.int64)
    np.cumsum(counts[:-1], out=wstart[1:])
    total = np.zeros(nd, np.float64)
    nz = counts > 0
    total[nz] = np.add.reduceat(wlen, wstart[nz])[: int(nz.sum())]
    total = np.maximum(total, 1)
    csum = np.r_[0, np.cumsum(wlen)]
    salt = (doc.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    alive = np.ones(nd, bool)
    rules = [(n, lim, "top") for n, lim in sorted(top.items())] + [
        (n, lim, "dup") for n, lim in sorted(dup.items())
    ]
    for n, limit, what in rules:
        m = wh.size - n + 1
        if m <= 0:
            continue
        g = ngram_hashes(wh, n)
        # valid start positions: the n-gram ends inside the same document
        valid = np.flatnonzero((doc[:m] == doc[n - 1 :]) & alive[doc[:m]])
        if valid.size == 0:
            continue
        key = mix64(g[valid] ^ salt[valid])
        order = np.argsort(key, kind="stable")
        ks = key[order]
        first = np.r_[True, ks[1:] != ks[:-1]]
        vdoc = doc[valid]
        if what == "dup":
            rep = np.zeros(valid.size, bool)
            rep[order] = ~first
            pos = valid[rep]
            if pos.size == 0:
                continue
            cover = np.zeros(wh.size + 1, np.int64)
            np.add.at(cover, pos, 1)
            np.add.at(cover, pos + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            frac = np.bincount(doc[covered], weights=wlen[covered], minlength=nd) / total
        else:
            run = np.cumsum(first) - 1
            cnt_sorted = np.bincount(run)[run]
            cnt = np.empty(valid.size, np.int64)
            cnt[order] = cnt_sorted
            chars = csum[valid + n] - csum[valid]
            # most frequent n-gram per document (first occurrence on ties), as count x chars
            best = np.zeros(nd, np.int64)
            np.maximum.at(best, vdoc, cnt)
            is_best = (cnt == best[vdoc]) & (cnt >= 2)
            frac = np.zeros(nd)
            idx = np.flatnonzero(is_best)
            if idx.size == 0:
                continue
            firsts = idx[np.r_[True, vdoc[idx][1:] != vdoc[idx][:-1]]]
            frac[vdoc[firsts]] = cnt[firsts] * chars[firsts] / total[vdoc[firsts]]
        bad = np.flatnonzero((frac > limit) & alive)
        for d in bad:
            reasons[d] = f"gopher_repetition:{what}_{n}gram_char_frac"
        alive[bad] = False
    return reasons


def make_gopher_repetition(p: C.GopherRepetitionParams) -> StepFn:
    def line_rules(text: str) -> str | None:
        if p.dup_para_frac is not None or p.dup_para_char_frac is not None:
            paras = [s.strip() for s in _PARA_SPLIT.split(text)]
            frac, cfrac = _dup_stats([s for s in paras if s])
            if p.dup_para_frac is not None and frac > p.dup_para_frac:
                return "gopher_repetition:dup_para_frac"
            if p.dup_para_char_frac is not None and cfrac > p.dup_para_char_frac:
                return "gopher_repetition:dup_para_char_frac"
        if p.dup_line_frac is not None or p.dup_line_char_frac is not None:
            lines = [s.strip() for s in text.split("\n")]
            frac, cfrac = _dup_stats([s for s in lines if s])
            if p.dup_line_frac is not None and frac > p.dup_line_frac:
                return "gopher_repetition:dup_line_frac"
            if p.dup_line_char_frac is not None and cfrac > p.dup_line_char_frac:
                return "gopher_repetition:dup_line_char_frac"
        return None

    def gopher_repetition(text: str, pii: Counter) -> tuple[str, str | None]:
        return text, batch([text])[0]

    def batch(texts: list[str]) -> list[str | None]:
        reasons = [line_rules(t) for t in texts]
        todo = [i for i, r in enumerate(reasons) if r is None]
        if todo and (p.top_ngram_char_frac or p.dup_ngram_char_frac):
            sub = _ngram_reasons_batch([texts[i] for i in todo], p.top_ngram_char_frac, p.dup_ngram_char_frac)
            for i, r in zip(todo, sub, strict=True):
                reasons[i] = r
        return reasons

    gopher_repetition.batch = batch  # type: ignore[attr-defined]
    return gopher_repetition


# ----------------------------------------------------------------------------------------------
# C4

_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"'”’)\]]*)(?=\s|$)")


def make_c4(p: C.C4Params) -> StepFn:
    def c4(text: str, pii: Counter) -> tuple[str, str | None]:
        low = text.lower()
        if p.drop_lorem_ipsum and "lorem ipsum" in low:
            return text, "c4:lorem_ipsum"
        if p.drop_curly_bracket and "{" in text:
            return text, "c4:curly_bracket"
        kept = []
        for line in text.split("\n"):
            s = line.strip()
            if not s:
                kept.append("")
                continue
            ls = s.lower()
            if p.drop_javascript_lines and "javascript" in ls:
                continue
            if p.drop_policy_lines and any(t in ls for t in _POLICY):
                continue
            if p.drop_lines_without_terminal_punct and not s.endswith(_TERMINAL):
                continue
            words = s.split()
            if len(words) < p.min_words_per_line:
                continue
            if max(map(len, words)) > p.max_word_length:
                continue
            kept.append(s)
        out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
        if not out:
            return text, "c4:no_lines_left"
        if p.min_sentences and len(_SENTENCE_END.findall(out)) < p.min_sentences:
            return text, "c4:min_sentences"
        return out, None

    return c4


# ----------------------------------------------------------------------------------------------
# FineWeb


def make_fineweb(p: C.FineWebParams) -> StepFn:
    def fineweb(text: str, pii: Counter) -> tuple[str, str | None]:
        lines = [s.strip() for s in text.split("\n")]
        lines = [s for s in lines if s]
        if not lines:
            return text, "fineweb:empty"
        if p.min_line_punct_ratio is not None:
            punct = sum(1 for s in lines if s.endswith(_TERMINAL))
            if punct / len(lines) < p.min_line_punct_ratio:
                return text, "fineweb:line_punct_ratio"
        if p.max_short_line_ratio is not None:
            short = sum(1 for s in lines if len(s) <= p.short_line_chars)
            if short / len(lines) > p.max_short_line_ratio:
                return text, "fineweb:short_line_ratio"
        if p.max_dup_line_char_ratio is not None:
            _, cfrac = _dup_stats(lines)
            if cfrac > p.max_dup_line_char_ratio:
                return text, "fineweb:dup_line_char_ratio"
        if p.max_newline_word_ratio is not None:
            nw = len(text.split())
            if nw and text.count("\n") / nw > p.max_newline_word_ratio:
                return text, "fineweb:newline_word_ratio"
        return text, None

    return fineweb


# ----------------------------------------------------------------------------------------------
# language

_LANGID: Any = None
_NON_LETTERS = re.compile(r"[\W\d_]+")


def _identifier() -> Any:
    """One py3langid identifier per process (loading the model costs ~0.3 s)."""
    global _LANGID
    if _LANGID is None:
        from pathlib import Path

        import py3langid
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        path = Path(py3langid.__file__).parent / MODEL_FILE
        _LANGID = LanguageIdentifier.from_modelpath(path, norm_probs=True)
    return _LANGID


def make_language(p: C.LanguageParams) -> StepFn:
    langs = set(p.languages)

    def language(text: str, pii: Counter) -> tuple[str, str | None]:
        sample = text[: p.max_chars]
        if p.letters_only:
            sample = _NON_LETTERS.sub(" ", sample)
        if p.min_letters and len(sample) - sample.count(" ") < p.min_letters:
            return text, None
        lang, score = _identifier().classify(sample)
        if lang not in langs:
            return text, f"language:{lang}"
        if score < p.min_score:
            return text, "language:low_score"
        return text, None

    return language
