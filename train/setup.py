"""Worker setup: the process group, the device, and the model built, sharded and loaded.

Model loading without N copies in CPU memory: every rank builds the model on the ``meta`` device
(no memory), applies FSDP2 sharding, and allocates only its own shards (``to_empty``). Rank 0 alone
loads the full pretrained weights and ``set_model_state_dict(..., broadcast_from_rank0=True)``
scatters each tensor to the ranks that own it. For DDP every rank needs the full model anyway: rank 0
loads it and DDP broadcasts it at construction.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from dapt.train.spec import TrainSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FSDP_MODES = ("zero2", "zero3", "hybrid")


# ----------------------------------------------------------------------------------------------------
# process group and device
# ----------------------------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def ensure_process_group(use_gpu: bool) -> None:
    """Ray Train has set up the group already; under torchrun/mp the env vars say to; else: 1 process."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    dist.init_process_group("nccl" if use_gpu else "gloo")


def device_for(use_gpu: bool, under_ray: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    if under_ray:
        import ray.train.torch

        return ray.train.torch.get_device()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(dev)
    return dev


def all_reduce(t: torch.Tensor, device: torch.device, op: Any = None) -> torch.Tensor:
    """Sum (or ``op``) over ranks, on the device the backend needs (nccl: CUDA); returned on CPU."""
    if not dist.is_initialized():
        return t
    t = t.to(device) if device.type == "cuda" else t
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu()


def is_sharded(spec: TrainSpec) -> bool:
    """FSDP2 in use: a sharding mode that shards, and more than one rank to shard over."""
    return spec.sharding in FSDP_MODES and world()[1] > 1


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------


def load_model_config(spec: TrainSpec):
    """The ``transformers`` config of the model the spec trains (no weights loaded)."""
    from transformers import AutoConfig, PretrainedConfig

    if spec.model_path:
        return AutoConfig.from_pretrained(spec.model_path, revision=spec.model_revision)
    mc = dict(spec.model_config or {})
    return PretrainedConfig.from_dict(mc) if "model_type" not in mc else AutoConfig.for_model(**mc)


def reinit_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Recompute every non-persistent buffer (no state dict carries them, so a model built on the meta
    device and ``to_empty``-ed has garbage there): BERT's ``position_ids`` and ``token_type_ids``
    through the model's own ``_init_weights`` for the modules that hold such buffers (weights it may
    touch there are loaded afterwards), rotary ``inv_freq`` through :func:`reinit_rotary`."""
    init = getattr(model, "_init_weights", None)
    for m in model.modules():
        if (
            init is not None
            and getattr(m, "_non_persistent_buffers_set", None)
            and not hasattr(m, "inv_freq")
        ):
            init(m)
    reinit_rotary(model, device)


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


def _full_state_dict_rank0(spec: TrainSpec, config) -> dict[str, torch.Tensor]:
    """The pretrained weights (fp32, CPU), materialised on rank 0 only."""
    from dapt.train.objectives import auto_class

    auto = auto_class(spec.objective)
    if spec.model_path:
        m = auto.from_pretrained(spec.model_path, revision=spec.model_revision, dtype=torch.float32)
    else:
        torch.manual_seed(int(spec.init_seed))
        m = auto.from_config(config, dtype=torch.float32)
    return m.state_dict()


_BLOCK_STACKS = (
    ("model.layers",),  # Llama, Mistral, Qwen, ModernBERT, ...
    ("transformer.h",),  # GPT-2
    ("model.decoder.layers",),  # OPT
    ("gpt_neox.layers",),
    ("bert.encoder.layer",),
    ("roberta.encoder.layer",),
    ("encoder.block", "decoder.block"),  # T5: the encoder's blocks, then the decoder's
    ("model.encoder.layers", "model.decoder.layers"),  # BART
)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, FSDP2's wrap units: a decoder's layers, an encoder's layers, or an
    encoder-decoder's encoder blocks followed by its decoder blocks."""

    def find(path: str) -> Any:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj

    for paths in sorted(_BLOCK_STACKS, key=len, reverse=True):  # T5 / BART before their halves
        stacks = [find(p) for p in paths]
        if all(s is not None for s in stacks):
            return [block for s in stacks for block in s]
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def sharding_mode(spec: TrainSpec, n: int) -> str:
    """What the run does with ``n`` ranks: ``single`` (one rank: nothing to shard across) or the
    configured ``train.sharding``."""
    return spec.sharding if n > 1 else "single"


