"""Activation and logits memory of encoders (masked LM) and encoder-decoders (span corruption).
Standard library only (see ``memory.py``).

Counted, like the Llama formula in ``memory.py``, from what autograd saves in the ``transformers``
modules, and held to a measured forward on CPU (``saved_tensors_hooks``, tests/test_plan_objectives.py).
Notation per token: a bytes per activation element (2 in bf16/fp16, 4 in fp32), h hidden, i the
attention width (heads × head dim; h for BERT), f the MLP width, H heads, s the keys per query.

``device`` is where the step runs, because two kernels save different things there: CUDA's fused
dropout keeps a bool mask (1 byte per element; the CPU kernel a mask in the input's dtype), and CUDA's
autocast runs softmax and layer_norm in fp32 (CPU's keeps them in 16 bits). The planner plans CUDA;
the tests measure on CPU with ``device="cpu"``.
"""

from __future__ import annotations

from typing import Any

from dapt.train.plan.encoders import act_saves, block_numels, matmul_numel, numel, param_shapes

LN_STATS = 8  # LayerNorm keeps fp32 mean and rstd per token
RMS_STAT = 4  # T5's RMS norm keeps a fp32 rsqrt per token


class _Step:
    """The precision facts every term below needs."""

    def __init__(self, act_bytes: int, autocast: bool, flash: bool, device: str) -> None:
        self.a, self.autocast, self.flash = act_bytes, autocast, flash
        self.cuda = device != "cpu"
        self.m = 1 if self.cuda else act_bytes  # bytes per dropout-mask element

    def scores(self, dropout: float, fp32_scores: bool = False) -> float:
        """Bytes per attention score the eager / math path keeps: the softmax output (fp32 when the
        scores are fp32, or under CUDA autocast, which runs softmax in fp32), the dropout mask and the
        dropped probabilities, or the 16-bit copy the weighted sum of V casts fp32 weights to."""
        a = self.a
        fp32 = self.autocast and (fp32_scores or self.cuda)
        return (4 if fp32 else a) + (self.m if dropout > 0 else 0) + (a if fp32 or dropout > 0 else 0)

    def attention(self, i: int, heads: int, keys: int, dropout: float, fp32_scores: bool = False) -> float:
        """q, k, v and the output (o-proj's input), a·i each; plus a fp32 log-sum-exp per head (fused
        kernels) or every score (eager, and SDPA's math fallback)."""
        scores = 4 * heads if self.flash else heads * keys * self.scores(dropout, fp32_scores)
        return 4 * self.a * i + scores


def _ffn(spec: dict[str, Any], st: _Step, cast_back: bool, dropout: float) -> float:
    """The MLP between its input and the output projection, per token: the activation's own saved
    tensors; gated, its output and the up projection (both kept by the product); then what the output
    projection reads: the mask and the dropped tensor with inner dropout (T5), the 16-bit copy autocast
    makes (``cast_back``: T5 moves ``wo``'s input to the weight's fp32 dtype and autocast casts it back),
    or else the tensor itself unless relu already keeps it."""
    saved, keeps_out = act_saves(spec["act"])
    n = saved + ((0 if keeps_out else 1) + 1 if spec["gated"] else 0)
    if dropout > 0:
        wo_in = st.m + st.a
    elif st.autocast and cast_back:
        wo_in = st.a
    else:
        wo_in = 0 if (keeps_out and not spec["gated"]) else st.a
    return spec["intermediate"] * (st.a * n + wo_in)


# --------------------------------------------------------------------------------------------------
# Encoders (BERT family)


