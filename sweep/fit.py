"""Fit a loss law to the proxy runs of a mix-ratio sweep, one law per side (domain text, general text).

Proxies at several domain fractions ``r`` (share of training tokens that are domain text) and token budgets
``D`` give two validation losses in bits per byte; choosing the real run's ratio needs the losses between
and beyond them, so each side gets a law, queried by ``sweep/recommend.py``: the D-CPT Law (Que et al. 2024)

    L(N, D, s) = E + A / N^alpha + B * s^eta / D^beta + C / (s + eps)^gamma

with ``s`` the share of the side's *own* text: ``r`` for the domain side, ``1 - r`` for the general side.
General loss responds to the general share as domain loss does to the domain share (it falls as its own
share grows; ``eps`` keeps the pure-domain run finite), so one form, fitter and bootstrap serve both
sides. With one model size the ``A / N^alpha`` term is a constant, absorbed into ``E``.

As in D-CPT and Chinchilla: Huber loss (robust to one bad proxy) on ``log L_pred - log L_obs`` (a 1% miss
counts the same at any loss level), parameters positive and fitted as logs, several starts. The starts
come from a grid over the exponents, where the law is *linear* in (E, A, B, C): non-negative least squares
gives matching coefficients, and only the best few grid points are refined.

Small grids fall back, in order, to the Data Mixing Law (Ye et al. 2024) plus a Chinchilla data term,
``E + B / D^beta + K * exp(-t * s)``; to ``E + K * exp(-t * s)`` (one budget); to ``log L = a + b *
log(s + eps) + c * log D``. The result says which form and why. Each choice was checked on D-CPT data:
the product ``E + B * exp(-t * s) / D^beta`` makes the benefit of tokens shrink as the share grows (D-CPT's
``s^eta / D^beta``: the opposite) and missed by 6% in-sample; a ``D`` exponent needs 3 budgets (on 2,
``E + B / D^beta`` has three unknowns for two levels); linear in ``s`` missed the convex fall by 7%.
Fallbacks use least squares: they are knowingly approximate, and on 3-7 points a 1e-3 Huber threshold
acts like L1, fitting a subset exactly and ignoring the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares, nnls

try:  # scikit-learn's dependency, so present wherever dapt is installed; the fits work without it
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

SIDES = ("domain", "general")
DEFAULT_EPS = 1e-2
"""``eps`` in ``C / (s + eps)^gamma``: keeps the share term finite at ``s = 0`` (the D-CPT setup's value)."""
DEFAULT_HUBER_DELTA = 1e-3
"""Huber threshold on log-loss residuals, as Hoffmann et al. 2022 and D-CPT use."""
_LOG_BOUNDS = {"coef": (-30.0, 30.0), "exp": (math.log(1e-4), math.log(5.0))}


@dataclass(frozen=True)
class SweepPoint:
    """One proxy run: its domain fraction, training tokens, optional model size, and the two losses."""

    fraction: float
    tokens: float
    domain_bpb: float
    general_bpb: float
    params: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.tokens <= 0 or self.domain_bpb <= 0 or self.general_bpb <= 0:
            raise ValueError("tokens and both losses must be > 0")
        if self.params is not None and self.params <= 0:
            raise ValueError("params must be > 0 when given")

    def loss(self, side: str) -> float:
        return self.domain_bpb if _check_side(side) == "domain" else self.general_bpb


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Run the optimisers with one BLAS thread. Their linear algebra is on 5-8 element vectors, where
    OpenBLAS threads only add synchronisation; on a busy machine it made a fit 4-10x slower (measured:
    the Chinchilla fit 0.8 s with 2 threads on 2 loaded cores, 0.2 s with one)."""
    return threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext()


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return side


def side_share(side: str, fraction):
    """The share of the side's own text: ``r`` for the domain side, ``1 - r`` for the general side."""
    fraction = np.asarray(fraction, dtype=np.float64)
    return fraction if _check_side(side) == "domain" else 1.0 - fraction


# --------------------------------------------------------------------------------------------------
# The forms. A positive form is linear in its coefficients once the exponents are fixed:
# L = design(exponents, s, D, N) @ coefficients. That one fact gives prediction and the start grid.


@dataclass(frozen=True)
class _Form:
    name: str
    coefs: tuple[str, ...]
    exps: tuple[str, ...]
    grid: tuple[tuple[float, ...], ...]
    design: Callable[..., np.ndarray]
    needs_r: int
    needs_d: int
    needs_n: int = 1
    max_d: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.coefs + self.exps


def _dcpt_design(e: dict, s, D, N, eps: float) -> np.ndarray:
    cols = [np.ones_like(s)]
    if "alpha" in e:
        cols.append(N ** -e["alpha"])
    cols += [s ** e["eta"] * D ** -e["beta"], (s + eps) ** -e["gamma"]]
    return np.stack(cols, axis=-1)


def _mix_design(e: dict, s, D, N, eps: float) -> np.ndarray:
    cols = [np.ones_like(s)] + ([D ** -e["beta"]] if "beta" in e else []) + [np.exp(-e["t"] * s)]
    return np.stack(cols, axis=-1)


_ETA = (0.05, 0.2, 0.5, 1.0)
_BETA = (0.1, 0.25, 0.5)
_GAMMA = (0.1, 0.3, 0.6, 1.0)
_ALPHA = (0.2, 0.5)
_T = (0.5, 1.0, 2.0, 4.0)
# D-CPT's budget term B r^eta / D^beta needs three budgets: from two, beta and B are fixed by two points and
# the extrapolation to the target budget is arbitrary (the first sweep demo's fit on 8k and 25k tokens
# put beta at 3.7, saturating at once, and predicted 0.935 domain bpb at 98k tokens where 0.900 was measured).
FORMS = {
    f.name: f
    for f in (
        _Form("dcpt_n", ("E", "A", "B", "C"), ("alpha", "eta", "beta", "gamma"),
              (_ALPHA, _ETA, _BETA, _GAMMA), _dcpt_design, 3, 3, 2),
        _Form("dcpt", ("E", "B", "C"), ("eta", "beta", "gamma"), (_ETA, _BETA, _GAMMA), _dcpt_design, 3, 3),
        _Form("mixing_exp", ("E", "B", "K"), ("beta", "t"), (_BETA, _T), _mix_design, 3, 3),
        _Form("mixing_exp_1d", ("E", "K"), ("t",), (_T,), _mix_design, 3, 1, max_d=1),
    )
}  # fmt: skip
FORM_ORDER = ("dcpt_n", "dcpt", "mixing_exp", "mixing_exp_1d", "loglinear")
"""Tried in this order; ``dcpt_n`` only with several model sizes in the grid, ``dcpt`` only with one."""


def _predict(form: str, p: dict, s, D, N, eps: float) -> np.ndarray:
    if form == "loglinear":
        return np.exp(p["a"] + p["b"] * np.log(s + eps) + p["c"] * np.log(D))
    f = FORMS[form]
    x = f.design({k: p[k] for k in f.exps}, s, D, N, eps)
    return x @ np.array([p[k] for k in f.coefs])


@dataclass(frozen=True)
class LawFit:
    """A fitted law for one side. ``params`` are in natural units (not logs); ``reason`` says why this form.

    ``rmse`` is in bits per byte, ``rel_rmse`` relative to the measured loss; ``objective`` is the cost on
    log residuals that was minimised: Huber with threshold ``huber_delta``, or half the sum of squares when
    ``huber_delta`` is None (the fallback forms; 0 for the log-linear form, solved in closed form).
    """

    side: str
    form: str
    params: dict[str, float]
    eps: float = DEFAULT_EPS
    rmse: float = 0.0
    rel_rmse: float = 0.0
    n_points: int = 0
    objective: float = 0.0
    huber_delta: float | None = DEFAULT_HUBER_DELTA
    reason: str = ""

    def predict(self, r, D, N=None):
        """Predicted bpb at domain fraction ``r``, tokens ``D`` (and model size ``N`` for ``dcpt_n``).

        Arguments broadcast; a float comes back for scalar inputs."""
        if self.form == "dcpt_n" and N is None:
            raise ValueError("this law has a model-size term: pass N")
        s = side_share(self.side, r)
        D = np.asarray(D, dtype=np.float64)
        Na = np.asarray(1.0 if N is None else N, dtype=np.float64)
        s, D, Na = np.broadcast_arrays(s, D, Na)
        out = _predict(self.form, self.params, s, D, Na, self.eps)
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict:
        out = {k: float(getattr(self, k)) for k in ("eps", "rmse", "rel_rmse", "objective")}
        return out | {
            "side": self.side,
            "form": self.form,
            "share": "fraction" if self.side == "domain" else "1 - fraction",
            "params": {k: float(v) for k, v in self.params.items()},
            "n_points": int(self.n_points),
            "huber_delta": None if self.huber_delta is None else float(self.huber_delta),
            "reason": self.reason,
        }


# --------------------------------------------------------------------------------------------------
# Fitting


def _arrays(points: Sequence[SweepPoint], side: str):
    if not points:
        raise ValueError("no sweep points")
    if len({p.params is None for p in points}) > 1:
        raise ValueError("give the model size (params) for every sweep point or for none")
    r = np.array([p.fraction for p in points], dtype=np.float64)
    D = np.array([p.tokens for p in points], dtype=np.float64)
    N = np.array([1.0 if p.params is None else p.params for p in points], dtype=np.float64)
    L = np.array([p.loss(side) for p in points], dtype=np.float64)
    return side_share(side, r), D, N, L


def _unmet(form: str, points: Sequence[SweepPoint]) -> str | None:
    """Why ``form`` cannot be fitted to ``points`` (None when it can): grid-size rules, no data needed."""
    n = len(points)
    n_r = len({p.fraction for p in points})
    n_d = len({p.tokens for p in points})
    n_n = len({p.params for p in points})
    if form == "loglinear":
        return None
    f = FORMS[form]
    k = len(f.names)
    checks = [
        (n < k + 2, f"{n} points < {k} parameters + 2"),
        (n_r < f.needs_r, f"{n_r} distinct fractions < {f.needs_r}"),
        (n_d < f.needs_d, f"{n_d} distinct token budgets < {f.needs_d}"),
        (f.max_d is not None and n_d > f.max_d, f"{n_d} distinct token budgets, the form has no D term"),
        (n_n < f.needs_n, f"{n_n} distinct model sizes < {f.needs_n}"),
        (form == "dcpt" and n_n > 1, "several model sizes need the N term"),
    ]
    return "; ".join(msg for bad, msg in checks if bad) or None


def _starts(f: _Form, s, D, N, L, eps: float, n_starts: int) -> list[np.ndarray]:
    """Log-parameter starts: the grid points over the exponents whose NNLS coefficients fit best."""
    scored = []
    for combo in itertools.product(*f.grid):
        e = dict(zip(f.exps, combo, strict=True))
        x = f.design(e, s, D, N, eps)
        coef, resid = nnls(x, L)
        coef = np.maximum(coef, 1e-6 * float(L.max()))
        scored.append((resid, np.log(np.concatenate([coef, combo]))))
    scored.sort(key=lambda t: t[0])
    return [theta for _, theta in scored[:n_starts]]


def _fit_positive(f: _Form, s, D, N, L, eps, delta: float | None, starts) -> tuple[np.ndarray, float]:
    lo, hi = np.array([_LOG_BOUNDS["coef"]] * len(f.coefs) + [_LOG_BOUNDS["exp"]] * len(f.exps)).T
    logL = np.log(L)
    k = len(f.coefs)

    def resid(theta: np.ndarray) -> np.ndarray:
        p = np.exp(theta)
        pred = f.design(dict(zip(f.exps, p[k:], strict=True)), s, D, N, eps) @ p[:k]
        return np.log(np.maximum(pred, 1e-300)) - logL

    best = None
    with one_blas_thread():
        for theta0 in starts:
            res = least_squares(
                resid,
                np.clip(theta0, lo + 1e-9, hi - 1e-9),
                bounds=(lo, hi),
                loss="linear" if delta is None else "huber",
                f_scale=1.0 if delta is None else delta,
                xtol=1e-12,
                ftol=1e-12,
                gtol=1e-12,
                max_nfev=2000,
            )
            if best is None or res.cost < best.cost:
                best = res
    return best.x, float(best.cost)


def _fit_loglinear(s, D, L, eps: float) -> dict[str, float]:
    """Least squares for ``log L = a + b log(s + eps) + c log D``; a slope the grid cannot see stays 0."""
    cols = {"a": np.ones_like(s)}
    if len(set(s.tolist())) >= 2:
        cols["b"] = np.log(s + eps)
    if len(set(D.tolist())) >= 2 and len(L) >= len(cols) + 1:
        cols["c"] = np.log(D)
    coef, *_ = np.linalg.lstsq(np.stack(list(cols.values()), axis=-1), np.log(L), rcond=None)
    return {"a": 0.0, "b": 0.0, "c": 0.0} | {n: float(c) for n, c in zip(cols, coef, strict=True)}


def choose_form(points: Sequence[SweepPoint]) -> tuple[str, str]:
    """The richest form the grid supports, and a sentence saying why richer ones were skipped."""
    skipped = []
    several_n = len({p.params for p in points}) > 1
    for form in FORM_ORDER:
        if form == "dcpt_n" and not several_n:
            continue  # one model size: the N term is a constant, absorbed into E (not a fallback)
        why = _unmet(form, points)
        if why is None:
            reason = "; ".join(skipped) if skipped else "grid supports the full D-CPT form"
            if several_n and form != "dcpt_n":
                reason += "; model-size differences are ignored by this form"
            return form, reason
        skipped.append(f"not {form}: {why}")
    raise AssertionError("loglinear always fits")


def fit_law(
    points: Sequence[SweepPoint],
    side: str,
    *,
    eps: float = DEFAULT_EPS,
    huber_delta: float | None = DEFAULT_HUBER_DELTA,
    form: str | None = None,
    n_starts: int = 4,
    start: dict[str, float] | None = None,
) -> LawFit:
    """Fit one side's law to the sweep points.

    ``form`` forces a form (it must be supported by the grid, else ValueError); by default the richest
    supported form is used. ``start`` (natural-unit params of the same form, e.g. a previous fit's) replaces
    the start grid with that single start: the bootstrap and leave-one-out refits warm-start this way.
    ``huber_delta`` applies to the D-CPT forms (None: least squares); the fallbacks always use least squares.
    """
    s, D, N, L = _arrays(points, side)
    if form is None:
        form, reason = choose_form(points)
    elif form not in FORM_ORDER:
        raise ValueError(f"unknown form {form!r}; one of {FORM_ORDER}")
    elif (why := _unmet(form, points)) is not None:
        raise ValueError(f"form {form} does not fit this grid: {why}")
    else:
        reason = "form requested"
    delta = huber_delta if form in ("dcpt", "dcpt_n") else None
    if form == "loglinear":
        params, cost = _fit_loglinear(s, D, L, eps), 0.0
    else:
        f = FORMS[form]
        if start is not None:
            starts = [np.log(np.array([start[k] for k in f.names], dtype=np.float64))]
        else:
            starts = _starts(f, s, D, N, L, eps, n_starts)
        theta, cost = _fit_positive(f, s, D, N, L, eps, delta, starts)
        params = {k: float(v) for k, v in zip(f.names, np.exp(theta), strict=True)}
    pred = _predict(form, params, s, D, N, eps)
    return LawFit(
        side=side,
        form=form,
        params=params,
        eps=eps,
        rmse=float(np.sqrt(np.mean((pred - L) ** 2))),
        rel_rmse=float(np.sqrt(np.mean((pred / L - 1.0) ** 2))),
        n_points=len(points),
        objective=cost,
        huber_delta=delta,
        reason=reason,
    )


# --------------------------------------------------------------------------------------------------
# Uncertainty: bootstrap over points, leave-one-out


def _refit(points: Sequence[SweepPoint], side: str, fit: LawFit) -> LawFit:
    """``fit``'s form refitted to ``points``, started from ``fit``'s parameters (one local refinement)."""
    return fit_law(points, side, eps=fit.eps, huber_delta=fit.huber_delta, form=fit.form, start=fit.params)


def percentile_interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval over axis 0 (the bootstrap replicates)."""
    q = (1.0 - level) / 2.0
    return np.quantile(values, q, axis=0), np.quantile(values, 1.0 - q, axis=0)


def intervals_dict(ci: Any) -> dict:
    """A bootstrap result's intervals as JSON: level, draws asked and kept, (low, high) per parameter."""
    return {
        "level": float(ci.level),
        "n_boot": ci.n_boot,
        "n_ok": len(ci.samples),
        "intervals": {k: [float(a), float(b)] for k, (a, b) in ci.intervals.items()},
    }


@dataclass(frozen=True, eq=False)
class BootstrapCI:
    """Percentile intervals from refits on resampled points (same form as the full fit, warm-started).

    ``samples`` holds one natural-unit parameter vector per successful refit (order ``names``); it stays
    out of ``to_dict``. ``predict_interval`` evaluates every refit, so prediction intervals carry the
    correlation between parameters that per-parameter intervals lose."""

    fit: LawFit
    level: float
    n_boot: int
    names: tuple[str, ...]
    intervals: dict[str, tuple[float, float]]
    samples: np.ndarray = field(repr=False)

    def predict_interval(self, r, D, N=None):
        """(low, high) of the predicted bpb at (r, D[, N]) over the bootstrap refits."""
        if len(self.samples) == 0:
            p = self.fit.predict(r, D, N)
            return p, p
        preds = np.stack(
            [
                LawFit(self.fit.side, self.fit.form, dict(zip(self.names, row, strict=True)), self.fit.eps)
                .predict(r, D, N)
                for row in self.samples
            ]
        )  # fmt: skip
        lo, hi = percentile_interval(preds, self.level)
        return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)

    def to_dict(self) -> dict:
        return intervals_dict(self)


