"""Model-state memory: bytes of parameters, gradients and optimizer states per GPU, and the shapes they
come from. Standard library only (see ``train/plan/memory.py``, which composes these with activations
and buffers into the peak estimate and re-exports every name here).

Two bookkeeping conventions for the model states (parameters, gradients, optimizer states) exist,
and they split the same 16 bytes per parameter of mixed-precision Adam differently:

* ``layout="deepspeed"`` (the ZeRO paper, Rajbhandari et al. 2020): 16-bit parameters (2 bytes) and
  gradients (2 bytes) on the GPU, and the optimizer holds an fp32 master copy, momentum and variance
  (K = 12 bytes). ZeRO-1 partitions the K bytes, ZeRO-2 also the gradients, ZeRO-3 also the parameters.
* ``layout="torch"`` (what dapt trains with: FSDP2 ``fully_shard`` with a ``MixedPrecisionPolicy``, or
  DDP under autocast): the parameter *is* the fp32 master (4 bytes), its gradient is fp32 (4 bytes),
  AdamW keeps momentum and variance (8 bytes) plus a 4-byte ``step`` tensor per parameter tensor. The
  16-bit copies exist only while a block is unsharded (FSDP2) or inside autocast (DDP), so they are
  counted as working buffers, not model states. FSDP2 has no ZeRO-1 (``zero2`` is
  ``reshard_after_forward=False``: the same sharded states as ``zero3`` but every block stays unsharded
  from its forward to its backward).

Sizes are bytes (ints where they are exact). "GB" means 10^9 bytes, as in the seed lecture and the
ZeRO paper; device tables and the CLI also show GiB (2^30) because that is what drivers report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

GB = 10**9
GIB = 2**30

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-pure")
"""``bf16``/``fp16``: mixed precision with fp32 master weights; ``bf16-pure``: everything in bf16."""
SHARDINGS = ("ddp", "zero1", "zero2", "zero3", "hybrid")
OPTIMIZERS = ("adamw", "sgd")
LAYOUTS = ("torch", "deepspeed")

# How many bytes per parameter of each model state, by (layout, precision, optimizer).
_SGD_MOMENTUM = 1  # one momentum buffer; plain SGD without momentum has no state


def state_bytes_per_param(
    precision: str, optimizer: str = "adamw", layout: str = "torch"
) -> dict[str, float]:
    """Bytes per parameter of the parameters, gradients and optimizer states in the given convention.

    The deepspeed/ZeRO mixed-precision AdamW split is 2 + 2 + 12 (the paper's K = 12); fp32 AdamW is
    4 + 4 + 8 in both conventions; pure bf16 keeps the AdamW moments in bf16 (2 + 2 + 4).
    """
    check_choice(precision, PRECISIONS, "precision")
    check_choice(optimizer, OPTIMIZERS, "optimizer")
    check_choice(layout, LAYOUTS, "layout")
    moments = 2 if optimizer == "adamw" else _SGD_MOMENTUM
    if precision == "fp32":
        return {"params": 4, "grads": 4, "optimizer": 4 * moments}
    if precision == "bf16-pure":
        return {"params": 2, "grads": 2, "optimizer": 2 * moments}
    if layout == "deepspeed":  # 16-bit params/grads, fp32 master + moments in the optimizer
        return {"params": 2, "grads": 2, "optimizer": 4 + 4 * moments}
    return {"params": 4, "grads": 4, "optimizer": 4 * moments}  # fp32 master is the parameter itself


def compute_dtype_bytes(precision: str) -> int:
    """Bytes per element of activations and of the unsharded working copy of the weights."""
    return 4 if precision == "fp32" else 2


# --------------------------------------------------------------------------------------------------
# The seed lecture's rules of thumb, as functions (tests reproduce its figures with them).


def storage_bytes(params: float, dtype: str = "fp32") -> float:
    """Bytes to store ``params`` weights in ``dtype`` (1B params: 4 GB fp32, 2 GB bf16, 1 GB int8)."""
    check_choice(dtype, tuple(DTYPE_BYTES), "dtype")
    return params * DTYPE_BYTES[dtype]


def rule_of_thumb_training_bytes(params: float, weight_bytes: float = 4, extra_bytes: float = 20) -> float:
    """The seed's "4 bytes per parameter + 20 extra bytes per parameter" rule for training in fp32.

    The 20 extra bytes stand for gradients, Adam states and activations/temporaries; it is a rule of
    thumb (1B -> 24 GB, 175B -> 4,200 GB, 500B -> 12,000 GB), not what ``estimate`` computes.
    """
    return params * (weight_bytes + extra_bytes)


def zero_paper_model_states(params: float, stage: int, world_size: int, k: float = 12) -> float:
    """Per-GPU model-state bytes of mixed-precision Adam by the ZeRO paper's formula (its Figure 1).

    Stage 0 (DDP): (2 + 2 + K)Ψ; stage 1: (2 + 2)Ψ + KΨ/N; stage 2: 2Ψ + (2 + K)Ψ/N; stage 3: (2 + 2 + K)Ψ/N.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {stage}")
    n = world_size
    if stage == 0:
        return (2 + 2 + k) * params
    if stage == 1:
        return (2 + 2) * params + k * params / n
    if stage == 2:
        return 2 * params + (2 + k) * params / n
    return (2 + 2 + k) * params / n


# --------------------------------------------------------------------------------------------------
# Model shape


def llama_param_shapes(
    layers: int,
    hidden: int,
    heads: int,
    vocab: int,
    intermediate: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    tied: bool = False,
) -> list[tuple[int, ...]]:
    """The parameter shapes of a Llama-style decoder (no biases, RMSNorm, SwiGLU), in module order.

    The order matches ``LlamaForCausalLM.parameters()``: embedding, then per layer q, k, v, o, gate,
    up, down, the two norms, then the final norm and (untied) LM head.
    """
    f = intermediate if intermediate is not None else default_intermediate(hidden)
    kvh = kv_heads or heads
    hd = head_dim or hidden // heads
    shapes: list[tuple[int, ...]] = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [
            (heads * hd, hidden),
            (kvh * hd, hidden),
            (kvh * hd, hidden),
            (hidden, heads * hd),
            (f, hidden),
            (f, hidden),
            (hidden, f),
            (hidden,),
            (hidden,),
        ]
    shapes.append((hidden,))
    if not tied:
        shapes.append((vocab, hidden))
    return shapes


def default_intermediate(hidden: int) -> int:
    """Llama's SwiGLU width: 8/3 of hidden, rounded up to a multiple of 256."""
    return 256 * math.ceil(8 * hidden / 3 / 256)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def assumed_shape(params: float) -> dict[str, int]:
    """A plausible Llama shape for a bare parameter count, for the activation estimate only.

    Uses N ≈ 12·L·h² with the common aspect ratio L = h/128 (7B: h 4096, L 32; 1B: h 2048, L 16),
    h rounded to a multiple of 128 and heads of 128 dims. The plan labels it as assumed.
    """
    h = max(128, 128 * round((params * 128 / 12) ** (1 / 3) / 128))
    layers = max(1, round(params / (12 * h * h)))
    return {"layers": layers, "hidden": h, "heads": max(1, h // 128), "kv_heads": max(1, h // 128)}


# --------------------------------------------------------------------------------------------------
# Sharding arithmetic


def shard_numel(shape: Sequence[int], world_size: int, rank: int) -> tuple[int, int]:
    """(local, padded) element counts of ``rank``'s FSDP2 shard of a parameter of ``shape``.

    FSDP2 shards dim 0 with ``torch.chunk`` semantics: chunks of ceil(d0/N) rows, the last ones
    shorter or empty; each rank's storage is padded to the full chunk so all-gathers are even.
    A 0-dim tensor is replicated.
    """
    if not shape:
        return 1, 1
    d0, rest = shape[0], numel(shape[1:])
    c = -(-d0 // world_size)
    local = max(0, min(c, d0 - rank * c))
    return local * rest, c * rest


def _group(sharding: str, world_size: int, shard_group: int | None) -> int:
    """How many ranks share one copy of the sharded states."""
    if sharding == "hybrid":
        return max(1, min(world_size, shard_group or world_size))
    return world_size


def model_state_bytes(
    params: float | None = None,
    *,
    param_shapes: Iterable[Sequence[int]] | None = None,
    precision: str = "bf16",
    sharding: str = "zero3",
    world_size: int = 1,
    optimizer: str = "adamw",
    layout: str = "torch",
    shard_group: int | None = None,
    rank: int = 0,
    cpu_offload: bool = False,
) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer states, on the device and offloaded.

    With ``param_shapes`` the count is exact for FSDP2 (``zero2``/``zero3``/``hybrid`` in the torch
    layout): each rank's local shard by ``torch.chunk`` semantics, the AdamW ``step`` tensor (4 bytes
    per parameter tensor), and ``params_padded`` for the padded storage FSDP2 really allocates. With only
    ``params`` it is the closed form (Ψ/N). ``rank`` selects whose shard (rank 0 holds the largest).
    """
    check_choice(sharding, SHARDINGS, "sharding")
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    per = state_bytes_per_param(precision, optimizer, layout)
    shapes = [tuple(s) for s in param_shapes] if param_shapes is not None else None
    if shapes is None and params is None:
        raise ValueError("give params or param_shapes")
    total = sum(numel(s) for s in shapes) if shapes is not None else float(params)
    n_tensors = len(shapes) if shapes is not None else 0
    step_bytes = 4 if (layout == "torch" and optimizer == "adamw") else 0
    g = _group(sharding, world_size, shard_group)

    # Which states are partitioned over the group.
    shard_p = sharding in ("zero3", "hybrid") or (layout == "torch" and sharding == "zero2")
    shard_g = sharding in ("zero2", "zero3", "hybrid")
    shard_o = sharding != "ddp"

    if shapes is not None and layout == "torch" and sharding in ("zero2", "zero3", "hybrid"):
        r = rank % g
        local = padded = 0
        for s in shapes:
            lo, pa = shard_numel(s, g, r)
            local += lo
            padded += pa
        part_local = local
    else:
        part_local = total / g
        padded = None

    def amount(shard: bool) -> float:
        return part_local if shard else total

    p = amount(shard_p) * per["params"]
    gr = amount(shard_g) * per["grads"]
    o = amount(shard_o) * per["optimizer"] + step_bytes * (
        n_tensors / g if (shard_o and sharding == "zero1") else n_tensors
    )
    out = {
        "params": ceil_bytes(p),
        "grads": ceil_bytes(gr),
        "optimizer": ceil_bytes(o),
        "params_padded": ceil_bytes(padded * per["params"])
        if padded is not None and shard_p
        else ceil_bytes(p),
        "offloaded": {"params": 0, "grads": 0, "optimizer": 0},
        "shard_group": g,
    }
    if cpu_offload:
        if sharding == "ddp":
            raise ValueError("cpu_offload needs a sharded strategy (zero1, zero2, zero3 or hybrid)")
        # What is partitioned lives on the host (FSDP2 CPUOffloadPolicy: all sharded states; ZeRO-Offload:
        # the optimizer, and the gradients from stage 2 on); the optimizer step runs on the CPU.
        moved = {"params": shard_p, "grads": shard_g, "optimizer": shard_o}
        for key, is_sharded in moved.items():
            if is_sharded:
                out["offloaded"][key] = out[key]
                out[key] = 0
        if shard_p:
            out["offloaded"]["params_padded"] = out["params_padded"]
            out["params_padded"] = 0
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    out["total_padded"] = out["params_padded"] + out["grads"] + out["optimizer"]
    return out


def ceil_bytes(x: float) -> int:
    return int(math.ceil(x - 1e-9)) if x > 0 else 0


def check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
