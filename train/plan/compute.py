"""Compute, time, cost and Chinchilla arithmetic for a training run. Standard library only.

FLOPs follow the PaLM appendix B convention: 6·N per token for the dense matmuls (forward 2N,
backward 4N) plus 12·L·h·s per token for attention scores and their weighted sum (forward and backward,
no causal discount). N counts the parameters that take part in matmuls: the input embedding is a lookup
and is left out unless it is tied to the LM head. Encoders and encoder-decoders bring their own FLOPs
per token (``encoders.flops_per_token``: attention over every key, T5's two lengths and cross-attention).

Chinchilla: three answers to "how many parameters and tokens for this compute", each labelled, because
they disagree: the 20-tokens-per-parameter rule, the Hoffmann et al. (2022) parametric fit as published
(their Approach 3), and the Besiroglu et al. (2024) refit of that same approach to data reconstructed
from the paper, which agrees with Hoffmann's Approaches 1 and 2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PFLOPS_DAY = 1e15 * 86400
DEFAULT_MFU = 0.40
"""Model FLOPs utilisation assumed when none was measured: well-tuned FSDP training of 1-70B models
on A100/H100 reports 35-55%; 40% is a middle, stated, assumption."""


def training_flops(
    params: float,
    tokens: float,
    layers: int | None = None,
    hidden: int | None = None,
    seq_len: int | None = None,
    embedding_params: float = 0,
) -> dict[str, float]:
    """Training FLOPs: ``dense`` = 6·(N − embedding)·D, ``attention`` = 12·L·h·s·D, and their ``total``.

    The attention term needs ``layers``, ``hidden`` and ``seq_len``; without them it is 0 (and the plan
    says so). ``embedding_params`` is the input embedding's size when it is not tied to the LM head.
    """
    if params <= 0 or tokens < 0:
        raise ValueError("params must be > 0 and tokens >= 0")
    dense = 6.0 * (params - embedding_params) * tokens
    attention = 12.0 * layers * hidden * seq_len * tokens if layers and hidden and seq_len else 0.0
    return {"dense": dense, "attention": attention, "total": dense + attention}


def pflops_days(flops: float) -> float:
    """Petaflop/s-days: the FLOPs of one petaflop/s sustained for a day (8.64e19)."""
    return flops / PFLOPS_DAY


def gpu_hours(flops: float, peak_flops_per_gpu: float, mfu: float = DEFAULT_MFU) -> float:
    """GPU-hours to do ``flops`` at ``mfu`` of each GPU's peak."""
    if not 0 < mfu <= 1:
        raise ValueError("mfu must be in (0, 1]")
    if peak_flops_per_gpu <= 0:
        raise ValueError("peak_flops_per_gpu must be > 0")
    return flops / (peak_flops_per_gpu * mfu) / 3600.0


def mfu_from_throughput(tokens_per_second: float, flops_per_token: float, peak_flops_total: float) -> float:
    """Measured MFU: achieved model FLOP/s over the peak of all GPUs used."""
    return tokens_per_second * flops_per_token / peak_flops_total


# --------------------------------------------------------------------------------------------------
# Chinchilla


@dataclass(frozen=True)
class ScalingFit:
    """L(N, D) = E + A/N^alpha + B/D^beta, with a label saying where the numbers come from."""

    name: str
    label: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def optimal(self, compute: float) -> tuple[float, float]:
        """Compute-optimal (N, D) under C = 6·N·D (Hoffmann et al. eq. 4):
        G = (αA/(βB))^(1/(α+β)), N = G·(C/6)^(β/(α+β)), D = (C/6)/N."""
        if compute <= 0:
            raise ValueError("compute must be > 0")
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        n = g * (compute / 6.0) ** (self.beta / (self.alpha + self.beta))
        return n, compute / 6.0 / n


HOFFMANN_2022 = ScalingFit(
    "hoffmann2022",
    "Hoffmann et al. 2022, Approach 3 as published (E 1.69, A 406.4, B 410.7, α 0.34, β 0.28)",
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
)
BESIROGLU_2024 = ScalingFit(
    "besiroglu2024",
    "Besiroglu et al. 2024 refit (E 1.8172, A 482.01, B 2085.43, α 0.3478, β 0.3658)",
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
)
FITS = {f.name: f for f in (HOFFMANN_2022, BESIROGLU_2024)}
TOKENS_PER_PARAM = 20.0