def bootstrap_ci(
    points: Sequence[SweepPoint],
    side: str,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.9,
    *,
    fit: LawFit | None = None,
) -> BootstrapCI:
    """Resample the points with replacement, refit, and take percentile intervals.

    Each refit uses the full fit's form and starts from the full fit's parameters (one local refinement
    instead of a multi-start search: the resample is close to the original data, so this is both fast and
    keeps the refit in the same basin). A resample too thin for the form is redrawn (at most ``4 n_boot``
    draws in all), so every interval is about the same law. ``fit`` (default: ``fit_law`` with its
    defaults) is the full fit, whose form, ``eps`` and Huber threshold the refits keep."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    fit = fit or fit_law(points, side)
    rng = np.random.default_rng(seed)
    names = tuple(fit.params)
    rows, draws = [], 0
    while len(rows) < n_boot and draws < 4 * n_boot:
        draws += 1
        sample = [points[i] for i in rng.integers(0, len(points), len(points))]
        if _unmet(fit.form, sample) is not None:
            continue
        if fit.form != "loglinear" and len(set(sample)) < len(FORMS[fit.form].names) + 1:
            continue
        refit = _refit(sample, side, fit)
        rows.append([refit.params[k] for k in names])
    samples = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    lo, hi = percentile_interval(samples, level) if rows else ([*fit.params.values()],) * 2
    intervals = {k: (float(a), float(b)) for k, a, b in zip(names, lo, hi, strict=True)}
    return BootstrapCI(fit, level, n_boot, names, intervals, samples)


@dataclass(frozen=True)
class LeaveOneOut:
    """Each point predicted by a law fitted without it: the honest check of a fit's interpolation."""

    side: str
    rows: tuple[dict, ...]
    mean_abs_rel_error: float
    max_abs_rel_error: float

    def to_dict(self) -> dict:
        out = {"side": self.side, "rows": [dict(r) for r in self.rows]}
        return out | {k: float(getattr(self, k)) for k in ("mean_abs_rel_error", "max_abs_rel_error")}


