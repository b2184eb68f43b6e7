"""Cleaning steps: small named units that transform a document or reject it with a reason.

The same step list runs in-process (unit tests, ``apply_steps``) and inside the clean stage's Ray
Data map (``apply_batch``), so a rule tested here is the rule production runs. The contract lives in
``base``; transforms (normalise, PII) and quality filters live in their own modules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from dapt.corpora.clean.steps.base import StepFn
from dapt.corpora.clean.steps.quality import (
    dup_ngram_char_frac,
    make_c4,
    make_fineweb,
    make_gopher_quality,
    make_gopher_repetition,
    make_language,
    make_length,
    top_ngram_char_frac,
)
from dapt.corpora.clean.steps.transforms import find_pii, iban_ok, luhn_ok, make_normalize, make_pii

__all__ = [
    "FACTORIES",
    "TRANSFORMS",
    "StepFn",
    "apply_batch",
    "apply_steps",
    "build_steps",
    "dup_ngram_char_frac",
    "find_pii",
    "iban_ok",
    "luhn_ok",
    "make_c4",
    "make_fineweb",
    "make_gopher_quality",
    "make_gopher_repetition",
    "make_language",
    "make_length",
    "make_normalize",
    "make_pii",
    "top_ngram_char_frac",
]

FACTORIES: dict[str, Callable[[Any], StepFn]] = {
    "normalize": make_normalize,
    "length": make_length,
    "gopher_quality": make_gopher_quality,
    "gopher_repetition": make_gopher_repetition,
    "c4": make_c4,
    "fineweb": make_fineweb,
    "language": make_language,
    "pii": make_pii,
}


TRANSFORMS = frozenset({"normalize", "c4", "pii"})
"""The steps that may change a document's text; every other step only keeps or rejects it. Dedup keys
rely on this (``dedup.keytext``): a step list whose only transforms are the default normalise and PII
keeps documents whose cleaned text is their key text. ``tests/test_clean_steps.py`` checks that the
other steps return their input unchanged."""


def build_steps(validated: list[tuple[str, Any]]) -> list[tuple[str, StepFn]]:
    """Step functions from ``config.validate_steps`` output, in order."""
    return [(name, FACTORIES[name](params)) for name, params in validated]


def apply_batch(
    steps: list[tuple[str, StepFn]], texts: list[str]
) -> list[tuple[str, str | None, str | None, Counter]]:
    """Run a batch through the steps in order; same result as ``apply_steps`` on each text, but
    steps with a ``batch`` method (the numpy n-gram rules) see all surviving texts at once."""
    out: list[list[Any]] = [[t, None, None, Counter()] for t in texts]
    alive = list(range(len(texts)))
    for name, fn in steps:
        if not alive:
            break
        bfn = getattr(fn, "batch", None)
        if bfn is not None:
            reasons = bfn([out[i][0] for i in alive])
            for i, r in zip(alive, reasons, strict=True):
                if r is not None:
                    out[i][1], out[i][2] = name, r
        else:
            for i in alive:
                o = out[i]
                o[0], r = fn(o[0], o[3])
                if r is not None:
                    o[1], o[2] = name, r
        alive = [i for i in alive if out[i][2] is None]
    return [tuple(o) for o in out]  # type: ignore[misc]


def apply_steps(steps: list[tuple[str, StepFn]], text: str) -> tuple[str, str | None, str | None, Counter]:
    """Run ``text`` through the steps. Returns (text, failing step, reason, pii counts)."""
    pii: Counter = Counter()
    for name, fn in steps:
        text, reason = fn(text, pii)
        if reason is not None:
            return text, name, reason, pii
    return text, None, None, pii
