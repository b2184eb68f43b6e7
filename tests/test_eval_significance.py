"""The paired bootstrap: point estimates, error bars against theory, and p-values that behave."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dapt.eval.significance import paired_bootstrap, paired_bootstrap_corpus
from dapt.eval.tasks.finance.utils import weighted_f1


def test_point_estimates_are_ratio_of_sums():
    r = paired_bootstrap(
        [1, 2, 3], [2, 2, 2], base_den=[10, 10, 20], adapted_den=[10, 10, 20], scale=2.0, iters=50
    )
    assert r["base"] == pytest.approx(2 * 6 / 40)
    assert r["adapted"] == pytest.approx(2 * 6 / 40)
    assert r["delta"] == pytest.approx(0.0)


def test_stderr_of_a_mean_matches_theory():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=400).astype(float)  # accuracy items
    r = paired_bootstrap(x, x, iters=4000, seed=3)
    theory = math.sqrt(x.mean() * (1 - x.mean()) / len(x))
    assert r["base_stderr"] == pytest.approx(theory, rel=0.08)
    assert r["p_value"] == 1.0  # identical results: no difference at all


def test_clear_improvement_is_significant_and_noise_is_not():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2, size=300).astype(float)
    better = base.copy()
    flip = rng.choice(np.where(base == 0)[0], size=40, replace=False)
    better[flip] = 1.0  # the adapted model fixes 40 items and breaks none
    r = paired_bootstrap(base, better, iters=2000, seed=0)
    assert r["delta"] == pytest.approx(40 / 300)
    assert r["p_value"] < 0.01
    assert r["ci_low"] > 0

    noise = base.copy()
    idx = rng.choice(300, size=20, replace=False)
    noise[idx] = 1 - noise[idx]  # flips in both directions
    r2 = paired_bootstrap(base, noise, iters=2000, seed=0)
    assert r2["p_value"] > 0.05
    assert r2["ci_low"] < r2["delta"] < r2["ci_high"]


def test_pairing_beats_independent_error_bars():
    """A small consistent gain on items of very different difficulty: the paired test sees it even
    though the two models' own error bars overlap."""
    rng = np.random.default_rng(2)
    nll = rng.gamma(2.0, 50.0, size=200)  # per-document NLL, widely varying
    nbytes = rng.integers(100, 400, size=200).astype(float)
    adapted = nll * 0.98
    r = paired_bootstrap(nll, adapted, nbytes, nbytes, scale=1 / math.log(2), iters=1000, seed=0)
    assert r["delta"] < 0
    assert abs(r["delta"]) < r["base_stderr"] + r["adapted_stderr"]  # error bars overlap
    assert r["p_value"] < 0.01


def test_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_corpus_metric_bootstrap_weighted_f1():
    """Weighted F1 is not a mean over items: the bootstrap recomputes it on each resample."""
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=300)
    noisy = np.where(rng.random(300) < 0.5, gold, rng.integers(0, 3, size=300))  # ~67% right
    better = np.where(rng.random(300) < 0.85, gold, rng.integers(0, 3, size=300))  # ~90% right
    base = [(int(g), int(p)) for g, p in zip(gold, noisy, strict=True)]
    adapted = [(int(g), int(p)) for g, p in zip(gold, better, strict=True)]
    r = paired_bootstrap_corpus(base, adapted, weighted_f1, iters=300, seed=1)
    assert r["base"] == pytest.approx(weighted_f1(base))
    assert r["adapted"] == pytest.approx(weighted_f1(adapted))
    assert r["delta"] > 0.1 and r["p_value"] < 0.01 and r["ci_low"] > 0
    same = paired_bootstrap_corpus(base, base, weighted_f1, iters=100)
    assert same["p_value"] == 1.0 and same["delta"] == 0.0
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_corpus(base, adapted[:-1], weighted_f1)