def leave_one_out(
    points: Sequence[SweepPoint],
    side: str,
    *,
    fit: LawFit | None = None,
) -> LeaveOneOut:
    """Refit without each point in turn; record measured vs predicted and the relative error.

    The refit keeps the full fit's form (warm-started from it) when the remaining points support that form,
    and otherwise uses the richest form they do support; each row names the form used."""
    if len(points) < 2:
        raise ValueError("leave-one-out needs at least 2 points")
    fit = fit or fit_law(points, side)
    rows = []
    for i, p in enumerate(points):
        rest = [q for j, q in enumerate(points) if j != i]
        keep = _unmet(fit.form, rest) is None
        refit = (
            _refit(rest, side, fit) if keep else fit_law(rest, side, eps=fit.eps, huber_delta=fit.huber_delta)
        )
        measured = p.loss(side)
        pred = float(refit.predict(p.fraction, p.tokens, p.params if refit.form == "dcpt_n" else None))
        rows.append(
            {"fraction": p.fraction, "tokens": p.tokens, "params": p.params, "measured": measured}
            | {"predicted": pred, "rel_error": pred / measured - 1.0, "form": refit.form}
        )
    errs = np.abs([r["rel_error"] for r in rows])
    return LeaveOneOut(side, tuple(rows), float(errs.mean()), float(errs.max()))