def encoder_layer_bytes(spec: dict[str, Any], seq_len: int, st: _Step) -> float:
    """Bytes one post-LN BERT layer keeps per token (no checkpointing): its input (q/k/v's input; under
    autocast each of the three linears keeps its own 16-bit copy, 3·a·h), attention 4·a·h plus the
    scores term, each LayerNorm's input (fp32 under autocast: the residual sum) and mean/rstd, the MLP's
    input (a·h), the activation's saved tensors and the output projection's input (GELU: 2·a·f), and
    with hidden dropout two masks."""
    h, a = spec["hidden"], st.a
    ln_in = 4 if st.autocast else a
    attn = st.attention(spec["inner"], spec["heads"], seq_len, spec["attention_dropout"])
    masks = 2 * st.m * h if spec["hidden_dropout"] > 0 else 0
    x_in = (3 if st.autocast else 1) * a * h
    return x_in + attn + 2 * (ln_in * h + LN_STATS) + a * h + _ffn(spec, st, False, 0.0) + masks


def encoder_outer_bytes(spec: dict[str, Any], st: _Step) -> float:
    """Per token, outside the layers: the embeddings' LayerNorm input (fp32 under autocast) and stats,
    its dropout mask; the MLM head: the transform's input, the activation's saved tensors, the
    LayerNorm's input (the activation's output; CUDA autocast keeps the fp32 copy it normalises) and
    stats, the decoder's input."""
    h, a = spec["hidden"], st.a
    emb = (4 if st.autocast else a) * h + LN_STATS + (st.m * h if spec["hidden_dropout"] > 0 else 0)
    saved, keeps_out = act_saves(spec["act"])
    head_ln = 4 * h if (st.autocast and st.cuda) else (0 if keeps_out else a * h)
    return emb + 2 * a * h + saved * a * h + head_ln + LN_STATS


