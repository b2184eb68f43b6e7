"""A compute budget as a token ceiling, and the token budgets a recommendation chooses among.

Users state what they can spend in the units they are billed in: FLOPs, GPU-hours, or money. ``dapt plan``
already turns tokens into those (PaLM's FLOPs per token for the run's model and sequence length, the GPU's
peak, an MFU measured or assumed, a price); here the same numbers run backwards, from the budget to the
most tokens it buys. The recommendation then picks the budget *and* the fraction on a grid of token
budgets up to that ceiling: with a law whose loss keeps falling in D the ceiling usually wins, but the
repetition cap (``r * D`` domain tokens at most ``mix.max_epochs`` passes over the supply) and the general
regression limit can make a smaller budget with more domain text, or a larger one with less, the better
point, and the candidates table shows how much each step of the budget buys.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

BUDGET_POINTS = 25
"""Token budgets tried between the smallest proxy budget and the ceiling (log-spaced): fine enough that
the gain between neighbours is small, few enough to tabulate."""


@dataclass(frozen=True)
class TokenCeiling:
    """What a compute budget buys: ``tokens`` at ``flops_per_token``, and the budget in each unit (those
    that could be derived: GPU-hours need the GPU's peak and an MFU, cost a price per GPU-hour)."""

    tokens: int
    flops: float
    flops_per_token: float
    given: dict[str, float]
    gpu_hours: float | None = None
    cost: float | None = None
    peak_flops_per_gpu: float | None = None
    mfu: float | None = None
    mfu_source: str | None = None
    price_per_gpu_hour: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_ceiling(
    given: dict[str, float],
    flops_per_token: float,
    *,
    peak_flops_per_gpu: float | None = None,
    mfu: float | None = None,
    mfu_source: str | None = None,
    price_per_gpu_hour: float | None = None,
) -> TokenCeiling:
    """The most training tokens ``given`` (exactly one of ``flops``, ``gpu_hours``, ``cost``) pays for.

    GPU-hours become FLOPs at ``mfu`` of the GPU's peak (``compute.gpu_hours`` backwards); a cost
    becomes GPU-hours at ``price_per_gpu_hour``. Raises ValueError when a conversion lacks its number."""
    keys = [k for k in ("flops", "gpu_hours", "cost") if given.get(k) is not None]
    if len(keys) != 1:
        raise ValueError(f"give exactly one of flops, gpu_hours, cost (got {keys or 'none'})")
    if flops_per_token <= 0:
        raise ValueError("flops_per_token must be > 0")
    unit, amount = keys[0], float(given[keys[0]])
    if amount <= 0:
        raise ValueError(f"{unit} must be > 0")
    per_gpu_hour = None
    if peak_flops_per_gpu and mfu:
        per_gpu_hour = peak_flops_per_gpu * mfu * 3600.0
    gpu_hours = cost = None
    if unit == "cost":
        if not price_per_gpu_hour:
            raise ValueError("a cost budget needs a price per GPU-hour (plan.price_per_gpu_hour)")
        gpu_hours, cost = amount / price_per_gpu_hour, amount
    elif unit == "gpu_hours":
        gpu_hours = amount
    if unit == "flops":
        flops = amount
        if per_gpu_hour:
            gpu_hours = flops / per_gpu_hour
    else:
        if not per_gpu_hour:
            raise ValueError(f"a {unit} budget needs the GPU's peak FLOP/s and an MFU (plan.gpu, plan.mfu)")
        flops = gpu_hours * per_gpu_hour
    if cost is None and gpu_hours is not None and price_per_gpu_hour:
        cost = gpu_hours * price_per_gpu_hour
    return TokenCeiling(
        tokens=int(flops // flops_per_token),
        flops=flops,
        flops_per_token=flops_per_token,
        given={unit: amount},
        gpu_hours=gpu_hours,
        cost=cost,
        peak_flops_per_gpu=peak_flops_per_gpu,
        mfu=mfu,
        mfu_source=mfu_source,
        price_per_gpu_hour=price_per_gpu_hour,
    )


def candidate_budgets(smallest: int, ceiling: int, points: int = BUDGET_POINTS) -> list[int]:
    """Log-spaced whole token counts from ``smallest`` to ``ceiling``, both included (just the ceiling
    when it is not above ``smallest``: the budget cannot buy even the smallest proxy run's tokens)."""
    if ceiling < 1 or smallest < 1:
        raise ValueError("token counts must be >= 1")
    if ceiling <= smallest or points < 2:
        return [int(ceiling)]
    lo, hi = math.log(smallest), math.log(ceiling)
    grid = {round(math.exp(lo + (hi - lo) * i / (points - 1))) for i in range(points)}
    return sorted({*grid, int(smallest), int(ceiling)})
