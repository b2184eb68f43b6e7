"""The per-worker training loop: the function Ray Train runs on every worker (``train_loop``).

It takes one plain dict (``spec``, built by ``train.stage``) so the same function runs under
Ray Train's ``TorchTrainer``, under ``torchrun``/``torch.multiprocessing`` (tests), or in one process
with no process group at all. Nothing here imports pydantic or the run config.

Model loading without N copies in CPU memory: every rank builds the model on the ``meta`` device
(no memory), applies FSDP2 sharding, and allocates only its own shards (``to_empty``). Rank 0 alone
loads the full pretrained weights and ``set_model_state_dict(..., broadcast_from_rank0=True)``
scatters each tensor to the ranks that own it. For DDP every rank needs the full model anyway: rank 0
loads it and DDP broadcasts it at construction.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dapt.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from dapt.train.flops import flops_per_token, mfu, peak_flops
from dapt.train.monitor import IGNORE, bits_per_byte
from dapt.train.schedule import lr_factor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FSDP_MODES = ("zero2", "zero3", "hybrid")


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook (tests of crash recovery)."""


# ----------------------------------------------------------------------------------------------------
# distributed setup
# ----------------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _ensure_process_group(use_gpu: bool) -> None:
    """Ray Train has set up the group already; under torchrun/mp the env vars say to; else: 1 process."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    dist.init_process_group("nccl" if use_gpu else "gloo")


def _device(use_gpu: bool, under_ray: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    if under_ray:
        import ray.train.torch

        return ray.train.torch.get_device()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(dev)
    return dev


def _local_world_size(under_ray: bool) -> int:
    if under_ray:
        import ray.train

        return ray.train.get_context().get_local_world_size()
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def _all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------


def load_model_config(spec: dict[str, Any]):
    from transformers import AutoConfig, PretrainedConfig

    if spec.get("model_path"):
        return AutoConfig.from_pretrained(spec["model_path"])
    mc = dict(spec["model_config"])
    return PretrainedConfig.from_dict(mc) if "model_type" not in mc else AutoConfig.for_model(**mc)


def reinit_rotary(model: torch.nn.Module, device: torch.device) -> None:
    """Recompute rotary ``inv_freq`` buffers: they are non-persistent (not in any state dict), so a model
    built on the meta device and ``to_empty``-ed has garbage in them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for m in model.modules():
        if hasattr(m, "inv_freq") and hasattr(m, "rope_type") and hasattr(m, "config"):
            if m.rope_type == "default" and hasattr(m, "compute_default_rope_parameters"):
                fn = m.compute_default_rope_parameters
            elif m.rope_type in ROPE_INIT_FUNCTIONS:
                fn = ROPE_INIT_FUNCTIONS[m.rope_type]
            else:  # older transformers: rope_init_fn on the module
                fn = m.rope_init_fn
            inv_freq, scaling = fn(m.config)  # computed on CPU, then moved
            m.inv_freq = inv_freq.to(device)
            if hasattr(m, "original_inv_freq"):
                m.original_inv_freq = inv_freq.clone().to(device)
            m.attention_scaling = scaling


