"""Choose the domain fraction and token budget for the real run from the two fitted laws.

The question a sweep answers is constrained, not "which ratio gives the lowest domain loss": more domain
text always helps the domain side, so the answer would be ``r = 1`` and the model would forget. The user
states how much general regression they accept (``max_general_regression``, relative bpb increase over the
base model, e.g. 0.02 for +2%), and how much domain text exists (``domain_tokens_available``) and how many
passes over it are acceptable (``max_epochs``: repeated data is worth less, Muennighoff et al. 2023 find
up to ~4 epochs nearly as good as fresh data). Within those, the best point is the one with the largest
predicted relative domain gain. Ties go to the smaller budget (cheaper), then to the smaller fraction (less
forgetting for the same gain).

Everything is evaluated on a grid of candidates (each budget x a fine grid of fractions) rather than solved
for, because the constraints and laws are cheap to evaluate and a grid gives the report a table of what was
considered. When nothing is feasible the result says which constraint cannot be met and gives the point
that misses by the least, instead of raising: a sweep that shows the constraints are too tight is a
finding for the report, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dapt.sweep.fit import BootstrapCI, LawFit

REGRESSION = "general_regression"
REPETITION = "repetition"
DEFAULT_R_GRID = tuple(round(i / 200, 4) for i in range(1, 201))
"""Fractions 0.005, 0.010, ..., 1.0: finer than any proxy sweep resolves, coarse enough to tabulate."""
_TOL = 1e-12


@dataclass(frozen=True)
class Recommendation:
    """The chosen (fraction, tokens), what the laws predict there, and why.

    ``feasible`` False means no candidate met every constraint; the point given is then the least-violating
    one and ``binding`` names the constraint(s) that could not be met. When feasible, ``binding`` names the
    constraints whose relaxation would let a better candidate through (the answer sits on their boundary).
    Intervals are (low, high) bpb from the bootstrap objects when they were given, else None.
    ``candidates`` is compact: one row per budget with its best feasible fraction (or None) and the largest
    fraction each constraint allows there."""

    domain_fraction: float
    tokens: float
    predicted_domain_bpb: float
    predicted_general_bpb: float
    predicted_domain_gain: float
    predicted_general_regression: float
    domain_epochs: float
    feasible: bool
    binding: tuple[str, ...]
    reason: str
    candidates: tuple[dict, ...]
    predicted_domain_bpb_interval: tuple[float, float] | None = None
    predicted_general_bpb_interval: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        def pair(x):
            return None if x is None else [float(x[0]), float(x[1])]

        return {
            "domain_fraction": float(self.domain_fraction),
            "tokens": float(self.tokens),
            "predicted_domain_bpb": float(self.predicted_domain_bpb),
            "predicted_general_bpb": float(self.predicted_general_bpb),
            "predicted_domain_gain": float(self.predicted_domain_gain),
            "predicted_general_regression": float(self.predicted_general_regression),
            "domain_epochs": float(self.domain_epochs),
            "feasible": bool(self.feasible),
            "binding": list(self.binding),
            "reason": self.reason,
            "candidates": [dict(c) for c in self.candidates],
            "predicted_domain_bpb_interval": pair(self.predicted_domain_bpb_interval),
            "predicted_general_bpb_interval": pair(self.predicted_general_bpb_interval),
        }


def _best(gain: np.ndarray, D: np.ndarray, r: np.ndarray, mask: np.ndarray) -> int | None:
    """Index of the largest gain among ``mask``; ties (to 1e-12) to smaller D, then smaller r."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    g = gain[idx]
    top = idx[g >= g.max() - _TOL]
    order = np.lexsort((r[top], D[top]))
    return int(top[order[0]])


def _max_allowed(r: np.ndarray, ok: np.ndarray) -> float | None:
    """The largest fraction with ``ok`` on one budget's row (None when no fraction is allowed)."""
    return float(r[ok].max()) if ok.any() else None


