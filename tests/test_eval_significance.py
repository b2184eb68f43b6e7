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


def test_p_value_is_the_shifted_null_bootstrap():
    """The p-value counts resampled deltas at least |delta| away from the observed delta (Berg-Kirkpatrick
    et al. 2012), recomputed here from the same resamples: not the percentile-interval inversion, which
    counts deltas beyond zero and gives another number on a skewed bootstrap distribution."""
    from dapt.eval.significance import shifted_null_p

    rng = np.random.default_rng(4)
    base = rng.integers(0, 2, size=60).astype(float)
    adapted = base.copy()
    adapted[rng.choice(np.where(base == 0)[0], size=6, replace=False)] = 1.0  # 6 fixes, 1 break
    adapted[np.where(base == 1)[0][0]] = 0.0
    r = paired_bootstrap(base, adapted, iters=3000, seed=9)
    # the same resamples, by hand
    idx = np.random.default_rng(9).integers(0, 60, size=(3000, 60))
    deltas = adapted[idx].mean(axis=1) - base[idx].mean(axis=1)
    d = adapted.mean() - base.mean()
    assert r["delta"] == pytest.approx(d)
    by_hand = (1 + np.sum(np.abs(deltas - d) >= abs(d))) / 3001
    assert r["p_value"] == pytest.approx(by_hand) == pytest.approx(shifted_null_p(deltas, d))
    inverted = min(1.0, 2 * (min(np.sum(deltas <= 0), np.sum(deltas >= 0)) + 1) / 3001)
    assert r["p_value"] != pytest.approx(inverted)  # the old percentile-inversion number
    assert shifted_null_p(np.array([np.nan, 0.1, -0.1]), 0.0) == 1.0


def test_p_values_are_calibrated_under_the_null():
    """Two models that differ only by chance (independent noise around the same per-item quality): the
    test rejects at about alpha, not more (a percentile-inversion test mislabelled or a bug in the count
    would show here), and clear differences are found."""
    rng = np.random.default_rng(12)
    rejections, trials = 0, 300
    for t in range(trials):
        quality = rng.gamma(2.0, 40.0, size=80)  # per-document NLL scale, shared by both models
        base = quality + rng.normal(0, 8, size=80)
        adapted = quality + rng.normal(0, 8, size=80)
        nbytes = rng.integers(100, 300, size=80).astype(float)
        r = paired_bootstrap(base, adapted, nbytes, nbytes, iters=400, seed=t)
        rejections += r["p_value"] < 0.05
    assert 0.02 <= rejections / trials <= 0.09, rejections


def test_holm_step_down_by_hand():
    from dapt.eval.significance import holm

    p = [0.01, 0.04, 0.03, 0.005, None]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert holm([0.5]) == [0.5] and holm([]) == [] and holm([None, float("nan")]) == [None, None]
    assert holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def _bpb_row(source, kind, p, pooled=False, delta=0.1):
    return {
        "kind": "bpb",
        "source": source,
        "source_kind": kind,
        "pooled": pooled,
        "p_value": p,
        "delta": delta,
    }


def test_rows_get_raw_and_holm_adjusted_p_per_family():
    """Issue 19, item 6: results rows carry p_value and p_adjusted (method named); the family is the rows
    behind one conclusion, and a raw p < 0.05 among five general sources is not significant after Holm."""
    from dapt.eval.compare import adjust_rows

    rows = [
        _bpb_row("fin", "domain", 0.001),
        _bpb_row("news", "domain", 0.02),
        *[_bpb_row(s, "general", p) for s, p in zip("abcde", [0.03, 0.2, 0.5, 0.6, 0.9], strict=True)],
        _bpb_row("all-general", "general", 0.03, pooled=True),
        {"kind": "task", "task": "t1", "metric": "acc", "p_value": 0.01},
        {"kind": "task", "task": "t2", "metric": "acc", "p_value": None},
    ]
    adjust_rows(rows, alpha=0.05)
    by = {r.get("source") or r["task"]: r for r in rows}
    a = by["a"]
    assert a["p_value"] == 0.03 and a["significant_raw"] is True
    assert a["p_adjusted"] == pytest.approx(0.15) and a["significant"] is False
    assert (a["p_adjust_method"], a["p_family"], a["p_family_size"]) == ("holm", "bpb/general sources", 5)
    assert by["fin"]["p_adjusted"] == pytest.approx(0.002) and by["news"]["p_adjusted"] == pytest.approx(0.02)
    assert by["fin"]["significant"] and by["news"]["significant"] and by["news"]["p_family_size"] == 2
    pooled = by["all-general"]  # one test of its own: unchanged
    assert pooled["p_adjusted"] == 0.03 and pooled["significant"] and pooled["p_family"] == "bpb/all-general"
    assert by["t1"]["p_adjusted"] == 0.01 and by["t1"]["p_family_size"] == 1
    assert by["t2"]["p_adjusted"] is None and by["t2"]["significant"] is None


def test_a_source_with_too_few_documents_gets_no_test():
    """One held-out document per source gave the bootstrap no variance and p = 1/(iters+1), i.e. a
    'significant' row from a single document (seen on the MLM demo). Below the fewest items a two-sided
    paired test can use (an exact sign-flip test cannot go below 2 / 2**n: 6 items at alpha 0.05), the
    row is untested; from 6 documents on, a clear improvement is significant."""
    from dapt.eval.compare import adjust_rows, bpb_rows, min_paired_items

    assert [min_paired_items(a) for a in (0.05, 0.01, 0.1)] == [6, 8, 5]

    def rows(n_docs: int) -> dict:
        per = {
            role: {
                "s": {"per_doc": [((1.0 if role == "base" else 0.8) * 100 + i, 100) for i in range(n_docs)]}
            }
            for role in ("base", "adapted")
        }
        out = adjust_rows(bpb_rows(per, {"s": {"kind": "domain"}}, 200, 0.05, 0), 0.05)
        return {r["source"]: r for r in out}

    one = rows(1)
    for r in one.values():
        assert r["p_value"] is None and r["significant"] is None and "needs at least 6" in r["untested"]
        assert r["delta"] < 0  # the measurement is kept, only the test is withheld
    six = rows(6)
    assert all(r["significant"] and "untested" not in r for r in six.values())
