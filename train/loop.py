"""The per-worker training loop: the function Ray Train runs on every worker (``train_loop``).

It takes one :class:`~dapt.train.spec.TrainSpec` (built by ``train.stage``) so the same function runs
under Ray Train's ``TorchTrainer`` (through :func:`ray_worker`), under ``torchrun`` /
``torch.multiprocessing`` (tests), or in one process with no process group at all. Nothing here
imports pydantic or the run config.

The pieces: ``train.setup`` (process group, device, model built and sharded, optimizer),
``train.step`` (one optimizer step with accumulation; the monitor's forward passes),
``train.checkpoint`` (DCP save / resume), ``train.export`` (the HF folder), ``train.logs`` (metrics
rows, progress bar). This module only sequences them: resume, the base monitor, the steps with their
logging / monitoring / checkpoint cadence, early stopping, export, the summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dapt.train.checkpoint import resume, save_checkpoint
from dapt.train.data import BlockStream
from dapt.train.export import export
from dapt.train.flops import flops_per_token, mfu, peak_flops
from dapt.train.logs import Writers, peak_memory, progress_bar
from dapt.train.setup import (
    build_model,
    build_optimizer,
    build_scaler,
    count_params,
    device_for,
    ensure_process_group,
    unwrap,
    world,
)
from dapt.train.spec import TrainSpec, as_spec
from dapt.train.step import evaluate_windows, train_step


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook (tests of crash recovery)."""


def ray_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's ``train_loop_per_worker``: its config carries the spec under ``"spec"``."""
    return train_loop(config["spec"])


def _maybe_fail(spec: TrainSpec, step: int, rank: int, n: int) -> None:
    if spec.fail_at_step is None or step != int(spec.fail_at_step) or rank != n - 1:
        return
    marker = Path(spec.fail_marker) if spec.fail_marker else None
    if marker is None or not marker.exists():
        if marker is not None:
            marker.write_text("failed once\n")
        raise InjectedFailure(f"injected failure at step {step} on rank {rank}")


