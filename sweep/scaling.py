"""Chinchilla Approach 3 on our own runs: L(N, D) = E + A / N^alpha + B / D^beta, and the optimal split.

Published fits answer "how big a model for this compute" for *their* data and tokenizer; a domain corpus
(and a bits-per-byte loss) has its own constants, so the sweep refits them from its own runs of several
sizes and budgets and the report puts its fit next to the published ones.

The fit is Hoffmann et al. 2022's (Approach 3): minimise the Huber loss (delta 1e-3) between
``log L_pred = logsumexp(log A - alpha log N, log B - beta log D, log E)`` and ``log L_obs``, with L-BFGS
from a grid of initialisations. Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt") traced
the published fit's too-narrow intervals and odd estimates partly to the optimiser stopping early, so here
the objective is scaled by ``1 / delta^2`` (L-BFGS's stopping rule compares absolute decreases, and the raw
loss is ~1e-6), the tolerances are tight, the gradient is analytic, and L-BFGS runs on centred logs
(``a - alpha log N`` with ``log N`` ~ 20 makes ``a`` and ``alpha`` nearly collinear otherwise; the
minimiser is the same). Hoffmann's full grid (4,500 starts) is scored in one vectorised pass and only its
best few points are refined, which keeps a fit to a fraction of a second.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from dapt.sweep.fit import intervals_dict, one_blas_thread, percentile_interval

DEFAULT_HUBER_DELTA = 1e-3
_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class ScalingLawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta; ``label`` says where the numbers come from."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    label: str = "fitted"
    n_points: int = 0
    objective: float = 0.0
    rel_rmse: float = 0.0

    def predict(self, N, D):
        out = (
            self.E
            + self.A / np.asarray(N, dtype=np.float64) ** self.alpha
            + self.B / np.asarray(D, dtype=np.float64) ** self.beta
        )
        return float(out) if np.ndim(out) == 0 else out

    def to_dict(self) -> dict:
        out = {k: float(getattr(self, k)) for k in (*_NAMES, "objective", "rel_rmse")}
        return out | {"label": self.label, "n_points": int(self.n_points)}


HOFFMANN_2022 = ScalingLawFit(1.69, 406.4, 410.7, 0.34, 0.28, label="Hoffmann et al. 2022, Approach 3")
BESIROGLU_2024 = ScalingLawFit(
    1.8172, 482.01, 2085.43, 0.3478, 0.3658, label="Besiroglu et al. 2024, replication of Approach 3"
)
"""E is 1.8172 as in the paper's table (1.82 rounded), the same value train/plan/compute.py uses."""
PUBLISHED = {"hoffmann2022": HOFFMANN_2022, "besiroglu2024": BESIROGLU_2024}
"""Both are fitted on nats per token of MassiveText-like data: compare exponents and the N/D split they imply
with ours, not E, A, B, which depend on the loss unit and tokenizer."""


def _grid() -> np.ndarray:
    """Hoffmann et al.'s initialisation grid over (e = log E, a = log A, b = log B, alpha, beta)."""
    return np.array(
        list(
            itertools.product(
                np.arange(-1.0, 1.01, 0.5),
                np.arange(0.0, 25.1, 5.0),
                np.arange(0.0, 25.1, 5.0),
                np.arange(0.0, 2.01, 0.5),
                np.arange(0.0, 2.01, 0.5),
            )
        )
    )


def _logsumexp0(terms: np.ndarray) -> np.ndarray:
    """logsumexp over axis 0, in plain numpy: scipy's is several times slower on these tiny arrays, and the
    objective is called a few hundred times per start."""
    m = terms.max(axis=0)
    return m + np.log(np.exp(terms - m).sum(axis=0))


def _log_pred(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray) -> np.ndarray:
    """theta rows (e, a, b, alpha, beta) -> log L for every point; theta may be (k, 5) for a whole grid."""
    t = np.atleast_2d(theta)[:, :, None]
    terms = np.stack(
        [t[:, 1] - t[:, 3] * logN, t[:, 2] - t[:, 4] * logD, np.broadcast_to(t[:, 0], (len(t), len(logN)))]
    )
    return _logsumexp0(terms)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _objective(theta, logN, logD, logL, delta):
    """Scaled Huber loss and its analytic gradient (softmax weights of the three logsumexp terms)."""
    e, a, b, alpha, beta = theta
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    lp = _logsumexp0(terms)
    w = np.exp(terms - lp)
    r = lp - logL
    scale = 1.0 / delta**2
    dr = np.clip(r, -delta, delta) * scale
    grad = np.array([dr @ w[2], dr @ w[0], dr @ w[1], -(dr * w[0]) @ logN, -(dr * w[1]) @ logD])
    return float(_huber(r, delta).sum() * scale), grad


def _to_fit(theta, n_points: int, objective: float, rel_rmse: float) -> ScalingLawFit:
    e, a, b, alpha, beta = (float(x) for x in theta)
    coefs = dict(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)
    return ScalingLawFit(**coefs, n_points=n_points, objective=objective, rel_rmse=rel_rmse)


