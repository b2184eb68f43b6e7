"""The text a document's dedup keys are computed from: its input after the *default* normalise and PII
steps, before any profile-specific edit.

Why not the cleaned text: the profiles edit text differently (the general profile's C4 step removes
lines without terminal punctuation, the domain profile keeps them), so the same document placed in a
domain source and in a general source comes out of cleaning as two different texts. Keys of the
cleaned text would miss that pair, and a near-duplicate pair whose copies lost different lines would
fall under the Jaccard threshold. Keys of this *key text* are the same for both copies whatever the
profiles do; phase A also hashes the cleaned text, so copies whose cleaning converged (two pages that
differ only in lines the profile drops) are exact duplicates too.

The PII step is part of the key text so that nothing stored for verification holds an unredacted
address, and so that for the usual step lists (default normalise first, default PII, filters in
between: every domain-profile source) the key text *is* the cleaned text and costs nothing extra.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dapt.corpora.clean.config import NormalizeParams, PIIParams
from dapt.corpora.clean.steps import TRANSFORMS, make_normalize, make_pii

_CANONICAL = [("normalize", NormalizeParams()), ("pii", PIIParams())]


def cleaned_is_key(validated: list[tuple[str, Any]]) -> bool:
    """True when a step list's only text-changing steps are the default normalise then the default PII
    redaction: every document it keeps then has its key text as its cleaned text (filters never change
    text, so where they sit does not matter)."""
    return [(n, p) for n, p in validated if n in TRANSFORMS] == _CANONICAL


class KeyText:
    """Builds key texts from input texts (one set of step functions per phase-A task)."""

    def __init__(self) -> None:
        self._normalize = make_normalize(NormalizeParams())
        self._pii = make_pii(PIIParams())

    def __call__(self, text: str) -> str:
        counts: Counter = Counter()  # redaction counts of the key text are not reported
        text, _ = self._normalize(text, counts)
        text, _ = self._pii(text, counts)
        return text