def optimal_20_tokens(compute: float) -> tuple[float, float]:
    """The rule of thumb: D = 20·N with C = 6·N·D, so N = sqrt(C/120)."""
    if compute <= 0:
        raise ValueError("compute must be > 0")
    n = math.sqrt(compute / (6.0 * TOKENS_PER_PARAM))
    return n, TOKENS_PER_PARAM * n


def chinchilla(params: float, tokens: float, pretraining_tokens: float | None = None) -> dict:
    """Is a run of ``params`` on ``tokens`` compute-optimal? Three labelled answers and a verdict each.

    ``compute`` here is 6·N·D (the convention the fits were made in). Each method gives the optimal
    (N, D) for that compute, its tokens-per-parameter ratio, and whether the run is ``under-trained``
    (fewer tokens per parameter than optimal by more than 25%), ``over-trained`` (more, by 25%) or
    ``near-optimal``. Over-training a smaller model is often deliberate (cheaper inference); for
    continued pretraining the base model's own pretraining dominates, hence ``continued_pretraining``.
    """
    compute = 6.0 * params * tokens
    ratio = tokens / params
    methods = []

    def verdict(opt_ratio: float) -> str:
        if ratio < opt_ratio / 1.25:
            return "under-trained"
        if ratio > opt_ratio * 1.25:
            return "over-trained"
        return "near-optimal"

    n20, d20 = optimal_20_tokens(compute) if compute > 0 else (0.0, 0.0)
    methods.append(
        {
            "method": "tokens20",
            "label": "20 tokens per parameter (Chinchilla rule of thumb)",
            "optimal_params": n20,
            "optimal_tokens": d20,
            "optimal_tokens_per_param": TOKENS_PER_PARAM,
            "verdict": verdict(TOKENS_PER_PARAM),
        }
    )
    for fit in FITS.values():
        entry: dict = {"method": fit.name, "label": fit.label}
        if compute > 0:
            n, d = fit.optimal(compute)
            entry.update(
                optimal_params=n,
                optimal_tokens=d,
                optimal_tokens_per_param=d / n,
                verdict=verdict(d / n),
                predicted_loss=fit.loss(params, tokens),
                optimal_loss=fit.loss(n, d),
            )
        methods.append(entry)
    out: dict = {"compute_6nd": compute, "tokens_per_param": ratio, "methods": methods}
    if pretraining_tokens:
        out["continued_pretraining"] = {
            "base_pretraining_tokens": pretraining_tokens,
            "fraction_of_pretraining": tokens / pretraining_tokens,
            "base_tokens_per_param": pretraining_tokens / params,
        }
    return out


def compute_plan(
    params: float,
    tokens: float,
    *,
    layers: int | None = None,
    hidden: int | None = None,
    seq_len: int | None = None,
    embedding_params: float = 0,
    gpus: int = 1,
    peak_flops_per_gpu: float | None = None,
    mfu: float = DEFAULT_MFU,
    mfu_source: str = "assumed",
    price_per_gpu_hour: float | None = None,
    pretraining_tokens: float | None = None,
    per_token: dict[str, float] | None = None,
) -> dict:
    """FLOPs, petaflop/s-days, GPU-hours, wall-clock on ``gpus`` GPUs, cost and the Chinchilla view.

    ``per_token`` (``dense``, ``attention`` FLOPs per training token) replaces the decoder-only
    :func:`training_flops` for architectures that count differently."""
    if per_token is not None:
        fl = {k: per_token[k] * tokens for k in ("dense", "attention")}
        fl["total"] = fl["dense"] + fl["attention"]
    else:
        fl = training_flops(params, tokens, layers, hidden, seq_len, embedding_params)
    out: dict = {
        "tokens": tokens,
        "flops": fl,
        "flops_per_token": fl["total"] / tokens if tokens else 0.0,
        "pflops_days": pflops_days(fl["total"]),
        "mfu": mfu,
        "mfu_source": mfu_source,
        "gpus": gpus,
    }
    if peak_flops_per_gpu:
        gh = gpu_hours(fl["total"], peak_flops_per_gpu, mfu)
        out.update(peak_flops_per_gpu=peak_flops_per_gpu, gpu_hours=gh, wall_clock_hours=gh / max(1, gpus))
        if price_per_gpu_hour is not None:
            out.update(price_per_gpu_hour=price_per_gpu_hour, cost=gh * price_per_gpu_hour)
    if tokens > 0:
        out["chinchilla"] = chinchilla(params, tokens, pretraining_tokens)
    return out


def fit_table() -> list[dict]:
    """The fits' constants, for the docs and the report."""
    return [asdict(f) for f in FITS.values()]