def build_mesh(device: torch.device, mode: str, n: int, shard_size: int | None = None) -> Any:
    """The FSDP2 device mesh: 1-D ``shard`` for zero2/zero3, 2-D (``replicate``, ``shard``) for hybrid
    with ``shard_size`` ranks per shard group (``train.ranks.hybrid_shard_size`` decides it from where
    the ranks run); None for ddp and one rank. Row-major: shard group ``g`` is ranks
    ``[g*S, (g+1)*S)``, which is why the placement check looks at contiguous rank ranges."""
    from torch.distributed.device_mesh import init_device_mesh

    if mode == "hybrid":
        shard = int(shard_size or n)
        return init_device_mesh(device.type, (n // shard, shard), mesh_dim_names=("replicate", "shard"))
    if mode in FSDP_MODES:
        return init_device_mesh(device.type, (n,), mesh_dim_names=("shard",))
    return None


def _fully_shard(model: torch.nn.Module, spec: TrainSpec, device: torch.device, mode: str, mesh: Any) -> dict:
    """FSDP2 ``fully_shard`` per transformer block and on the root; returns the sharding kwargs."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": mode != "zero2"}
    dtype = DTYPES[spec.precision]
    if dtype != torch.float32:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if spec.cpu_offload:
        # On a CPU device there is nothing to offload to: the parameters, gradients and optimizer state
        # already live in host memory, and CPUOffloadPolicy's default pinned memory raises without an
        # accelerator. The train stage refuses that before any worker starts (train.cpu_offload); this
        # guards loop-level callers (a spec asking for GPUs on a worker that has none).
        if device.type != "cuda":
            raise ValueError(f"train.cpu_offload needs CUDA devices; this worker computes on {device.type}")
        kw["offload_policy"] = CPUOffloadPolicy()
    for block in decoder_layers(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return kw


def check_compile_backend(device: torch.device) -> None:
    """``train.compile`` needs inductor's toolchain: a C++ compiler for CPU code, Triton for GPU code.
    Checked up front: without it the failure comes at the first forward, deep in a compile trace."""
    import importlib.util
    import shutil

    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ValueError(
                "train.compile: torch.compile needs Triton on GPUs (pip install triton), or set train.compile: false"
            )
    elif not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise ValueError(
            "train.compile: torch.compile's inductor backend needs a C++ compiler on CPU workers "
            "(none of c++, g++, clang++ is on PATH): install one (apt-get install g++) or set train.compile: false"
        )


def check_float8(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(
            f"train.float8 needs CUDA GPUs with float8 tensor cores; this worker computes on {device.type}"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(
            f"train.float8: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
            "float8 tensor cores (8.9+ needed: L40S, H100, H200); remove train.float8"
        )


def _float8_eligible(module: torch.nn.Module, fqn: str) -> bool:
    """torchao's float8 matmuls need both dimensions divisible by 16; the output projection stays in
    the compute dtype (its logits feed a softmax over the whole vocabulary)."""
    if not isinstance(module, torch.nn.Linear) or fqn.endswith("lm_head"):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_options(model: torch.nn.Module, spec: TrainSpec, device: torch.device) -> None:
    """The training options that change modules, applied before sharding (FSDP2 then wraps the changed
    modules): the chunked loss head, activation checkpointing (every k-th block), float8 linears, and
    ``torch.compile`` per block."""
    from dapt.train.loss import install_chunked_head

    if int(spec.loss_chunk_tokens) > 0 and spec.objective == "clm":
        install_chunked_head(model, int(spec.loss_chunk_tokens))
    if spec.activation_checkpointing:  # transformers' own selective form: blocks 0, k, 2k, ...
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False},
            every_n_layers=int(spec.activation_checkpointing_every),
        )
    if spec.float8:
        check_float8(device)
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        convert_to_float8_training(model, config=Float8LinearConfig(), module_filter_fn=_float8_eligible)
    if spec.compile:
        check_compile_backend(device)
        for block in decoder_layers(model):
            block.compile()


def checkpointed_blocks(n_layers: int, every: int) -> int:
    """How many of ``n_layers`` blocks recompute their activations with ``activation_checkpointing_every``
    (blocks 0, k, 2k, ...: transformers' ``every_n_layers``)."""
    return -(-n_layers // max(1, every))


def build_model(spec: TrainSpec, device: torch.device, mesh: Any = None) -> torch.nn.Module:
    """Build, shard (on ``mesh``, from :func:`build_mesh`) and load the model as ``spec.sharding``
    says (see the module docstring)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from dapt.train.objectives import auto_class

    rank, n = world()
    config = load_model_config(spec)
    mode = sharding_mode(spec, n)
    with torch.device("meta"):
        model = auto_class(spec.objective).from_config(config, dtype=torch.float32)
    model.config.use_cache = False
    apply_options(model, spec, device)

    if mode in FSDP_MODES:
        if mesh is None:
            mesh = build_mesh(device, mode, n)
        kw = _fully_shard(model, spec, device, mode, mesh)
        model.to_empty(device="cpu" if kw.get("offload_policy") else device)
        reinit_buffers(model, device)
        full = _full_state_dict_rank0(spec, config) if rank == 0 else {}
        set_model_state_dict(
            model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        del full
        return model

    # single process or DDP: the full model on every rank.
    model.to_empty(device=device)
    if rank == 0:
        model.load_state_dict(_full_state_dict_rank0(spec, config), strict=False, assign=False)
    # (other ranks: DDP overwrites their empty model with rank 0's weights at construction)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    reinit_buffers(model, device)
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
# optimizer
# ----------------------------------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, spec: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and other 1-d parameters.

    Fused (one kernel for all parameters, on CPU too: measured 1.2 ms against 7.2 ms for the
    per-tensor loop and 4.6 ms for foreach per step of bench/train.py's model) unless fp16's loss
    scaler drives the step: fused AdamW's found-inf path fails on sharded (DTensor) parameters in
    torch 2.13, so fp16 uses foreach."""
    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() or "bias" in name else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(spec.weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(spec.lr),
        betas=(float(spec.beta1), float(spec.beta2)),
        eps=float(spec.eps),
        **({"foreach": True} if spec.precision == "fp16" else {"fused": True}),
    )


def build_scaler(spec: TrainSpec, device: torch.device) -> Any:
    """Dynamic loss scaling for fp16 (sharded: all ranks agree on skipped steps); None otherwise."""
    if spec.precision != "fp16":
        return None
    if is_sharded(spec):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device=device.type)
    return torch.amp.GradScaler(device.type)
