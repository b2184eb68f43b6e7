"""The mixing solver: token budgets per source from a target domain share, a total and epoch caps.

Pure arithmetic (no I/O), so it is cheap to test exhaustively and the planner can call it too.

Rules (docs/mixing.md has the worked examples):

- The total is a whole number of blocks of ``block_len = seq_len + 1`` tokens, so the packed blocks
  hold exactly the budgets and the realised share is the target to within one token (``1 / total``).
- Domain budget ``round(f * total)``, general budget the rest. Inside each side the budget is split by
  source weight; a source that would exceed ``max_epochs`` passes is capped and its excess goes to the
  other sources on the same side, in proportion to their weights (water-filling). Only when the whole
  side is capped is the request infeasible.
- Infeasible requests raise ``ConfigError`` naming the binding side and the largest feasible values
  (fraction at this total, total at this fraction), unless ``allow_shortfall``: then the total shrinks
  to the largest feasible one *at the target fraction*; the fraction is never traded away silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dapt.pipeline.errors import ConfigError


@dataclass(frozen=True)
class SourceSupply:
    """What one source offers the mix: training tokens (EOS included) after held-out removal."""

    name: str
    kind: str  # "domain" | "general"
    tokens: int
    docs: int
    weight: float = 1.0
    max_epochs: float = 4.0

    @property
    def cap(self) -> int:
        """Most tokens this source may contribute (``max_epochs`` passes, whole tokens)."""
        return int(math.floor(self.max_epochs * self.tokens + 1e-9))


@dataclass
class MixPlan:
    """The solver's answer. ``budgets`` sum to ``total_tokens = n_blocks * block_len`` exactly."""

    target_fraction: float
    block_len: int
    n_blocks: int
    total_tokens: int
    domain_tokens: int
    general_tokens: int
    requested_total_tokens: int
    shortfall: bool
    budgets: dict[str, int] = field(default_factory=dict)
    ideal: dict[str, float] = field(default_factory=dict)
    """Each source's weight-proportional share before epoch caps (for the target-vs-achieved table)."""
    notes: list[str] = field(default_factory=list)

    @property
    def planned_fraction(self) -> float:
        return self.domain_tokens / self.total_tokens if self.total_tokens else 0.0


def water_fill(amount: int, weights: dict[str, float], caps: dict[str, int]) -> dict[str, int]:
    """Split ``amount`` integer tokens by ``weights`` with per-key ``caps``; excess flows to uncapped keys.

    Raises ValueError if ``amount`` exceeds the sum of caps. Integer rounding is largest-remainder, so
    the result sums to ``amount`` exactly and never exceeds a cap.
    """
    if amount > sum(caps.values()):
        raise ValueError(f"amount {amount} exceeds total capacity {sum(caps.values())}")
    alloc: dict[str, float] = {k: 0.0 for k in weights}
    active = [k for k in weights if caps[k] > 0]
    remaining = float(amount)
    while active and remaining > 0:
        wsum = sum(weights[k] for k in active)
        share = {k: remaining * weights[k] / wsum for k in active}
        over = [k for k in active if share[k] >= caps[k]]
        if not over:
            alloc.update(share)
            break
        for k in over:
            alloc[k] = float(caps[k])
            remaining -= caps[k]
            active.remove(k)
    out = {k: min(int(math.floor(v)), caps[k]) for k, v in alloc.items()}
    short = amount - sum(out.values())
    # Largest fractional parts first; ties broken by name so the result is deterministic.
    order = sorted(weights, key=lambda k: (-(alloc[k] - math.floor(alloc[k])), k))
    i = 0
    while short > 0:
        k = order[i % len(order)]
        if out[k] < caps[k]:
            out[k] += 1
            short -= 1
        i += 1
        if i > 10 * len(order) + amount:  # cannot happen when amount <= sum(caps)
            raise AssertionError("water_fill rounding did not converge")
    return out


def _fmt(n: float) -> str:
    return f"{int(n):,}"


def _epochs_of(side: list[SourceSupply]) -> str:
    caps = sorted({s.max_epochs for s in side})
    return f"max_epochs {caps[0]:g}" if len(caps) == 1 else "per-source max_epochs"


