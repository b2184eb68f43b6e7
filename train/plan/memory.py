"""GPU memory arithmetic for training a transformer: model states, activations, buffers.

Standard library only: ``bench/gpu_check.py`` imports this on a GPU machine that has torch and
transformers but not this project's other dependencies, so the prediction it prints next to
``torch.cuda.max_memory_allocated`` is computed by exactly this code.

The model states (parameters, gradients, optimizer states in the ``torch`` and ``deepspeed``
bookkeeping conventions, parameter shapes, FSDP2 shard sizes) live in ``train/plan/states.py`` and are
re-exported here; this module adds what a training step holds on top of them (activations, logits,
working buffers) and composes the two peaks (forward/backward, optimizer step) in :func:`estimate`.
Decoder-only causal LMs (``objective="clm"``) use the Llama arithmetic here; encoders (``mlm``) and
encoder-decoders (``span``) the per-family terms of ``encoders.py`` and ``encoder_memory.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dapt.train.plan import encoder_memory, encoders
from dapt.train.plan.states import (  # noqa: F401 - re-exported: memory.* is the planner's one namespace
    DTYPE_BYTES,
    GB,
    GIB,
    LAYOUTS,
    OPTIMIZERS,
    PRECISIONS,
    SHARDINGS,
    assumed_shape,
    ceil_bytes,
    check_choice,
    compute_dtype_bytes,
    default_intermediate,
    llama_param_shapes,
    model_state_bytes,
    numel,
    rule_of_thumb_training_bytes,
    shard_numel,
    state_bytes_per_param,
    storage_bytes,
    zero_paper_model_states,
)

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
    checkpoint_every: int = 1,
) -> float:
    """Activation bytes held at the start of the backward pass, per GPU (logits excluded).

    Without checkpointing every layer's saved tensors are alive. With per-block checkpointing
    (what HF ``activation_checkpointing_enable`` and FSDP's checkpoint wrapper do) each checkpointed
    block keeps only its input (a·h per token; fp32 under autocast) and one block's full set exists
    while it is recomputed. Selective checkpointing (``checkpoint_every`` k > 1: blocks 0, k, 2k, ...)
    checkpoints ceil(layers / k) blocks and the others keep everything. The final norm keeps
    (4 + 2a)·h (autocast: (8 + a)·h).
    """
    tokens = seq_len * micro_batch
    per_layer = activation_bytes_per_token_layer(
        hidden, heads, intermediate, kv_heads, seq_len, act_bytes, flash_attention, autocast
    )
    final_norm = ((8 + act_bytes) if autocast else (4 + 2 * act_bytes)) * hidden + 4
    if checkpointing:
        stream = 4 if autocast else act_bytes
        recomputed = -(-layers // max(1, checkpoint_every))
        kept = layers - recomputed
        return tokens * (recomputed * stream * hidden + (kept + 1) * per_layer + final_norm)
    return tokens * (layers * per_layer + final_norm)


def logits_bytes(
    vocab: int,
    seq_len: int,
    micro_batch: int,
    act_bytes: int = 2,
    chunk_tokens: int = 0,
    hidden: int | None = None,
) -> float:
    """The LM head output and the loss at their peak.

    Full logits (``chunk_tokens`` 0): (a + 10) bytes per vocabulary entry per token. The logits in the
    compute dtype stay alive (the model returns them), the loss upcasts them to fp32 and the
    cross-entropy keeps the fp32 log-probabilities; in backward their fp32 gradient and a cast back
    exist at once. (a + 4 + 4 + 2) was the best fit to ``torch.cuda.max_memory_allocated`` on an H100
    where the logits dominate (with checkpointing at 8k-32k tokens × 32k vocabulary: measured 10.0-11.8
    bytes per entry); the full a + 12 sum of those tensors over-predicted by up to 14%.

    Chunked (train/loss.py): one chunk's logits at a time, in the compute dtype and in fp32, and the
    fp32 softmax gradient cast back, (4 + 2a) bytes per entry for ``min(chunk, tokens)`` tokens; plus
    what lives from the forward to the backward pass: the head weight's fp32 gradient (4·V·h) and the
    hidden states' gradient (a·h per token).
    """
    tokens = seq_len * micro_batch
    if chunk_tokens <= 0:
        return tokens * vocab * (act_bytes + 10)
    h = hidden or 0
    return min(chunk_tokens, tokens) * vocab * (4 + 2 * act_bytes) + 4 * vocab * h + tokens * h * act_bytes


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
    checkpoint_every: int = 1,
    loss_chunk_tokens: int = 0,
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
    objective: str = "clm",
    model: dict[str, Any] | None = None,
    span_lengths: tuple[int, int] | None = None,
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
    ``checkpoint_every`` is selective checkpointing (every k-th block), ``loss_chunk_tokens`` the chunked
    loss (0: full logits; see :func:`logits_bytes`).
    ``grad_accumulation`` (gradients alive during the forward, as with several micro-batches per step)
    and ``foreach`` (the default multi-tensor AdamW/SGD, which needs one shard-sized temporary) are
    conservative defaults.
    ``objective`` ``mlm`` or ``span`` needs ``model``, the description ``encoders.describe`` makes of the
    model's config (its architecture numbers replace ``layers`` ... ``tied``), and for ``span`` the
    ``span_lengths`` (input, target) of a corrupted block; the loss then takes the full logits.
    """
    check_choice(objective, ("clm", "mlm", "span"), "objective")
    check_choice(precision, PRECISIONS, "precision")
    check_choice(sharding, SHARDINGS, "sharding")
    if micro_batch < 1 or seq_len < 1:
        raise ValueError("micro_batch and seq_len must be >= 1")
    shape_assumed = False
    shapes = [tuple(s) for s in param_shapes] if param_shapes is not None else None
    enc = model if objective != "clm" else None
    if objective != "clm" and not (enc and enc.get("kind") in ("encoder", "encoder_decoder")):
        raise ValueError(f"objective {objective}: give the model's config (an encoder or encoder-decoder)")
    if enc is not None:
        layers, hidden, heads, vocab = enc["layers"], enc["hidden"], enc["heads"], enc["vocab"]
        kv_heads, f, tied = heads, enc["intermediate"], enc["tied"]
        loss_chunk_tokens = 0  # train/setup.py installs the chunked loss for clm only
        if shapes is None and params is None:
            shapes = [tuple(s) for s in encoders.param_shapes(enc)]
    elif layers and hidden and heads and vocab:
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
    # Working buffers (below) need a block's and the root's size: the weights in compute precision while
    # they are used, and gradients in flight.
    if enc is not None:
        # No grouped-query attention here, so fp32 SDPA takes the memory-efficient kernel (no scores).
        terms = encoder_memory.objective_terms(
            enc, objective, seq_len, micro_batch, a, activation_checkpointing, flash_attention, autocast,
            checkpoint_every, span_lengths,
        )  # fmt: skip
        acts = terms["activations"]
        logits = logits_bytes(vocab, terms["logits_tokens"], 1, a)
        block, embed_head = terms["block"], terms["root"]
    else:
        acts = activation_bytes(
            layers, hidden, heads, f, seq_len, micro_batch, kv_heads, a, activation_checkpointing, flash,
            autocast, checkpoint_every,
        )  # fmt: skip
        logits = logits_bytes(vocab, seq_len, micro_batch, a, loss_chunk_tokens, hidden)
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
            if mixed and enc is not None:
                unsharded_w = a * terms["matmul"]
            elif mixed:
                norms = (2 * layers + 1) * hidden
                unsharded_w = a * (total_params - norms - (0 if tied else vocab * hidden))
            if ddp_bucket_copy and world_size > 1:
                buckets = states["grads"] if states["grads"] else 0
    else:
        if sharding == "zero3":
            unsharded_w = a * 2 * block
            unsharded_g = a * block
    buffers = {
        "unsharded_params": ceil_bytes(unsharded_w),
        "unsharded_grads": ceil_bytes(unsharded_g),
        "ddp_buckets": ceil_bytes(buckets),
    }
    # Two peaks. Forward/backward: parameters, optimizer states, buffers, all activations and the
    # logits; the gradients are there too when they accumulate over micro-batches (otherwise they grow
    # while the activations are freed, so the larger of the two counts). Optimizer step: every state
    # plus the foreach implementation's temporary (one fp32 tensor list the size of the local shard).
    resident = states["params_padded"] + states["optimizer"]
    fwd_bwd_extra = ceil_bytes(acts) + ceil_bytes(logits)
    if grad_accumulation:
        fwd_bwd = resident + states["grads"] + fwd_bwd_extra + sum(buffers.values())
    else:
        fwd_bwd = resident + max(fwd_bwd_extra, states["grads"]) + sum(buffers.values())
    local_numel = states["grads"] / max(1, state_bytes_per_param(precision, optimizer, layout)["grads"])
    master = 2 if precision == "bf16-pure" else 4
    step_temp = 0 if cpu_offload else ceil_bytes(local_numel * master) if foreach else 0
    step = resident + states["grads"] + step_temp
    total = max(fwd_bwd, step)

    out: dict = {
        "inputs": {
            "params": ceil_bytes(total_params),
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
            "checkpoint_every": checkpoint_every,
            "loss_chunk_tokens": loss_chunk_tokens,
            "flash_attention": flash_attention,
            "cpu_offload": cpu_offload,
            "layout": layout,
            "rank": rank,
            "grad_accumulation": grad_accumulation,
            "foreach": foreach,
            "objective": objective,
            "family": enc["family"] if enc else None,
            "model_type": enc.get("model_type") if enc else None,
            "approximate": bool(enc and enc.get("approximate")),
            "decoder_layers": enc.get("decoder_layers") if enc else None,
            "span_lengths": list(span_lengths) if objective == "span" and span_lengths else None,
        },
        "model_states": {k: states[k] for k in ("params", "grads", "optimizer", "total")},
        "model_states_padded": states["total_padded"],
        "offloaded": states["offloaded"],
        "activations": ceil_bytes(acts),
        "logits": ceil_bytes(logits),
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