def recommend(
    domain_fit: LawFit,
    general_fit: LawFit,
    base_domain_bpb: float,
    base_general_bpb: float,
    max_general_regression: float,
    domain_tokens_available: float,
    max_epochs: float,
    budgets: Sequence[float],
    r_grid: Sequence[float] | None = None,
    *,
    params: float | None = None,
    domain_ci: BootstrapCI | None = None,
    general_ci: BootstrapCI | None = None,
) -> Recommendation:
    """The feasible (fraction, tokens) with the largest predicted domain gain; see the module docstring.

    Gain is ``(base_domain - pred_domain) / base_domain``; regression is ``(pred_general - base_general) /
    base_general``; the repetition cap is ``r * D <= domain_tokens_available * max_epochs``. ``params``
    is the model size, needed only by laws with an N term. Never raises for an infeasible problem."""
    if base_domain_bpb <= 0 or base_general_bpb <= 0:
        raise ValueError("base bpb must be > 0")
    if not budgets:
        raise ValueError("no token budgets")
    if domain_tokens_available <= 0 or max_epochs <= 0:
        raise ValueError("domain_tokens_available and max_epochs must be > 0")
    grid = np.asarray(DEFAULT_R_GRID if r_grid is None else r_grid, dtype=np.float64)
    if grid.size == 0 or grid.min() <= 0 or grid.max() > 1:
        raise ValueError("r_grid must be non-empty, in (0, 1]")
    grid = np.unique(grid)
    budgets_arr = np.unique(np.asarray(budgets, dtype=np.float64))
    if budgets_arr.min() <= 0:
        raise ValueError("budgets must be > 0")

    R, D = (a.ravel() for a in np.meshgrid(grid, budgets_arr))  # row-major: one budget per row
    pred_dom = np.asarray(domain_fit.predict(R, D, params), dtype=np.float64)
    pred_gen = np.asarray(general_fit.predict(R, D, params), dtype=np.float64)
    gain = (base_domain_bpb - pred_dom) / base_domain_bpb
    regression = (pred_gen - base_general_bpb) / base_general_bpb
    cap = domain_tokens_available * max_epochs
    ok_reg = regression <= max_general_regression + _TOL
    ok_rep = cap * (1 + _TOL) >= R * D
    feasible = ok_reg & ok_rep

    candidates = []
    n_r = grid.size
    for b, tokens in enumerate(budgets_arr):
        row = slice(b * n_r, (b + 1) * n_r)
        i = _best(gain[row], D[row], R[row], feasible[row])
        candidates.append(
            {
                "tokens": float(tokens),
                "best_fraction": None if i is None else float(R[row][i]),
                "best_gain": None if i is None else float(gain[row][i]),
                "best_regression": None if i is None else float(regression[row][i]),
                "n_feasible": int(feasible[row].sum()),
                "max_fraction_by_regression": _max_allowed(R[row], ok_reg[row]),
                "max_fraction_by_repetition": _max_allowed(R[row], ok_rep[row]),
            }
        )

    best = _best(gain, D, R, feasible)
    if best is not None:
        binding = []
        for name, others_ok in ((REGRESSION, ok_rep), (REPETITION, ok_reg)):
            relaxed = _best(gain, D, R, others_ok)
            if relaxed is not None and gain[relaxed] > gain[best] + _TOL:
                binding.append(name)
        reason = (
            "best feasible point; on the boundary of " + " and ".join(binding)
            if binding
            else "best feasible point; no constraint binds (the laws' own optimum)"
        )
        chosen, is_feasible = best, True
    else:
        # Violations in like units: relative regression beyond its allowance, domain tokens beyond the cap.
        v_reg = np.maximum(regression - max_general_regression, 0.0)
        v_rep = np.maximum(R * D / cap - 1.0, 0.0)
        total = v_reg + v_rep
        chosen = _best(-total, D, R, np.ones_like(feasible))
        binding = [n for n, ok in ((REGRESSION, ok_reg), (REPETITION, ok_rep)) if not ok.any()]
        if not binding:
            binding = [REGRESSION, REPETITION]
            reason = "each constraint can be met alone but never both at once"
        else:
            parts = {
                REGRESSION: f"no candidate keeps general regression <= {max_general_regression:+.2%}",
                REPETITION: f"no candidate keeps domain tokens <= {cap:.3g} ({max_epochs:g} epochs)",
            }
            reason = "; ".join(parts[b] for b in binding)
        reason = "infeasible: " + reason + "; the point given violates least"
        is_feasible = False

    r_c, d_c = float(R[chosen]), float(D[chosen])
    dom_band = None if domain_ci is None else domain_ci.predict_interval(r_c, d_c, params)
    gen_band = None if general_ci is None else general_ci.predict_interval(r_c, d_c, params)
    return Recommendation(
        domain_fraction=r_c,
        tokens=d_c,
        predicted_domain_bpb=float(pred_dom[chosen]),
        predicted_general_bpb=float(pred_gen[chosen]),
        predicted_domain_gain=float(gain[chosen]),
        predicted_general_regression=float(regression[chosen]),
        domain_epochs=r_c * d_c / domain_tokens_available,
        feasible=is_feasible,
        binding=tuple(binding),
        reason=reason,
        candidates=tuple(candidates),
        predicted_domain_bpb_interval=dom_band,
        predicted_general_bpb_interval=gen_band,
    )