def solve_mix(
    supplies: list[SourceSupply],
    fraction: float,
    block_len: int,
    total_tokens: int | None = None,
    domain_epochs: float | None = None,
    allow_shortfall: bool = False,
) -> MixPlan:
    """Token budget per source for ``fraction`` domain tokens. See the module docstring for the rules."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"mix.domain_fraction must be in (0, 1], got {fraction}")
    dom = [s for s in supplies if s.kind == "domain"]
    gen = [s for s in supplies if s.kind == "general"]
    t_dom = sum(s.tokens for s in dom)
    t_gen = sum(s.tokens for s in gen)
    cap_dom = sum(s.cap for s in dom)
    cap_gen = sum(s.cap for s in gen) if fraction < 1 else 0
    if t_dom == 0:
        raise ConfigError(
            "mix: the domain sources have no training tokens left after held-out splits and filtering"
        )
    if fraction < 1 and t_gen == 0:
        raise ConfigError(
            f"mix: domain_fraction {fraction} needs general data, but the general sources have no training "
            "tokens (add a source with kind: general, or set mix.domain_fraction: 1.0)"
        )

    # Requested total, before rounding to blocks.
    if total_tokens is not None:
        requested = float(total_tokens)
        n_blocks = max(1, round(requested / block_len))
        how = f"total_tokens {_fmt(total_tokens)}"
    elif domain_epochs is not None:
        requested = domain_epochs * t_dom / fraction
        n_blocks = max(1, math.floor(requested / block_len))
        how = f"domain_epochs {domain_epochs:g}"
    else:
        requested = t_dom / fraction if fraction == 1 else min(t_dom / fraction, t_gen / (1 - fraction))
        n_blocks = max(1, math.floor(requested / block_len))
        how = "the default total (every source at most once)"

    def split(nb: int) -> tuple[int, int]:
        total = nb * block_len
        d = round(fraction * total)
        return d, total - d

    def feasible(nb: int) -> bool:
        d, g = split(nb)
        return d <= cap_dom and g <= cap_gen

    notes: list[str] = []
    shortfall = False
    if not feasible(n_blocks):
        n_total = n_blocks * block_len
        # Largest whole-block total at the target fraction.
        limit = cap_dom / fraction if fraction == 1 else min(cap_dom / fraction, cap_gen / (1 - fraction))
        nb_max = int(limit // block_len)
        while nb_max > 0 and not feasible(nb_max):
            nb_max -= 1
        d, g = split(n_blocks)
        f_hi = min(1.0, cap_dom / n_total)
        f_lo = max(0.0, 1 - cap_gen / n_total) if fraction < 1 else 1.0
        if d > cap_dom:
            side = (
                f"domain_fraction {fraction:g} with {how} needs {_fmt(d)} domain tokens, but the domain data "
                f"gives at most {_fmt(cap_dom)} ({_fmt(t_dom)} tokens x {_epochs_of(dom)})"
            )
            at_total = (
                f"the largest feasible domain_fraction at {_fmt(n_total)} tokens is {f_hi:.4f}"
                if f_lo <= f_hi
                else f"no domain_fraction is feasible at {_fmt(n_total)} tokens (the domain data covers at "
                f"most {f_hi:.4f} of it, the general data at most {1 - f_lo:.4f})"
            )
        else:
            side = (
                f"domain_fraction {fraction:g} with {how} needs {_fmt(g)} general tokens, but the general "
                f"data gives at most {_fmt(cap_gen)} ({_fmt(t_gen)} tokens x {_epochs_of(gen)})"
            )
            at_total = (
                f"the largest feasible replay (general share) at {_fmt(n_total)} tokens is {1 - f_lo:.4f}, "
                f"i.e. the smallest feasible domain_fraction is {f_lo:.4f}"
                if f_lo <= f_hi
                else f"no domain_fraction is feasible at {_fmt(n_total)} tokens (the domain data covers at "
                f"most {f_hi:.4f} of it, the general data at most {1 - f_lo:.4f})"
            )

        extra = ""
        if domain_epochs is not None and d <= cap_dom and fraction < 1:
            e_max = cap_gen * fraction / ((1 - fraction) * t_dom)
            extra = f"; the largest feasible domain_epochs at {fraction:g} is {e_max:.4f}"
        msg = (
            f"mix: infeasible: {side}; {at_total}; the largest feasible total_tokens at domain_fraction "
            f"{fraction:g} is {_fmt(nb_max * block_len)}{extra} (raise mix.max_epochs, or set "
            "mix.allow_shortfall: true to accept the smaller total)"
        )
        if not allow_shortfall or nb_max == 0:
            raise ConfigError(msg)
        notes.append(f"shortfall: {msg}")
        shortfall = True
        n_blocks = nb_max

    d_budget, g_budget = split(n_blocks)
    budgets: dict[str, int] = {}
    ideal: dict[str, float] = {}
    for side, amount in ((dom, d_budget), (gen, g_budget)):
        if not side:
            continue
        weights = {s.name: s.weight for s in side}
        caps = {s.name: s.cap for s in side}
        budgets.update(water_fill(amount, weights, caps))
        wsum = sum(weights.values())
        ideal.update({k: amount * w / wsum for k, w in weights.items()})
        for s in side:
            if budgets[s.name] < ideal[s.name] - 1 and budgets[s.name] == s.cap:
                notes.append(
                    f"{s.name}: capped at max_epochs ({_fmt(s.cap)} tokens instead of {_fmt(ideal[s.name])}); "
                    "the rest went to the other sources of its side"
                )
    total = n_blocks * block_len
    return MixPlan(
        target_fraction=fraction,
        block_len=block_len,
        n_blocks=n_blocks,
        total_tokens=total,
        domain_tokens=d_budget,
        general_tokens=g_budget,
        requested_total_tokens=int(round(requested)),
        shortfall=shortfall,
        budgets=budgets,
        ideal=ideal,
        notes=notes,
    )
