"""Learning-rate schedules for continued pretraining: re-warm, then cosine / linear / constant / WSD.

The schedule is a pure function of the step, so resuming needs nothing but the step number: no
scheduler object whose hidden state could drift from the checkpoint.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_fraction: float, warmup_steps_min: int = 0) -> int:
    """Re-warm length: a fraction of the run, at least ``warmup_steps_min``, never the whole run."""
    n = max(int(round(total_steps * warmup_fraction)), warmup_steps_min)
    return min(n, max(total_steps - 1, 0))


def lr_factor(
    step: int,
    total_steps: int,
    warmup: int,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based: the update that makes step+1).

    Warmup is linear from 1/(warmup+1) to 1 so the first update is never zero. After warmup:
    cosine and linear go from 1 to ``min_lr_ratio`` at the last step; ``constant`` stays at 1;
    ``wsd`` (warmup-stable-decay) stays at 1 and decays linearly over the final ``decay_fraction``.
    """
    if total_steps <= 0:
        return 1.0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(total_steps - 1 - warmup, 1)
    if schedule == "wsd":
        decay = max(int(round(total_steps * decay_fraction)), 1)
        start = total_steps - decay
        if step < start:
            return 1.0
        progress = min((step - start + 1) / decay, 1.0)
        return 1.0 - (1.0 - min_lr_ratio) * progress
    progress = min(max((step - warmup) / span, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
