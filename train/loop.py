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

from dapt.pipeline import quiet
from dapt.pipeline.progress import StepProgress
from dapt.train.batches import StepBatches
from dapt.train.checkpoint import resume, save_checkpoint
from dapt.train.data import BlockStream
from dapt.train.export import export
from dapt.train.flops import flops_per_token, mfu, peak_flops
from dapt.train.logs import Writers, peak_memory, progress_bar
from dapt.train.ranks import (
    PlacementError,
    attempt_record,
    describe_self,
    gather,
    hybrid_shard_size,
    layout,
    node_key,
    write_attempt,
    write_error,
)
from dapt.train.resume import delete_folder
from dapt.train.schedule import decay_start
from dapt.train.setup import (
    build_mesh,
    build_model,
    build_optimizer,
    build_scaler,
    count_params,
    device_for,
    ensure_process_group,
    sharding_mode,
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


def spec_token_roles(spec: TrainSpec, vocab_size: int) -> Any:
    """The mask / sentinel token ids the objective needs, from the run's tokenizer; None for clm. The
    driver calls it once before any worker starts (train.prelaunch), each worker once at start."""
    if spec.objective == "clm":
        return None
    from transformers import AutoTokenizer

    from dapt.train.objectives import token_roles

    if not spec.tokenizer_path:
        raise ValueError(f"model.objective: {spec.objective} needs the run's tokenizer (its special tokens)")
    tok = AutoTokenizer.from_pretrained(spec.tokenizer_path)
    return token_roles(tok, spec.objective, vocab_size, whole_word=bool(spec.mlm_whole_word))


def _maybe_pause(spec: TrainSpec, step: int, rank: int) -> None:
    """Test hook: the first attempt that reaches ``pause_at_step`` holds every rank there (up to
    ``pause_s``) after rank 0 wrote ``pause_marker``, so a test can kill a node at a known point; a
    restarted attempt finds the marker and does not pause again."""
    if spec.pause_at_step is None or step != int(spec.pause_at_step) or not spec.pause_marker:
        return
    marker = Path(spec.pause_marker)
    first = not marker.exists()  # every rank looks before the barrier, so all agree
    if dist.is_initialized():
        dist.barrier()
    if not first:
        return
    if rank == 0:
        marker.write_text(f"paused at step {step}\n")
    deadline = time.monotonic() + float(spec.pause_s)
    while time.monotonic() < deadline:
        time.sleep(0.2)


def _placement(spec: TrainSpec, device: torch.device, rank: int, n: int) -> tuple[str, Any, list, dict]:
    """Gather where every rank runs, decide the hybrid shard size from it, build the device mesh.

    Returns (mode, mesh, ranks, layout). A placement that cannot give node-local HSDP shard groups
    raises PlacementError; rank 0 first records it for the driver (``train.ranks``)."""
    mode = sharding_mode(spec, n)
    ranks = gather(describe_self(spec.under_ray))
    shard = None
    if mode == "hybrid":
        try:
            shard = hybrid_shard_size(ranks, spec.hybrid_shard_size)
        except PlacementError as e:
            if rank == 0:
                write_error(spec.log_dir, str(e), ranks)
            if dist.is_initialized():
                dist.barrier()
            raise
    mesh = build_mesh(device, mode, n, shard)
    return mode, mesh, ranks, layout(mode, n, mesh)


def train_loop(spec: TrainSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Train as ``spec`` says; resume from the newest matching checkpoint; export at the end.

    Writes (rank 0) ``metrics.jsonl``, ``monitor.jsonl``, ``tb/`` and ``summary.json`` under
    ``spec.log_dir`` and the HF export to ``spec.export_dir``. Returns the summary. A plain mapping is
    accepted and checked field by field (:meth:`TrainSpec.from_dict`).
    """
    spec = as_spec(spec)
    quiet.install()  # before transformers (and through it torchao) is imported in this process
    t_start = time.perf_counter()
    use_gpu = bool(spec.use_gpu) and torch.cuda.is_available()
    ensure_process_group(use_gpu)
    rank, n = world()
    device = device_for(use_gpu, spec.under_ray)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # all_gather_object over nccl uses the current device
    if device.type == "cpu" and spec.cpu_threads:
        torch.set_num_threads(int(spec.cpu_threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(int(spec.seed) + rank)

    try:
        mode, mesh, placement, mesh_layout = _placement(spec, device, rank, n)
    except PlacementError as e:
        if not spec.under_ray:
            raise
        # Under Ray Train a raised error is a worker failure, retried max_failures times with the same
        # placement; return instead (every rank decided the same) and let the driver raise it: one
        # line for the user, not one more per rank through Ray's log forwarding.
        return {"placement_error": str(e)}
    model = build_model(spec, device, mesh)
    n_total, n_local = count_params(model)
    cfg = unwrap(model).config
    emb = unwrap(model).get_input_embeddings().weight.shape

    def flops_token(context: float) -> float:
        return flops_per_token(
            n_total,
            cfg.num_hidden_layers,
            cfg.hidden_size,
            context,
            n_embedding=emb[0] * emb[1],
            tied_output=bool(getattr(cfg, "tie_word_embeddings", False)),
        )

    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None, spec.precision)
    optimizer = build_optimizer(model, spec, device)
    scaler = build_scaler(spec, device)

    ckpt_root, log_dir = Path(spec.checkpoint_dir), Path(spec.log_dir)
    trainer_state, resumed_from = resume(ckpt_root, spec.checkpoint_key, model, optimizer, scaler)
    start_step = int(trainer_state["step"])
    if rank == 0:
        write_attempt(log_dir, attempt_record(placement, mesh_layout, mode, start_step))
        nodes = len({node_key(r) for r in placement})
        shape = " x ".join(f"{k} {v}" for k, v in mesh_layout["shape"].items())
        print(f"[dapt.train] {n} rank(s) on {nodes} node(s), mesh {shape}", file=sys.stderr, flush=True)
    history = _schedule_history(spec, trainer_state, start_step)
    branch_step = _branch_step(spec)
    if rank == 0 and resumed_from is not None:
        note = "" if len(history) < 2 or history[-1]["from_step"] != start_step else ", with the new schedule"
        print(f"[dapt.train] resuming from checkpoint step {start_step}{note}", file=sys.stderr, flush=True)

    stream = BlockStream(spec.data_path, int(spec.seed))
    batches = StepBatches(
        stream,
        int(spec.micro_batch_size),
        int(spec.grad_accum),
        rank,
        n,
        device,
        document_masking=spec.attention == "document",
        objective=spec.objective,
        seed=int(spec.seed),
        roles=spec_token_roles(spec, int(cfg.vocab_size)),
        objective_options={
            "mlm_probability": float(spec.mlm_probability),
            "mlm_whole_word": bool(spec.mlm_whole_word),
            "span_noise_density": float(spec.span_noise_density),
            "span_mean_length": float(spec.span_mean_length),
        },
    )
    total_steps = int(spec.steps)
    tokens_per_step = n * int(spec.grad_accum) * int(spec.micro_batch_size) * int(spec.seq_len)
    writers = Writers(log_dir, start_step, rank == 0, tracking=spec.tracking, tensorboard=spec.tensorboard)
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

    # An early stop is part of the run's state: a restarted or rerun train does not train past it
    # (unless the threshold, a CONTINUES_RUN knob, was raised or removed since).
    stop = trainer_state.get("early_stop")
    early_stopped = bool(stop) and _regressed(spec, trainer_state, stop)
    if early_stopped and rank == 0:
        print(
            f"[dapt.train] the run stopped early at step {start_step} (general bits-per-byte "
            f"{stop['general_bpb']:.4f} vs base {trainer_state.get('base_general_bpb'):.4f}): not training further",
            file=sys.stderr,
            flush=True,
        )

    pbar = progress_bar(rank == 0 and spec.progress, total_steps, start_step, spec.under_ray)
    record = StepProgress(
        spec.progress_run_dir if rank == 0 else None, "train", "train", total_steps, "steps", start_step
    )
    model.train()
    train_time = 0.0
    window_tokens, window_time = 0, 0.0
    last_monitor: dict[str, Any] | None = None
    stored_monitor = trainer_state.get("last_monitor")
    discarded: list[str] | None = None
    step = start_step
    losses: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    while step < total_steps and not early_stopped:
        _maybe_fail(spec, step, rank, n)
        _maybe_pause(spec, step, rank)
        t0 = time.perf_counter()
        # Dropout's random numbers as a function of (seed, step, rank): a resumed run draws what an
        # uninterrupted one drew at the same step, with no generator state in the checkpoint.
        torch.manual_seed(int(np.random.SeedSequence([int(spec.seed), step, rank]).generate_state(1)[0]))
        res = train_step(model, optimizer, scaler, batches, spec, step, device)
        dt = time.perf_counter() - t0
        step += 1
        losses.append(res.loss)
        train_time += dt
        window_time += dt
        window_tokens += tokens_per_step
        record.update(1)
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
                "mfu": mfu(tps, flops_token(batches.mean_context(int(spec.seq_len))), peak, n),
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
            if early_stopped:
                stop = last_monitor
        at_end = (step == total_steps or early_stopped) and spec.final_checkpoint
        if step % int(spec.checkpoint_every) == 0 or at_end or step == branch_step:
            state = {
                "state_key": spec.checkpoint_key,
                "fingerprint": spec.fingerprint,
                "tokens": step * tokens_per_step,
                "schedule_history": history,
                "branch": step == branch_step,
                "base_general_bpb": trainer_state.get("base_general_bpb"),
                "base": trainer_state.get("base"),
                "last_monitor": last_monitor if last_monitor and last_monitor["step"] == step else None,
                "early_stop": stop if early_stopped else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "meta": spec.checkpoint_meta,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, state, int(spec.keep_checkpoints))
            if discarded is None:
                discarded = _discard_set_aside(spec, rank, step)
    batches.close()
    if pbar is not None:
        pbar.close()
    if windows is not None and last_monitor is None:
        if stored_monitor and stored_monitor.get("step") == step:  # resumed at a step already monitored
            last_monitor = stored_monitor
        else:
            last_monitor = monitor(step)

    peak_mem = torch.tensor([peak_memory(device)], dtype=torch.float64)
    local_counts: list[Any] = [n_local] * n
    if dist.is_initialized():
        peak_mem = peak_mem.to(device)
        dist.all_reduce(peak_mem, op=dist.ReduceOp.MAX)
        dist.all_gather_object(local_counts, n_local)
    if spec.export_dir:
        export(model, spec, Path(spec.export_dir))
    tps = (step - start_step) * tokens_per_step / train_time if train_time else None
    context = batches.mean_context(int(spec.seq_len))
    f_token = flops_token(context)
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
        "attention_context": context,
        "peak_flops_per_device": peak,
        "peak_memory_bytes": int(peak_mem.cpu()[0]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_workers": n,
        "params_total": n_total,
        "params_local_per_rank": local_counts,
        "early_stopped": early_stopped,
        "early_stop": stop if early_stopped else None,
        "schedule_history": history,
        "removed_set_aside": discarded or [],
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


def _schedule_history(
    spec: TrainSpec, trainer_state: dict[str, Any], start_step: int
) -> list[dict[str, Any]]:
    """The plans this run's updates were made under: the resumed checkpoint's history, plus this
    spec's plan from ``start_step`` when it differs (a continued run: see ``train.resume``)."""
    plan = spec.lr_plan()
    history = [dict(h) for h in trainer_state.get("schedule_history") or []]
    if not history or {k: history[-1].get(k) for k in plan} != plan:
        history.append({"from_step": start_step, **plan})
    return history


def _branch_step(spec: TrainSpec) -> int | None:
    """``wsd``: the step where the decay starts, always checkpointed (the branch point of longer runs)."""
    if spec.schedule != "wsd":
        return None
    start = decay_start(int(spec.steps), float(spec.decay_fraction))
    return start if 0 < start < int(spec.steps) else None


def _discard_set_aside(spec: TrainSpec, rank: int, step: int) -> list[str]:
    """After this run's first checkpoint: delete the folders the driver set aside (``train.resume``)."""
    removed = []
    if rank == 0:
        for p in map(Path, spec.discard_after_checkpoint):
            if p.is_dir():
                delete_folder(p)
                removed.append(str(p))
                print(
                    f"[dapt.train] removed set-aside checkpoints {p} (this run has its own at step {step})",
                    file=sys.stderr,
                    flush=True,
                )
    return removed


def _regressed(spec: TrainSpec, trainer_state: dict[str, Any], row: dict[str, Any] | None) -> bool:
    """Early stop: general bits-per-byte above the base model's by more than the allowed fraction."""
    reg = spec.max_general_regression
    base_g = trainer_state.get("base_general_bpb")
    if not (reg and base_g and row and row["general_bpb"] is not None):
        return False
    return row["general_bpb"] > base_g * (1 + float(reg))
