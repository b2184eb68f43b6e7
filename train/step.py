"""One optimizer step (gradient accumulation, clipping, loss scaling) and the monitor's forward passes."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dapt.train.batches import StepBatches
from dapt.train.loss import chunked_head, objective_loss
from dapt.train.monitor import IGNORE, bits_per_byte
from dapt.train.schedule import lr_factor
from dapt.train.setup import DTYPES, all_reduce, is_sharded, unwrap, world
from dapt.train.spec import TrainSpec


def autocast(spec: TrainSpec, device: torch.device):
    """Autocast for unsharded mixed precision; FSDP2 casts through its MixedPrecisionPolicy instead."""
    dtype = DTYPES[spec.precision]
    if dtype == torch.float32 or is_sharded(spec):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def learning_rate(spec: TrainSpec, step: int) -> float:
    return float(spec.lr) * lr_factor(
        step,
        int(spec.steps),
        int(spec.warmup_steps),
        spec.schedule,
        float(spec.min_lr_ratio),
        float(spec.decay_fraction),
    )


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Mean loss over the step's micro-batches and ranks."""
    lr: float
    grad_norm: float
    """Global gradient norm before clipping."""


def _gradient_sync(model: torch.nn.Module, spec: TrainSpec, last: bool) -> Any:
    """Skip gradient communication on all but the last micro-batch where that costs no memory: DDP
    (``no_sync``) and zero2 (blocks stay unsharded anyway). zero3/hybrid reduce-scatter every
    micro-batch so that no rank ever holds the full unsharded gradients."""
    _, n = world()
    sharded = is_sharded(spec)
    if n > 1 and not last:
        if sharded and spec.sharding == "zero2":
            unwrap(model).set_requires_gradient_sync(False)
        elif hasattr(model, "no_sync"):
            return model.no_sync()
    elif sharded:
        unwrap(model).set_requires_gradient_sync(True)
    return nullcontext()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    batches: StepBatches,
    spec: TrainSpec,
    step: int,
    device: torch.device,
) -> StepResult:
    """Optimizer step ``step`` (0-based): ``grad_accum`` micro-batches of ``micro_batch_size`` blocks per
    rank, then unscale, clip, step, zero. Collective.

    Nothing in the accumulation loop waits for the device: the loss accumulates in a device tensor and
    is reduced over ranks once, after the optimizer step, with the gradient norm read at the same time.
    """
    _, n = world()
    accum = int(spec.grad_accum)
    lr = learning_rate(spec, step)
    for g in optimizer.param_groups:
        g["lr"] = lr
    head = chunked_head(unwrap(model))
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)
    for a, mb in enumerate(batches.get(step)):
        with _gradient_sync(model, spec, last=a == accum - 1):
            with autocast(spec, device):
                loss = objective_loss(spec.objective, model, mb.x, mb.y, mb.position_ids, head) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_acc += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    clip = float(spec.grad_clip) or float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), clip)
    if hasattr(gnorm, "full_tensor"):
        gnorm = gnorm.full_tensor()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_avg = float(all_reduce(loss_acc, device)) / n  # the step's one wait for the device
    return StepResult(loss=loss_avg, lr=lr, grad_norm=float(gnorm))


@torch.no_grad()
def evaluate_windows(
    model: torch.nn.Module, windows: dict[str, np.ndarray], spec: TrainSpec, device: torch.device
) -> dict[str, float | None]:
    """Loss and bits-per-byte on the monitor windows of both kinds, under the run's objective (masked
    positions for mlm, the span targets for span). Collective: windows are split over ranks and padded
    so every rank runs the same number of forwards (FSDP needs that)."""
    rank, n = world()
    mb = int(spec.micro_batch_size)
    head = chunked_head(unwrap(model))  # installed for causal LMs only (train.setup)
    was_training = model.training
    model.eval()
    out: dict[str, float | None] = {}
    for kind in ("domain", "general"):
        xs, ys = windows[f"{kind}_inputs"], windows[f"{kind}_targets"]
        n_bytes = int(windows[f"{kind}_bytes"])
        mine = list(range(rank, len(xs), n))
        per_rank = -(-len(xs) // n)
        n_batches = -(-per_rank // mb) if per_rank else 0
        acc = torch.zeros(2, dtype=torch.float64)
        for b in range(n_batches):
            idx = mine[b * mb : (b + 1) * mb]
            if idx:
                x = torch.from_numpy(xs[idx]).to(device)
                y = torch.from_numpy(ys[idx]).to(device)
            else:  # padding forward: all targets ignored
                x = torch.zeros((1, xs.shape[1]), dtype=torch.long, device=device)
                y = torch.full_like(x, IGNORE)
            with autocast(spec, device):
                nll = objective_loss(spec.objective, model, x, y, head=head, reduction="sum")
            acc[0] += float(nll)
            acc[1] += int((y != IGNORE).sum())
        acc = all_reduce(acc, device)
        nll_sum, ntok = float(acc[0]), int(acc[1])
        out[f"{kind}_loss"] = nll_sum / ntok if ntok else None
        out[f"{kind}_bpb"] = bits_per_byte(nll_sum, n_bytes)
    if was_training:
        model.train()
    return out