def train_loop(spec: TrainSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Train as ``spec`` says; resume from the newest matching checkpoint; export at the end.

    Writes (rank 0) ``metrics.jsonl``, ``monitor.jsonl``, ``tb/`` and ``summary.json`` under
    ``spec.log_dir`` and the HF export to ``spec.export_dir``. Returns the summary. A plain mapping is
    accepted and checked field by field (:meth:`TrainSpec.from_dict`).
    """
    spec = as_spec(spec)
    t_start = time.perf_counter()
    use_gpu = bool(spec.use_gpu) and torch.cuda.is_available()
    ensure_process_group(use_gpu)
    rank, n = world()
    device = device_for(use_gpu, spec.under_ray)
    if device.type == "cpu" and spec.cpu_threads:
        torch.set_num_threads(int(spec.cpu_threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(int(spec.seed) + rank)

    model = build_model(spec, device)
    n_total, n_local = count_params(model)
    cfg = unwrap(model).config
    emb = unwrap(model).get_input_embeddings().weight.shape
    f_token = flops_per_token(
        n_total, cfg.num_hidden_layers, cfg.hidden_size, int(spec.seq_len), n_embedding=emb[0] * emb[1]
    )
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None, spec.precision)
    optimizer = build_optimizer(model, spec, device)
    scaler = build_scaler(spec, device)

    ckpt_root, log_dir = Path(spec.checkpoint_dir), Path(spec.log_dir)
    trainer_state, resumed_from = resume(ckpt_root, spec.fingerprint, model, optimizer, scaler)
    start_step = int(trainer_state["step"])

    stream = BlockStream(spec.data_path, int(spec.seed))
    total_steps = int(spec.steps)
    tokens_per_step = n * int(spec.grad_accum) * int(spec.micro_batch_size) * int(spec.seq_len)
    writers = Writers(log_dir, start_step, rank == 0)
    windows = None
    if spec.monitor_path and Path(spec.monitor_path).exists():
        windows = dict(np.load(spec.monitor_path))

    def monitor(step: int) -> dict[str, Any] | None:
        if windows is None:
            return None
        row = {
            "step": step,
            "tokens": step * tokens_per_step,
            **evaluate_windows(model, windows, spec, device),
        }
        writers.write("monitor", row)
        return row

    if start_step == 0 and windows is not None:
        base = monitor(0)
        trainer_state["base"] = base
        trainer_state["base_general_bpb"] = base["general_bpb"] if base else None

    pbar = progress_bar(rank == 0 and spec.progress, total_steps, start_step, spec.under_ray)
    model.train()
    train_time = 0.0
    window_tokens, window_time = 0, 0.0
    early_stopped = False
    last_monitor: dict[str, Any] | None = None
    step = start_step
    losses: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    while step < total_steps:
        _maybe_fail(spec, step, rank, n)
        t0 = time.perf_counter()
        res = train_step(model, optimizer, scaler, stream, spec, step, device)
        dt = time.perf_counter() - t0
        step += 1
        losses.append(res.loss)
        train_time += dt
        window_time += dt
        window_tokens += tokens_per_step
        if pbar is not None:
            pbar.update(1)
        if step % int(spec.log_every) == 0 or step == total_steps:
            tps = window_tokens / window_time if window_time else 0.0
            row = {
                "step": step,
                "tokens": step * tokens_per_step,
                "loss": res.loss,
                "lr": res.lr,
                "grad_norm": res.grad_norm,
                "tokens_per_s": tps,
                "mfu": mfu(tps, f_token, peak, n),
                "memory_bytes": peak_memory(device),
                "elapsed_s": time.perf_counter() - t_start,
            }
            if scaler is not None:
                row["loss_scale"] = float(scaler.get_scale())
            writers.write("metrics", row)
            window_tokens, window_time = 0, 0.0
        if windows is not None and (step % int(spec.monitor_every) == 0 or step == total_steps):
            last_monitor = monitor(step)
            early_stopped = _regressed(spec, trainer_state, last_monitor)
        at_end = (step == total_steps or early_stopped) and spec.final_checkpoint
        if step % int(spec.checkpoint_every) == 0 or at_end:
            state = {
                "fingerprint": spec.fingerprint,
                "tokens": step * tokens_per_step,
                "base_general_bpb": trainer_state.get("base_general_bpb"),
                "base": trainer_state.get("base"),
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, state, int(spec.keep_checkpoints))
        if early_stopped:
            break
    if pbar is not None:
        pbar.close()
    if windows is not None and last_monitor is None:
        last_monitor = monitor(step)  # resumed after the last step's monitor: recompute for the summary

    peak_mem = torch.tensor([peak_memory(device)], dtype=torch.float64)
    local_counts: list[Any] = [n_local] * n
    if dist.is_initialized():
        peak_mem = peak_mem.to(device)
        dist.all_reduce(peak_mem, op=dist.ReduceOp.MAX)
        dist.all_gather_object(local_counts, n_local)
    if spec.export_dir:
        export(model, spec, Path(spec.export_dir))
    tps = (step - start_step) * tokens_per_step / train_time if train_time else None
    summary = {
        "steps": step,
        "tokens": step * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "resumed_from_step": resumed_from,
        "steps_this_attempt": step - start_step,
        "tokens_per_s": tps,
        "tokens_per_s_per_worker": tps / n if tps else None,
        "mfu": mfu(tps or 0.0, f_token, peak, n),
        "flops_per_token": f_token,
        "peak_flops_per_device": peak,
        "peak_memory_bytes": int(peak_mem.cpu()[0]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_workers": n,
        "params_total": n_total,
        "params_local_per_rank": local_counts,
        "early_stopped": early_stopped,
        "base_monitor": trainer_state.get("base"),
        "final_monitor": last_monitor,
        "losses_this_attempt": losses,
        "train_seconds": train_time,
        "loop_seconds": time.perf_counter() - t_start,
    }
    writers.close()
    if rank == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if dist.is_initialized():
        dist.barrier()
    print(f"[dapt.train rank {rank}] done: {step} steps", file=sys.stderr, flush=True)
    return summary


def _regressed(spec: TrainSpec, trainer_state: dict[str, Any], row: dict[str, Any] | None) -> bool:
    """Early stop: general bits-per-byte above the base model's by more than the allowed fraction."""
    reg = spec.max_general_regression
    base_g = trainer_state.get("base_general_bpb")
    if not (reg and base_g and row and row["general_bpb"] is not None):
        return False
    return row["general_bpb"] > base_g * (1 + float(reg))
