"""Learning-rate schedules for continued pretraining: re-warm, then cosine / linear / constant / WSD.

The schedule is a pure function of the step, so resuming needs nothing but the step number: no
scheduler object whose hidden state could drift from the checkpoint.

Changing the budget (``train.max_steps``, ``train.tokens``) or a schedule knob of a run that has
checkpoints continues from the last checkpoint with the *new* schedule evaluated at the resumed step,
as torchtitan does (``train.resume`` decides, the manifest's ``resumed`` says what happened). The
updates before that step keep the old schedule, and the re-warm is not redone (a continuation past the
old warmup keeps the old warmup length). So with ``constant`` the continuation is exact; with ``wsd`` it
is exact from the branch point, the checkpoint the loop always writes at :func:`decay_start` (the train
stage resumes from it rather than from a checkpoint already in the old decay, and redoes the decay at
the new end); with ``cosine`` or ``linear`` a longer run decays more slowly, so the learning rate jumps
from the old schedule's value to the new one's at the resumed step and the result differs from a run
planned that long from the start (the manifest records ``exact: false`` and both rates).
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_fraction: float, warmup_steps_min: int = 0) -> int:
    """Re-warm length: a fraction of the run, at least ``warmup_steps_min``, never the whole run."""
    n = max(int(round(total_steps * warmup_fraction)), warmup_steps_min)
    return min(n, max(total_steps - 1, 0))


def decay_start(total_steps: int, decay_fraction: float) -> int:
    """``wsd``: the first update of the decay phase; every update before it (after warmup) is at the
    peak, so a checkpoint taken at this step is the branch point from which any longer run, or another
    decay, continues exactly (the loop always writes one there)."""
    return total_steps - max(int(round(total_steps * decay_fraction)), 1)


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
        start = decay_start(total_steps, decay_fraction)
        decay = total_steps - start
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


PLAN_KEYS = ("lr", "steps", "warmup_steps", "schedule", "min_lr_ratio", "decay_fraction")
"""What the learning rate of every update depends on (a run's *plan*; checkpoints record theirs)."""


def lr_at(plan: dict, step: int) -> float:
    """The learning rate of update ``step`` under ``plan`` (a dict with :data:`PLAN_KEYS`)."""
    return float(plan["lr"]) * lr_factor(
        step,
        int(plan["steps"]),
        int(plan["warmup_steps"]),
        str(plan["schedule"]),
        float(plan["min_lr_ratio"]),
        float(plan["decay_fraction"]),
    )
