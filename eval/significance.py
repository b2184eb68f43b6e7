"""Paired bootstrap over items: is the adapted model's difference from the base model real?

Both models are scored on the *same* items, so the comparison is paired: each bootstrap resample draws
item indices once and recomputes both models' statistic on them. Item-to-item difficulty, which is
shared, cancels, and the test is much more sensitive than comparing two independent error bars.

Every metric here is a ratio of sums over items, ``scale * sum(num) / sum(den)``: accuracy is
``num = correct, den = 1``; bits-per-byte is ``num = NLL in nats, den = bytes, scale = 1 / ln 2``
(a corpus-level ratio, not a mean of per-document ratios, so it is resampled the same way).

The p-value is two-sided and comes from the same resamples, by the *shifted-null* paired bootstrap of
Berg-Kirkpatrick, Burkett & Klein (2012, "An Empirical Investigation of Statistical Significance in NLP"):
the resampled deltas ``d*`` are spread around the observed
delta ``d``, so ``d* - d`` approximates how the delta varies when the true difference is zero, and
``p = (1 + #{|d* - d| >= |d|}) / (iters + 1)`` (the paper's one-sided count ``d* > 2d`` taken on both
sides; the +1 keeps it from being exactly 0). Checked against the null (``tests/test_eval_significance.py``):
on two models that differ only by chance it rejects at about the nominal rate. (It is not the inversion
of the percentile interval, ``2 * min(share d* <= 0, share d* >= 0)``, which dapt used before: that
counts the tail of ``d*`` beyond zero instead of the tails of ``d* - d`` beyond ``|d|``, and the two
agree only when the bootstrap distribution is symmetric.)

Several comparisons behind one conclusion ("general ability was lost" over five general sources) need a
multiple-comparison correction, or one source in twenty is "significant" by chance: ``holm`` gives
Holm's step-down adjusted p-values (controls the family-wise error rate under any dependence between the
tests, which the sources of one run have: the same model scores them all).

Metrics that are not ratios of sums (weighted F1 and the like) go through ``paired_bootstrap_corpus``,
which calls the metric's own aggregation function on each resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def ratio_stat(num: np.ndarray, den: np.ndarray, scale: float = 1.0) -> float:
    d = float(np.sum(den))
    return scale * float(np.sum(num)) / d if d else float("nan")


def paired_bootstrap(
    base_num: Sequence[float],
    adapted_num: Sequence[float],
    base_den: Sequence[float] | None = None,
    adapted_den: Sequence[float] | None = None,
    scale: float = 1.0,
    iters: int = 1000,
    seed: int = 0,
    chunk: int = 200,
) -> dict[str, float]:
    """Paired bootstrap of ``adapted - base`` for a ratio-of-sums metric over the same items.

    Returns ``base``, ``adapted``, ``delta`` (point estimates on all items), ``base_stderr``,
    ``adapted_stderr``, ``delta_stderr`` (bootstrap standard deviations), ``ci_low``/``ci_high``
    (95% percentile interval of the delta) and ``p_value`` (two-sided, H0: delta = 0, shifted-null).
    """
    bn = np.asarray(base_num, dtype=np.float64)
    an = np.asarray(adapted_num, dtype=np.float64)
    n = len(bn)
    if len(an) != n:
        raise ValueError(f"paired bootstrap needs the same items for both models ({n} vs {len(an)})")
    if n == 0:
        raise ValueError("paired bootstrap needs at least one item")
    bd = np.ones(n) if base_den is None else np.asarray(base_den, dtype=np.float64)
    ad = np.ones(n) if adapted_den is None else np.asarray(adapted_den, dtype=np.float64)
    if len(bd) != n or len(ad) != n:
        raise ValueError("denominators must have one value per item")
    if iters < 1:
        raise ValueError("iters must be >= 1")
    rng = np.random.default_rng(seed)
    b_stats, a_stats = [], []
    for start in range(0, iters, chunk):
        m = min(chunk, iters - start)
        idx = rng.integers(0, n, size=(m, n))
        # counts per item in each resample: sums become matrix products (fast, little memory)
        counts = np.zeros((m, n))
        np.add.at(counts, (np.repeat(np.arange(m), n), idx.ravel()), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            b_stats.append(scale * (counts @ bn) / (counts @ bd))
            a_stats.append(scale * (counts @ an) / (counts @ ad))
    return _summary(
        ratio_stat(bn, bd, scale), ratio_stat(an, ad, scale), np.concatenate(b_stats), np.concatenate(a_stats)
    )


def _summary(base: float, adapted: float, b: np.ndarray, a: np.ndarray) -> dict[str, float]:
    """Point estimates on all items plus what the resampled statistics ``b`` and ``a`` (one per
    resample, paired) say: standard errors, the 95% percentile interval of the delta and the
    shifted-null p-value."""
    iters = len(b)
    deltas = a - b
    observed = adapted - base
    p = shifted_null_p(deltas, observed)
    if np.all(deltas == 0):  # identical models/items: no evidence of any difference
        p = 1.0
    return {
        "base": base,
        "adapted": adapted,
        "delta": adapted - base,
        "base_stderr": float(np.std(b, ddof=1)) if iters > 1 else float("nan"),
        "adapted_stderr": float(np.std(a, ddof=1)) if iters > 1 else float("nan"),
        "delta_stderr": float(np.std(deltas, ddof=1)) if iters > 1 else float("nan"),
        "ci_low": float(np.percentile(deltas, 2.5)),
        "ci_high": float(np.percentile(deltas, 97.5)),
        "p_value": float(p),
    }


def shifted_null_p(deltas: np.ndarray, observed: float) -> float:
    """Two-sided p-value of H0 "true delta = 0" from paired bootstrap deltas around ``observed``
    (Berg-Kirkpatrick et al. 2012): the share of ``|d* - observed| >= |observed|``, +1 corrected.
    Resamples whose statistic is undefined (NaN: a resample with zero denominator) are left out."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not np.isfinite(observed) or len(d) == 0:
        return float("nan")
    if observed == 0:
        return 1.0
    extreme = int(np.sum(np.abs(d - observed) >= abs(observed)))
    return float(min(1.0, (extreme + 1) / (len(d) + 1)))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order.

    The ``k``-th smallest of the ``m`` p-values becomes ``max over j <= k of min(1, (m - j + 1) * p_(j))``;
    rejecting where the adjusted p is below alpha controls the chance of any false rejection in the
    family at alpha. ``None``/NaN entries are not tests: they stay ``None`` and do not count in ``m``."""
    tests = [i for i, p in enumerate(p_values) if p is not None and np.isfinite(p)]
    m = len(tests)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, i in enumerate(sorted(tests, key=lambda i: float(p_values[i]))):  # type: ignore[arg-type]
        running = max(running, min(1.0, (m - k) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def paired_bootstrap_corpus(
    base_items: Sequence[Any],
    adapted_items: Sequence[Any],
    aggregate: Callable[[list[Any]], float],
    iters: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap for a corpus-level metric that is not a ratio of sums (weighted F1, entity F1,
    Matthews correlation): each resample draws item indices once and calls ``aggregate`` (lm-eval's own
    aggregation function of the metric) on both models' resampled items. Same return keys as
    :func:`paired_bootstrap`. Costs ``2 * iters`` aggregation calls, pure Python, so it is slower."""
    n = len(base_items)
    if len(adapted_items) != n:
        raise ValueError(
            f"paired bootstrap needs the same items for both models ({n} vs {len(adapted_items)})"
        )
    if n == 0:
        raise ValueError("paired bootstrap needs at least one item")
    if iters < 1:
        raise ValueError("iters must be >= 1")
    rng = np.random.default_rng(seed)
    b_list, a_list = list(base_items), list(adapted_items)
    b_stats, a_stats = np.empty(iters), np.empty(iters)
    for k in range(iters):
        idx = rng.integers(0, n, size=n)
        b_stats[k] = float(aggregate([b_list[i] for i in idx]))
        a_stats[k] = float(aggregate([a_list[i] for i in idx]))
    return _summary(float(aggregate(b_list)), float(aggregate(a_list)), b_stats, a_stats)