def _full_state_dict_rank0(spec: dict[str, Any], config) -> dict[str, torch.Tensor]:
    """The pretrained weights (fp32, CPU), materialised on rank 0 only."""
    from transformers import AutoModelForCausalLM

    if spec.get("model_path"):
        m = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    else:
        torch.manual_seed(int(spec.get("init_seed", 0)))
        m = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return m.state_dict()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (HF causal LMs keep them in ``model.layers`` or similar)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def build_model(spec: dict[str, Any], device: torch.device, under_ray: bool = False) -> torch.nn.Module:
    """Build, shard and load the model as ``spec['sharding']`` says (see the module docstring)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM

    rank, world = _world()
    config = load_model_config(spec)
    mode = spec["sharding"] if world > 1 else "single"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec.get("activation_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False

    if mode in FSDP_MODES:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        if mode == "hybrid":
            shard = int(spec.get("hybrid_shard_size") or _local_world_size(under_ray))
            mesh = init_device_mesh(
                device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard")
            )
        else:
            mesh = init_device_mesh(device.type, (world,))
        kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": mode != "zero2"}
        dtype = DTYPES[spec["precision"]]
        if dtype != torch.float32:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if spec.get("cpu_offload") and device.type == "cuda":
            kw["offload_policy"] = CPUOffloadPolicy()
        for block in decoder_layers(model):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        model.to_empty(device="cpu" if kw.get("offload_policy") else device)
        reinit_rotary(model, device)
        full = _full_state_dict_rank0(spec, config) if rank == 0 else {}
        set_model_state_dict(
            model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        del full
        return model

    # single process or DDP: the full model on every rank.
    if rank == 0:
        model.to_empty(device=device)
        model.load_state_dict(_full_state_dict_rank0(spec, config), strict=False, assign=False)
    else:
        model.to_empty(device=device)  # DDP overwrites it with rank 0's weights at construction
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    reinit_rotary(model, device)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, this rank's local) parameter element counts."""
    total = local = 0
    for p in unwrap(model).parameters():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return total, local


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------


class BlockStream:
    """The packed blocks as an endless, deterministic stream: epoch 0 in file order (the mix stage
    already shuffled globally), later epochs in a permutation seeded by (seed, epoch).

    Position ``p`` in the stream is a pure function of the step, so resuming needs only the step.
    """

    def __init__(self, path: str, seed: int):
        self.blocks = np.load(path, mmap_mode="r")
        self.n = int(self.blocks.shape[0])
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, p: int) -> int:
        epoch, i = divmod(p, self.n)
        if epoch == 0:
            return i
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][i])

    def get(self, start: int, count: int) -> torch.Tensor:
        rows = [np.asarray(self.blocks[self.index(p)], dtype=np.int64) for p in range(start, start + count)]
        return torch.from_numpy(np.stack(rows))


def micro_batch_start(step: int, accum_i: int, rank: int, world: int, accum: int, mb: int) -> int:
    """Stream position of the first block of (step, micro-step, rank).

    A step consumes ``world * accum * mb`` consecutive blocks; micro-step ``a`` of rank ``r`` takes
    slot ``a * world + r``. Any (world, accum) with the same product sees the same blocks per step,
    which is what makes a 2-worker run match a 1-worker run with twice the accumulation.
    """
    return (step * world * accum + accum_i * world + rank) * mb


# ----------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------


def _autocast(spec: dict[str, Any], device: torch.device, sharded: bool):
    dtype = DTYPES[spec["precision"]]
    if dtype == torch.float32 or sharded:  # FSDP2 casts through its MixedPrecisionPolicy instead
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits = model(input_ids=x).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction=reduction
    )


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