def fit_scaling(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    *,
    huber_delta: float = DEFAULT_HUBER_DELTA,
    n_starts: int = 8,
    start: ScalingLawFit | None = None,
) -> ScalingLawFit:
    """Fit E, A, B, alpha, beta to runs of model size ``params`` on ``tokens`` with final ``loss``.

    Needs at least 2 distinct sizes, 2 distinct budgets and 7 runs (5 parameters + 2). ``start`` replaces
    the grid with one warm start (the bootstrap uses it)."""
    N, D, L = (np.asarray(x, dtype=np.float64) for x in (params, tokens, loss))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError("params, tokens and loss must be 1-d and the same length")
    if (N <= 0).any() or (D <= 0).any() or (L <= 0).any():
        raise ValueError("params, tokens and loss must be > 0")
    if len(set(N.tolist())) < 2 or len(set(D.tolist())) < 2 or len(N) < 7:
        raise ValueError("need >= 2 model sizes, >= 2 token budgets and >= 7 runs for 5 parameters")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    if start is not None:
        starts = np.array([np.log([start.E, start.A, start.B]).tolist() + [start.alpha, start.beta]])
    else:
        grid = _grid()
        scores = _huber(_log_pred(grid, logN, logD) - logL, huber_delta).sum(axis=1)
        starts = grid[np.argsort(scores, kind="stable")[:n_starts]]
    # Centred logs: a - alpha log N = (a - alpha cN) - alpha (log N - cN); ``shift`` maps theta there.
    cN, cD = float(logN.mean()), float(logD.mean())
    shift = np.array(
        [[1, 0, 0, 0, 0], [0, 1, 0, -cN, 0], [0, 0, 1, 0, -cD], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1.0]]
    )
    best = None
    with one_blas_thread():
        for theta0 in starts:
            res = minimize(
                _objective,
                shift @ theta0,
                args=(logN - cN, logD - cD, logL, huber_delta),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9},
            )
            if best is None or res.fun < best.fun:
                best = res
    theta = np.linalg.solve(shift, best.x)
    pred = np.exp(_log_pred(theta, logN, logD)[0])
    rel_rmse = float(np.sqrt(np.mean((pred / L - 1.0) ** 2)))
    return _to_fit(theta, len(L), float(best.fun) * huber_delta**2, rel_rmse)


@dataclass(frozen=True)
class ComputeOptimal:
    """The compute-optimal model size and token count for ``flops`` under C = 6 N D."""

    flops: float
    params: float
    tokens: float
    loss: float
    tokens_per_param: float

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in self.__dict__.items()}


def compute_optimal(fit: ScalingLawFit, flops: float) -> ComputeOptimal:
    """Hoffmann et al. eq. 4: G = (alpha A / (beta B))^(1/(alpha+beta)), N = G (C/6)^(beta/(alpha+beta)),
    D = G^-1 (C/6)^(alpha/(alpha+beta)); the loss there from the same law."""
    if flops <= 0:
        raise ValueError("flops must be > 0")
    s = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / s)
    n = g * (flops / 6.0) ** (fit.beta / s)
    d = (flops / 6.0) ** (fit.alpha / s) / g
    return ComputeOptimal(float(flops), float(n), float(d), float(fit.predict(n, d)), float(d / n))


@dataclass(frozen=True, eq=False)
class ScalingCI:
    """Percentile intervals from refits on resampled runs; ``samples`` rows are (E, A, B, alpha, beta)."""

    fit: ScalingLawFit
    level: float
    n_boot: int
    intervals: dict[str, tuple[float, float]]
    samples: np.ndarray = field(repr=False)

    def compute_optimal_interval(self, flops: float) -> dict[str, tuple[float, float]]:
        """(low, high) of the optimal params and tokens at ``flops`` over the refits."""
        fits = [ScalingLawFit(*row) for row in self.samples] or [self.fit]
        opts = np.array([[o.params, o.tokens] for o in (compute_optimal(f, flops) for f in fits)])
        lo, hi = percentile_interval(opts, self.level)
        return {"params": (float(lo[0]), float(hi[0])), "tokens": (float(lo[1]), float(hi[1]))}

    def to_dict(self) -> dict:
        return intervals_dict(self)


def bootstrap_scaling(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.9,
    *,
    fit: ScalingLawFit | None = None,
    huber_delta: float = DEFAULT_HUBER_DELTA,
) -> ScalingCI:
    """Resample runs with replacement, refit warm-started from the full fit, take percentile intervals.

    A resample with fewer than 2 sizes, 2 budgets or 6 distinct runs is redrawn (at most 4 n_boot draws)."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    N, D, L = (np.asarray(x, dtype=np.float64) for x in (params, tokens, loss))
    fit = fit if fit is not None else fit_scaling(N, D, L, huber_delta=huber_delta)
    rng = np.random.default_rng(seed)
    rows, draws = [], 0
    while len(rows) < n_boot and draws < 4 * n_boot:
        draws += 1
        i = rng.integers(0, len(L), len(L))
        if len(set(N[i].tolist())) < 2 or len(set(D[i].tolist())) < 2 or len(set(i.tolist())) < 6:
            continue
        r = fit_scaling(N[i], D[i], L[i], huber_delta=huber_delta, start=fit)
        rows.append([r.E, r.A, r.B, r.alpha, r.beta])
    samples = np.array(rows, dtype=np.float64).reshape(len(rows), 5)
    lo, hi = percentile_interval(samples, level) if rows else ([getattr(fit, k) for k in _NAMES],) * 2
    intervals = {k: (float(a), float(b)) for k, a, b in zip(_NAMES, lo, hi, strict=True)}
    return ScalingCI(fit, level, n_boot, intervals, samples)