def encoder_activation_bytes(
    spec: dict[str, Any],
    seq_len: int,
    micro_batch: int,
    act_bytes: int = 2,
    checkpointing: bool = False,
    flash_attention: bool = True,
    autocast: bool = False,
    checkpoint_every: int = 1,
    device: str = "cuda",
) -> dict[str, float]:
    """Activation bytes of a masked-LM micro-batch at the start of backward (logits excluded): ``total``
    and ``recompute`` (with checkpointing, the one layer being recomputed, included in ``total``).

    Checkpointed layers (0, k, 2k, ... as transformers' ``every_n_layers``) keep only their input, a·h
    per token (fp32 under autocast); the others keep everything."""
    st = _Step(act_bytes, autocast, flash_attention, device)
    layers, tokens = spec["layers"], seq_len * micro_batch
    layer = encoder_layer_bytes(spec, seq_len, st)
    outer = encoder_outer_bytes(spec, st)
    if not checkpointing:
        return {"total": tokens * (layers * layer + outer), "recompute": 0.0}
    ck = -(-layers // max(1, checkpoint_every))
    stream = 4 if autocast else act_bytes
    recompute = tokens * layer if layers else 0.0
    total = tokens * (ck * stream * spec["hidden"] + (layers - ck) * layer + outer) + recompute
    return {"total": total, "recompute": recompute}


# --------------------------------------------------------------------------------------------------
# Encoder-decoders (T5 family)


def _rms_norm(h: int, st: _Step, copies: int) -> float:
    """T5's RMS norm per token, its output included: it squares a fp32 copy of its input and
    multiplies the original by the rsqrt, so it keeps the input, the fp32 copy (the same tensor in
    fp32), the rsqrt, the normalised tensor (saved by the weight's multiply) and its output (the next
    linears' input). Under autocast the stream and the norm are fp32, and each of the ``copies`` linears
    reading the output keeps its own 16-bit copy."""
    if st.autocast:
        return 8 * h + copies * st.a * h + RMS_STAT
    return (3 * st.a + (4 if st.a < 4 else 0)) * h + RMS_STAT


def t5_block_bytes(
    spec: dict[str, Any], own: int, other: int, decoder: bool, st: _Step
) -> tuple[float, float]:
    """(bytes per token of this stack, bytes per encoder token) one T5 block keeps; ``own`` is the
    stack's length, ``other`` the encoder's (the cross-attention's keys).

    Self-attention: its norm, q/k/v/o 4·a·i, scores over ``own`` keys (fp32 under autocast: the fp32
    position bias is added to them). Decoder: a cross-attention norm, q and o 2·a·i per decoder token, K
    and V 2·a·i per *encoder* token (under autocast plus their own 16-bit copies of the encoder output,
    2·a·h), scores over ``other`` keys. The MLP as in :func:`_ffn`. Dropout, at T5's one rate: a mask
    per residual branch, inside the MLP and on the attention probabilities.
    """
    h, i, heads = spec["hidden"], spec["inner"], spec["heads"]
    p = spec["hidden_dropout"]
    res_mask = st.m * h if p > 0 else 0
    per_tok = _rms_norm(h, st, 3) + st.attention(i, heads, own, p, fp32_scores=True) + res_mask
    per_enc = 0.0
    if decoder:
        cross = st.attention(i, heads, other, p) - 2 * st.a * i
        per_tok += _rms_norm(h, st, 1) + cross + res_mask
        per_enc = 2 * st.a * i + (2 * st.a * h if st.autocast else 0)
    per_tok += _rms_norm(h, st, 2 if spec["gated"] else 1) + _ffn(spec, st, True, p) + res_mask
    return per_tok, per_enc


def t5_activation_bytes(
    spec: dict[str, Any],
    lengths: tuple[int, int],
    micro_batch: int,
    act_bytes: int = 2,
    checkpointing: bool = False,
    flash_attention: bool = True,
    autocast: bool = False,
    checkpoint_every: int = 1,
    device: str = "cuda",
) -> dict[str, float]:
    """Activation bytes of a span-corruption micro-batch at the start of backward (logits excluded;
    ``total`` and ``recompute`` as in :func:`encoder_activation_bytes`), for the corrupted input's and
    the target's lengths ``lengths`` = (S_e, S_d).

    Besides the blocks: each stack's input-dropout mask and final norm; the encoder's output, which
    every decoder layer's K and V projections read (a·h per encoder token, once); the decoder's output
    (the LM head's input); each stack's relative-position bucket indices (int64, S², in its first
    block). Terms independent of the micro-batch: with fused attention (on CUDA SDPA's
    memory-efficient kernel, since T5's position bias is an additive mask, which the flash kernel does
    not take) each self-attention keeps its own contiguous H·S² copy of the bias and the cross-attention
    a shared H·S_d·S_e zero bias. Checkpointed blocks (0, k, 2k, ... over the encoder's blocks then the
    decoder's) keep their hidden input (fp32 under autocast); what the blocks share (the encoder output,
    the position biases and the decoder's causal mask) once.
    """
    st = _Step(act_bytes, autocast, flash_attention, device)
    se, sd = lengths
    a, le, ld, mb = act_bytes, spec["layers"], spec["decoder_layers"], micro_batch
    h, heads = spec["hidden"], spec["heads"]
    enc_tok, _ = t5_block_bytes(spec, se, se, False, st)
    dec_tok, dec_enc = t5_block_bytes(spec, sd, se, True, st)
    enc_block = mb * se * enc_tok + (a * heads * se * se if flash_attention else 0)
    dec_block = mb * (sd * dec_tok + se * dec_enc) + (a * heads * sd * sd if flash_attention else 0)
    buckets = (8 * se * se, 8 * sd * sd)  # in each stack's first block

    mask = st.m * h if spec["hidden_dropout"] > 0 else 0
    final = _rms_norm(h, st, 0) - (0 if autocast else a * h) + mask  # the output is counted by its reader
    outer = mb * se * (mask + final) + mb * sd * (mask + final + a * h)
    if flash_attention and ld:
        outer += a * heads * sd * se  # the cross-attention's zero bias, shared by the decoder's layers
    # what the decoder's K/V projections read (under autocast their copies are counted in the blocks and
    # the fp32 original is kept only as the checkpoints' input)
    enc_out = mb * se * (4 if autocast else a) * h if ld else 0

    if not checkpointing:
        total = le * enc_block + ld * dec_block + outer + (0 if autocast else enc_out)
        return {"total": total + buckets[0] * (le > 0) + buckets[1] * (ld > 0), "recompute": 0.0}
    every = max(1, checkpoint_every)
    ck = [b % every == 0 for b in range(le + ld)]
    stream = 4 if autocast else a
    total = outer
    for b, is_ck in enumerate(ck):
        enc = b < le
        if is_ck:
            total += mb * (se if enc else sd) * stream * h
        else:
            first = buckets[0] if b == 0 else buckets[1] if b == le else 0
            total += (enc_block if enc else dec_block) + first
    dec_ck = any(ck[le:])
    if not autocast or dec_ck:
        total += enc_out
    # what the first block of each stack hands to the next ones: the position bias (the embedding's
    # dtype: fp32 under autocast), and in the decoder the causal mask (eager) and the zero cross bias
    bias_w = 4 if autocast else a
    if any(ck[1:le]):
        total += bias_w * heads * se * se
    if any(ck[le + 1 :]):
        total += bias_w * heads * sd * sd + (0 if flash_attention else a * heads * sd * se)
    if dec_ck and not flash_attention:
        total += bias_w * mb * sd * sd
    recompute = max(enc_block if le else 0.0, dec_block if ld else 0.0)
    return {"total": total + recompute, "recompute": recompute}


# --------------------------------------------------------------------------------------------------
# Logits


def objective_logits_tokens(objective: str, seq_len: int, lengths: tuple[int, int] | None) -> int:
    """Positions per sequence at which the loss takes full-vocabulary logits: every position for mlm
    (train/loss.py's ``masked_lm_loss`` computes the head over the whole block and the loss ignores the
    unmasked ~85%), the target's S_d for span."""
    if objective == "span":
        if lengths is None:
            raise ValueError("span: give the (input, target) lengths of a corrupted block")
        return int(lengths[1])
    return int(seq_len)


def objective_terms(
    spec: dict[str, Any],
    objective: str,
    seq_len: int,
    micro_batch: int,
    act_bytes: int,
    checkpointing: bool,
    flash_attention: bool,
    autocast: bool,
    checkpoint_every: int = 1,
    span_lengths: tuple[int, int] | None = None,
) -> dict[str, float]:
    """What ``memory.estimate`` needs for an mlm / span step: ``activations`` (bytes), ``logits_tokens``
    (positions per micro-batch with full-vocabulary logits), ``block`` (elements of the largest FSDP2
    block), ``root`` (elements outside the blocks: embeddings, final norms, head) and ``matmul`` (elements
    autocast keeps 16-bit copies of)."""
    if objective == "mlm" and spec["kind"] != "encoder":
        raise ValueError(f"objective mlm needs an encoder; {spec.get('model_type')} is an encoder-decoder")
    if objective == "span" and spec["kind"] != "encoder_decoder":
        raise ValueError(f"objective span needs an encoder-decoder; {spec.get('model_type')} is an encoder")
    kw = dict(
        act_bytes=act_bytes,
        checkpointing=checkpointing,
        flash_attention=flash_attention,
        autocast=autocast,
        checkpoint_every=checkpoint_every,
    )
    if objective == "span":
        if span_lengths is None:
            raise ValueError(
                "objective span: give span_lengths, the (input, target) lengths of a corrupted block"
            )
        acts = t5_activation_bytes(spec, span_lengths, micro_batch, **kw)
    else:
        acts = encoder_activation_bytes(spec, seq_len, micro_batch, **kw)
    blocks = block_numels(spec)
    total = sum(numel(s) for s in param_shapes(spec))
    return {
        "activations": acts["total"],
        "logits_tokens": micro_batch * objective_logits_tokens(objective, seq_len, span_lengths),
        "block": max(blocks, default=0),
        "root": total - sum(blocks),
        "matmul": matmul_numel(spec),
    }