@torch.no_grad()
def evaluate_windows(
    model: torch.nn.Module, windows: dict[str, np.ndarray], spec: dict[str, Any], device: torch.device
) -> dict[str, float | None]:
    """Loss and bits-per-byte on the monitor windows of both kinds. Collective: windows are split over
    ranks and padded so every rank runs the same number of forwards (FSDP needs that)."""
    rank, world = _world()
    sharded = isinstance(model, torch.nn.Module) and spec["sharding"] in FSDP_MODES and world > 1
    mb = int(spec["micro_batch_size"])
    was_training = model.training
    model.eval()
    out: dict[str, float | None] = {}
    for kind in ("domain", "general"):
        xs, ys = windows[f"{kind}_inputs"], windows[f"{kind}_targets"]
        n_bytes = int(windows[f"{kind}_bytes"])
        mine = list(range(rank, len(xs), world))
        per_rank = -(-len(xs) // world)
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
            with _autocast(spec, device, sharded):
                nll = _loss(model, x, y, reduction="sum")
            acc[0] += float(nll)
            acc[1] += int((y != IGNORE).sum())
        acc = _all_reduce(acc.to(device) if device.type == "cuda" else acc).cpu()
        nll_sum, ntok = float(acc[0]), int(acc[1])
        out[f"{kind}_loss"] = nll_sum / ntok if ntok else None
        out[f"{kind}_bpb"] = bits_per_byte(nll_sum, n_bytes)
    if was_training:
        model.train()
    return out


class _Writers:
    """Rank-0 JSONL + TensorBoard writers that survive resumption: rows after the resumed step are
    dropped (they belong to the attempt that crashed) and TensorBoard purges them too."""

    def __init__(self, log_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.metrics = log_dir / "metrics.jsonl"
        self.monitor = log_dir / "monitor.jsonl"
        self.tb = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        for f in (self.metrics, self.monitor):
            keep = []
            if f.exists() and resume_step > 0:
                for line in f.read_text().splitlines():
                    if line.strip() and json.loads(line)["step"] <= resume_step:
                        keep.append(line)
            f.write_text("".join(x + "\n" for x in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(log_dir / "tb"), purge_step=resume_step if resume_step > 0 else None)
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            self.tb = None

    def write(self, kind: str, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.metrics if kind == "metrics" else self.monitor, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            prefix = "train" if kind == "metrics" else "monitor"
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and v is not None:
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _progress(enabled: bool, total: int, initial: int, under_ray: bool):
    if not enabled:
        return None
    try:
        if under_ray:
            # Ray's tqdm forwards the bar to the driver; it has no ``initial``, so advance it instead.
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            bar = ray_tqdm(total=total, desc="train", unit="step")
            if initial:
                bar.update(initial)
            return bar
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step")
    except ImportError:
        return None


def train_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Train as ``spec`` says; resume from the newest matching checkpoint; export at the end.

    Writes (rank 0) ``metrics.jsonl``, ``monitor.jsonl``, ``tb/`` and ``summary.json`` under
    ``spec['log_dir']`` and the HF export to ``spec['export_dir']``. Returns the summary.
    """
    t_start = time.perf_counter()
    under_ray = bool(spec.get("under_ray"))
    use_gpu = bool(spec.get("use_gpu")) and torch.cuda.is_available()
    _ensure_process_group(use_gpu)
    rank, world = _world()
    device = _device(use_gpu, under_ray)
    if device.type == "cpu" and spec.get("cpu_threads"):
        torch.set_num_threads(int(spec["cpu_threads"]))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = int(spec.get("seed", 0))
    torch.manual_seed(seed + rank)

    model = build_model(spec, device, under_ray)
    sharded = spec["sharding"] in FSDP_MODES and world > 1
    n_total, n_local = count_params(model)
    cfg = unwrap(model).config
    emb = unwrap(model).get_input_embeddings().weight.shape
    f_token = flops_per_token(
        n_total, cfg.num_hidden_layers, cfg.hidden_size, int(spec["seq_len"]), n_embedding=emb[0] * emb[1]
    )
    peak = peak_flops(
        torch.cuda.get_device_name(device) if device.type == "cuda" else None, spec["precision"]
    )

    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() or "bias" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(spec["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(spec["lr"]),
        betas=(float(spec["beta1"]), float(spec["beta2"])),
        eps=float(spec["eps"]),
        foreach=device.type == "cuda",
    )
    scaler = None
    if spec["precision"] == "fp16":
        if sharded:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device=device.type)
        else:
            scaler = torch.amp.GradScaler(device.type)

    ckpt_root = Path(spec["checkpoint_dir"])
    log_dir = Path(spec["log_dir"])
    fingerprint = spec.get("fingerprint", "")
    trainer_state: dict[str, Any] = {"step": 0, "tokens": 0, "base_general_bpb": None, "base": None}
    existing = list_checkpoints(ckpt_root, fingerprint)
    resumed_from = None
    if existing:
        trainer_state = load_checkpoint(existing[-1][1], model, optimizer)
        if scaler is not None and trainer_state.get("scaler"):
            scaler.load_state_dict(trainer_state["scaler"])
        resumed_from = trainer_state["step"]
    start_step = int(trainer_state["step"])

    stream = BlockStream(spec["data_path"], seed)
    mb, accum, seq_len = int(spec["micro_batch_size"]), int(spec["grad_accum"]), int(spec["seq_len"])
    total_steps = int(spec["steps"])
    tokens_per_step = world * accum * mb * seq_len
    writers = _Writers(log_dir, start_step, rank == 0)
    windows = None
    if spec.get("monitor_path") and Path(spec["monitor_path"]).exists():
        windows = dict(np.load(spec["monitor_path"]))

    def monitor(step: int) -> dict[str, Any] | None:
        if windows is None:
            return None
        res = evaluate_windows(model, windows, spec, device)
        row = {"step": step, "tokens": step * tokens_per_step, **res}
        writers.write("monitor", row)
        return row

    if start_step == 0 and windows is not None:
        base = monitor(0)
        trainer_state["base"] = base
        trainer_state["base_general_bpb"] = base["general_bpb"] if base else None

    pbar = _progress(rank == 0 and bool(spec.get("progress", True)), total_steps, start_step, under_ray)
    fail_at = spec.get("fail_at_step")
    fail_marker = Path(spec["fail_marker"]) if spec.get("fail_marker") else None
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
        if fail_at is not None and step == int(fail_at) and rank == world - 1:
            if fail_marker is None or not fail_marker.exists():
                if fail_marker is not None:
                    fail_marker.write_text("failed once\n")
                raise InjectedFailure(f"injected failure at step {step} on rank {rank}")
        t0 = time.perf_counter()
        lr = float(spec["lr"]) * lr_factor(
            step,
            total_steps,
            int(spec["warmup_steps"]),
            spec["schedule"],
            float(spec["min_lr_ratio"]),
            float(spec["decay_fraction"]),
        )
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss_acc = torch.zeros((), dtype=torch.float64)
        for a in range(accum):
            last = a == accum - 1
            start = micro_batch_start(step, a, rank, world, accum, mb)
            block = stream.get(start, mb).to(device, non_blocking=True)
            x, y = block[:, :-1], block[:, 1:]
            # Skip gradient communication on all but the last micro-batch where that costs no memory:
            # DDP (no_sync) and zero2 (blocks stay unsharded anyway). zero3/hybrid reduce-scatter every
            # micro-batch so that no rank ever holds the full unsharded gradients.
            sync_ctx = nullcontext()
            if world > 1 and not last:
                if sharded and spec["sharding"] == "zero2":
                    unwrap(model).set_requires_gradient_sync(False)
                elif hasattr(model, "no_sync"):
                    sync_ctx = model.no_sync()
            elif sharded:
                unwrap(model).set_requires_gradient_sync(True)
            with sync_ctx:
                with _autocast(spec, device, sharded):
                    loss = _loss(model, x, y) / accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_acc += loss.detach().double().cpu()
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip = float(spec["grad_clip"]) or float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), clip)
        if hasattr(gnorm, "full_tensor"):
            gnorm = gnorm.full_tensor()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_avg = (
            float(_all_reduce(loss_acc.to(device) if device.type == "cuda" else loss_acc).cpu()) / world
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        step += 1
        losses.append(loss_avg)
        train_time += dt
        window_time += dt
        window_tokens += tokens_per_step
        if pbar is not None:
            pbar.update(1)
        if step % int(spec["log_every"]) == 0 or step == total_steps:
            tps = window_tokens / window_time if window_time else 0.0
            row = {
                "step": step,
                "tokens": step * tokens_per_step,
                "loss": loss_avg,
                "lr": lr,
                "grad_norm": float(gnorm),
                "tokens_per_s": tps,
                "mfu": mfu(tps, f_token, peak, world),
                "memory_bytes": _peak_memory(device),
                "elapsed_s": time.perf_counter() - t_start,
            }
            if scaler is not None:
                row["loss_scale"] = float(scaler.get_scale())
            writers.write("metrics", row)
            window_tokens, window_time = 0, 0.0
        if windows is not None and (step % int(spec["monitor_every"]) == 0 or step == total_steps):
            last_monitor = monitor(step)
            reg = spec.get("max_general_regression")
            base_g = trainer_state.get("base_general_bpb")
            if reg and base_g and last_monitor and last_monitor["general_bpb"] is not None:
                if last_monitor["general_bpb"] > base_g * (1 + float(reg)):
                    early_stopped = True
        at_end = (step == total_steps or early_stopped) and spec.get("final_checkpoint", True)
        if step % int(spec["checkpoint_every"]) == 0 or at_end:
            state = {
                "fingerprint": fingerprint,
                "tokens": step * tokens_per_step,
                "base_general_bpb": trainer_state.get("base_general_bpb"),
                "base": trainer_state.get("base"),
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, state, int(spec["keep_checkpoints"]))
        if early_stopped:
            break
    if pbar is not None:
        pbar.close()
    if windows is not None and last_monitor is None:
        last_monitor = monitor(step)  # resumed after the last step's monitor: recompute for the summary

    peak_mem = torch.tensor([_peak_memory(device)], dtype=torch.float64)
    if dist.is_initialized():
        peak_mem = peak_mem.to(device)
        dist.all_reduce(peak_mem, op=dist.ReduceOp.MAX)
    peak_bytes = int(peak_mem.cpu()[0])
    local_counts: list[Any] = [n_local] * world
    if dist.is_initialized():
        dist.all_gather_object(local_counts, n_local)
    if spec.get("export_dir"):
        export(model, spec, Path(spec["export_dir"]))
    trained_tokens = (step - start_step) * tokens_per_step
    tps = trained_tokens / train_time if train_time else None
    summary = {
        "steps": step,
        "tokens": step * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "resumed_from_step": resumed_from,
        "steps_this_attempt": step - start_step,
        "tokens_per_s": tps,
        "tokens_per_s_per_worker": tps / world if tps else None,
        "mfu": mfu(tps or 0.0, f_token, peak, world),
        "flops_per_token": f_token,
        "peak_flops_per_device": peak,
        "peak_memory_bytes": peak_bytes,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_workers": world,
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


# ----------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------


def export(model: torch.nn.Module, spec: dict[str, Any], out: Path) -> None:
    """Consolidate the (possibly sharded) model into an HF folder on rank 0. Collective.

    The full state dict is gathered to rank 0's CPU (``full_state_dict=True, cpu_offload=True``) and
    assigned into a meta-device model, so rank 0 holds one copy of the weights, not two.
    """
    import shutil

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    rank, world = _world()
    if world > 1:
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    if rank == 0:
        dtype = DTYPES.get(spec.get("export_dtype", "fp32"), torch.float32)
        config = unwrap(model).config
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(config, dtype=dtype)
        m.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
        if getattr(config, "tie_word_embeddings", False):
            m.tie_weights()
        reinit_rotary(m, torch.device("cpu"))
        missing = [n for n, p in m.named_parameters() if p.is_meta]
        if missing:
            raise RuntimeError(f"export: parameters missing from the gathered state dict: {missing[:5]}")
        m.config.use_cache = True
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        m.save_pretrained(out, safe_serialization=True)
        gen = None
        if spec.get("model_path"):
            try:
                gen = GenerationConfig.from_pretrained(spec["model_path"])
            except OSError:
                gen = None
        (gen or GenerationConfig.from_model_config(m.config)).save_pretrained(out)
        if spec.get("tokenizer_path"):
            AutoTokenizer.from_pretrained(spec["tokenizer_path"]).save_pretrained(out)
    del sd
    if dist.is_initialized():
        dist.barrier()
