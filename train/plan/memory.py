"""GPU memory arithmetic for training a decoder-only transformer: model states, activations, buffers.

Standard library only: ``bench/gpu_check.py`` imports this on a GPU machine that has torch and
transformers but not this project's other dependencies, so the prediction it prints next to
``torch.cuda.max_memory_allocated`` is computed by exactly this code.

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
    _check(precision, PRECISIONS, "precision")
    _check(optimizer, OPTIMIZERS, "optimizer")
    _check(layout, LAYOUTS, "layout")
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
    _check(dtype, tuple(DTYPE_BYTES), "dtype")
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
    _check(sharding, SHARDINGS, "sharding")
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
        "params": _int(p),
        "grads": _int(gr),
        "optimizer": _int(o),
        "params_padded": _int(padded * per["params"]) if padded is not None and shard_p else _int(p),
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


# --------------------------------------------------------------------------------------------------
# Activations


def activation_bytes_per_token_layer(
    hidden: int,
    heads: int,
    intermediate: int,
    kv_heads: int | None = None,
    seq_len: int = 2048,
    act_bytes: int = 2,
    flash_attention: bool = True,
    autocast: bool = False,
) -> float:
    """Bytes one Llama decoder layer keeps for backward, per token (no checkpointing).

    Counted from what autograd saves in the Hugging Face Llama layer, and checked against
    ``torch.autograd.graph.saved_tensors_hooks`` on CPU (tests/test_plan_measure.py):

    * weights in the compute dtype (FSDP2 ``MixedPrecisionPolicy``, pure bf16, or fp32): each RMSNorm
      keeps its fp32 input, its normalised input and its output, (4 + 2a)·h, plus a 4-byte rsqrt;
      attention keeps q, k, v, a·(h + 2·kv), and its output (which is also o_proj's input), a·h;
      SwiGLU keeps gate, silu(gate), up and their product, 4·a·f;
    * ``autocast`` (fp32 weights, 16-bit matmuls, as DDP under ``torch.autocast``): the residual stream
      stays fp32, the norms keep fp32 intermediates, and every linear saves its own 16-bit copy of its
      input: (8 + 3a)·h before attention, (8 + 2a)·h before the MLP.

    Flash attention keeps a fp32 log-sum-exp per head. Eager attention keeps the s×s scores: the
    fp32 softmax, its 16-bit cast and a byte of mask, 4 + a + 1 bytes per score (5 in fp32).
    """
    a = act_bytes
    h, f = hidden, intermediate
    kv = h * (kv_heads or heads) // heads
    if autocast:
        norms = (8 + 3 * a) * h + (8 + 2 * a) * h + 8
    else:
        norms = 2 * (4 + 2 * a) * h + 8
    attn = a * (h + 2 * kv) + a * h
    mlp = 4 * a * f
    if flash_attention:
        scores = 4 * heads
    else:
        scores = (4 + (a if a < 4 else 0) + 1) * heads * seq_len
    return norms + attn + mlp + scores


def activation_bytes(
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int,
    seq_len: int,
    micro_batch: int,
    kv_heads: int | None = None,
    act_bytes: int = 2,
    checkpointing: bool = False,
    flash_attention: bool = True,
    autocast: bool = False,
) -> float:
    """Activation bytes held at the start of the backward pass, per GPU (logits excluded).

    Without checkpointing every layer's saved tensors are alive. With per-block checkpointing
    (what HF ``gradient_checkpointing_enable`` and FSDP's checkpoint wrapper do) each block keeps only
    its input (a·h per token; fp32 under autocast) and one block's full set exists while it is
    recomputed. The final norm keeps (4 + 2a)·h (autocast: (8 + a)·h).
    """
    tokens = seq_len * micro_batch
    per_layer = activation_bytes_per_token_layer(
        hidden, heads, intermediate, kv_heads, seq_len, act_bytes, flash_attention, autocast
    )
    final_norm = ((8 + act_bytes) if autocast else (4 + 2 * act_bytes)) * hidden + 4
    if checkpointing:
        stream = 4 if autocast else act_bytes
        return tokens * (layers * stream * hidden + per_layer + final_norm)
    return tokens * (layers * per_layer + final_norm)


def logits_bytes(vocab: int, seq_len: int, micro_batch: int, act_bytes: int = 2) -> float:
    """The LM head output and the loss at their peak: (a + 10) bytes per vocabulary entry per token.

    The logits in the compute dtype stay alive (the model returns them), the loss upcasts them to fp32
    and the cross-entropy keeps the fp32 log-probabilities; in backward their fp32 gradient and a cast
    back exist at once. (a + 4 + 4 + 2) was the best fit to ``torch.cuda.max_memory_allocated`` on an
    H100 where the logits dominate (with checkpointing at 8k-32k tokens × 32k vocabulary: measured
    10.0-11.8 bytes per entry); the full a + 12 sum of those tensors over-predicted by up to 14%.
    """
    return seq_len * micro_batch * vocab * (act_bytes + 10)


# --------------------------------------------------------------------------------------------------
# The whole estimate


def estimate(
    params: float | None = None,
    layers: int | None = None,
    hidden: int | None = None,
    heads: int | None = None,
    vocab: int | None = None,
    seq_len: int = 2048,
    micro_batch: int = 1,
    precision: str = "bf16",
    sharding: str = "zero3",
    world_size: int = 1,
    *,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    tied: bool = False,
    param_shapes: Iterable[Sequence[int]] | None = None,
    optimizer: str = "adamw",
    activation_checkpointing: bool = False,
    flash_attention: bool = True,
    cpu_offload: bool = False,
    layout: str = "torch",
    shard_group: int | None = None,
    rank: int = 0,
    ddp_bucket_copy: bool = True,
    grad_accumulation: bool = True,
    foreach: bool = True,
    device_mem_bytes: int | None = None,
    headroom_fraction: float = 0.0,
) -> dict:
    """Predicted peak memory per GPU for one training step, broken down, and whether it fits.

    Give the architecture (``layers``, ``hidden``, ``heads``, ``vocab``; optional ``kv_heads``,
    ``intermediate``, ``tied``) or only ``params`` (a Llama shape is then assumed for the activation
    terms and flagged ``shape_assumed``), or ``param_shapes`` for an exact per-rank FSDP2 count.
    Returns a JSON-able dict of ints (bytes): ``model_states`` (params, grads, optimizer, total),
    ``offloaded`` (host bytes), ``activations``, ``logits``, ``buffers`` (unsharded 16-bit weights and
    gradients of the blocks in flight, DDP gradient buckets), ``optimizer_step_temp``, the two peaks
    ``peak_forward_backward`` and ``peak_optimizer_step``, ``total`` (the larger), and with
    ``device_mem_bytes`` also ``usable`` (after ``headroom_fraction``), ``fits`` and ``free``.
    ``grad_accumulation`` (gradients alive during the forward, as with several micro-batches per step)
    and ``foreach`` (the default multi-tensor AdamW/SGD, which needs one shard-sized temporary) are
    conservative defaults.
    """
    _check(precision, PRECISIONS, "precision")
    _check(sharding, SHARDINGS, "sharding")
    if micro_batch < 1 or seq_len < 1:
        raise ValueError("micro_batch and seq_len must be >= 1")
    shape_assumed = False
    shapes = [tuple(s) for s in param_shapes] if param_shapes is not None else None
    if layers and hidden and heads and vocab:
        f = intermediate or default_intermediate(hidden)
        if shapes is None and params is None:
            shapes = llama_param_shapes(layers, hidden, heads, vocab, f, kv_heads, tied=tied)
    elif params is not None or shapes is not None:
        n = params if params is not None else sum(numel(s) for s in shapes or [])
        guess = assumed_shape(n)
        layers, hidden, heads, kv_heads = guess["layers"], guess["hidden"], guess["heads"], guess["kv_heads"]
        f = default_intermediate(hidden)
        vocab = vocab or 32000
        shape_assumed = True
    else:
        raise ValueError("give params, param_shapes or the architecture (layers, hidden, heads, vocab)")
    total_params = sum(numel(s) for s in shapes) if shapes is not None else float(params)
    if params is None:
        params = total_params

    states = model_state_bytes(
        params if shapes is None else None,
        param_shapes=shapes,
        precision=precision,
        sharding=sharding,
        world_size=world_size,
        optimizer=optimizer,
        layout=layout,
        shard_group=shard_group,
        rank=rank,
        cpu_offload=cpu_offload,
    )
    a = compute_dtype_bytes(precision)
    mixed = precision in ("bf16", "fp16")
    # DDP/ZeRO-1 in torch keep fp32 weights and run the matmuls under autocast; FSDP2 and DeepSpeed
    # compute with 16-bit weights.
    autocast = mixed and layout == "torch" and sharding in ("ddp", "zero1")
    # On CUDA the flash kernel needs 16-bit inputs and the memory-efficient one has no grouped-query
    # support, so SDPA in fp32 falls back to the math path, which keeps the scores (measured on an H100:
    # ~5 bytes per score). Plan fp32 as eager.
    flash = flash_attention and precision != "fp32"
    acts = activation_bytes(
        layers,
        hidden,
        heads,
        f,
        seq_len,
        micro_batch,
        kv_heads,
        a,
        activation_checkpointing,
        flash,
        autocast,
    )
    logits = logits_bytes(vocab, seq_len, micro_batch, a)

    # Working buffers: the weights in compute precision while they are used, and gradients in flight.
    kv = hidden * (kv_heads or heads) // heads
    block = 2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * f + 2 * hidden
    embed_head = vocab * hidden * (1 if tied else 2) + hidden
    g = states["shard_group"]
    unsharded_w = unsharded_g = buckets = 0.0
    if layout == "torch":
        if sharding in ("zero3", "hybrid"):
            # Root (embeddings, final norm, head) stays unsharded; the block being computed and the
            # one being prefetched are all-gathered; one block's unsharded gradient waits for its
            # reduce-scatter. With a single rank there is nothing to gather.
            if g > 1 or mixed:
                unsharded_w = a * (embed_head + 2 * block)
                unsharded_g = 4 * block  # dapt reduces gradients in fp32 (reduce_dtype=float32)
        elif sharding == "zero2":
            if g > 1 or mixed:
                unsharded_w = a * total_params  # every block stays gathered from forward to backward
                unsharded_g = 4 * block
        else:  # ddp / zero1: full fp32 params; autocast keeps a 16-bit copy of every matmul weight
            if mixed:
                norms = (2 * layers + 1) * hidden
                unsharded_w = a * (total_params - norms - (0 if tied else vocab * hidden))
            if ddp_bucket_copy and world_size > 1:
                buckets = states["grads"] if states["grads"] else 0
    else:
        if sharding == "zero3":
            unsharded_w = a * 2 * block
            unsharded_g = a * block
    buffers = {
        "unsharded_params": _int(unsharded_w),
        "unsharded_grads": _int(unsharded_g),
        "ddp_buckets": _int(buckets),
    }
    # Two peaks. Forward/backward: parameters, optimizer states, buffers, all activations and the
    # logits; the gradients are there too when they accumulate over micro-batches (otherwise they grow
    # while the activations are freed, so the larger of the two counts). Optimizer step: every state
    # plus the foreach implementation's temporary (one fp32 tensor list the size of the local shard).
    resident = states["params_padded"] + states["optimizer"]
    fwd_bwd_extra = _int(acts) + _int(logits)
    if grad_accumulation:
        fwd_bwd = resident + states["grads"] + fwd_bwd_extra + sum(buffers.values())
    else:
        fwd_bwd = resident + max(fwd_bwd_extra, states["grads"]) + sum(buffers.values())
    local_numel = states["grads"] / max(1, state_bytes_per_param(precision, optimizer, layout)["grads"])
    master = 2 if precision == "bf16-pure" else 4
    step_temp = 0 if cpu_offload else _int(local_numel * master) if foreach else 0
    step = resident + states["grads"] + step_temp
    total = max(fwd_bwd, step)

    out: dict = {
        "inputs": {
            "params": _int(total_params),
            "layers": layers,
            "hidden": hidden,
            "heads": heads,
            "kv_heads": kv_heads or heads,
            "intermediate": f,
            "vocab": vocab,
            "tied": tied,
            "shape_assumed": shape_assumed,
            "seq_len": seq_len,
            "micro_batch": micro_batch,
            "precision": precision,
            "sharding": sharding,
            "world_size": world_size,
            "shard_group": g,
            "optimizer": optimizer,
            "activation_checkpointing": activation_checkpointing,
            "flash_attention": flash_attention,
            "cpu_offload": cpu_offload,
            "layout": layout,
            "rank": rank,
            "grad_accumulation": grad_accumulation,
            "foreach": foreach,
        },
        "model_states": {k: states[k] for k in ("params", "grads", "optimizer", "total")},
        "model_states_padded": states["total_padded"],
        "offloaded": states["offloaded"],
        "activations": _int(acts),
        "logits": _int(logits),
        "buffers": buffers,
        "optimizer_step_temp": step_temp,
        "peak_forward_backward": fwd_bwd,
        "peak_optimizer_step": step,
        "peak_phase": "forward_backward" if fwd_bwd >= step else "optimizer_step",
        "total": total,
    }
    if device_mem_bytes is not None:
        usable = int(device_mem_bytes * (1 - headroom_fraction))
        out.update(device_mem=int(device_mem_bytes), usable=usable, fits=total <= usable, free=usable - total)
    return out


def fits(**kwargs) -> bool:
    """Whether ``estimate(**kwargs)`` fits ``device_mem_bytes`` (which must be given)."""
    est = estimate(**kwargs)
    if "fits" not in est:
        raise ValueError("fits() needs device_mem_bytes")
    return bool(est["fits"])


def max_micro_batch(limit: int = 4096, **kwargs) -> int:
    """The largest micro-batch that fits ``device_mem_bytes`` (0 if even 1 does not), by bisection.

    Memory grows monotonically with the micro-batch, so doubling then bisecting finds it in
    O(log limit) estimates.
    """
    kwargs = {k: v for k, v in kwargs.items() if k != "micro_batch"}
    if not fits(micro_batch=1, **kwargs):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(micro_batch=hi, **kwargs):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(micro_batch=mid, **kwargs):
            lo = mid
        else:
            hi = mid
    return lo


def _int(x: float) -> int:
    return int(math.ceil(x - 1e-9)) if x > 0 else 0


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
