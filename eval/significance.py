"""Paired bootstrap over items: is the adapted model's difference from the base model real?

Both models are scored on the *same* items, so the comparison is paired: each bootstrap resample draws
item indices once and recomputes both models' statistic on them. Item-to-item difficulty, which is
shared, cancels, and the test is much more sensitive than comparing two independent error bars.

Every metric here is a ratio of sums over items, ``scale * sum(num) / sum(den)``: accuracy is
``num = correct, den = 1``; bits-per-byte is ``num = NLL in nats, den = bytes, scale = 1 / ln 2``
(a corpus-level ratio, not a mean of per-document ratios, so it is resampled the same way).

The p-value is two-sided, from the bootstrap distribution of the delta: twice the smaller share of
resampled deltas on either side of zero, with the +1 correction so it is never exactly 0
(Efron & Tibshirani's percentile test; Koehn 2004 / Berg-Kirkpatrick et al. 2012 use the same resampling).
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
    (95% percentile interval of the delta) and ``p_value`` (two-sided, H0: delta = 0).
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
    resample, paired) say: standard errors, the 95% percentile interval of the delta and the p-value."""
    iters = len(b)
    deltas = a - b
    le = int(np.sum(deltas <= 0))
    ge = int(np.sum(deltas >= 0))
    p = min(1.0, 2.0 * (min(le, ge) + 1) / (iters + 1))
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
