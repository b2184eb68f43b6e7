"""Encoder (BERT family, masked LM) and encoder-decoder (T5 family, span corruption) models for the
planner: their shape from a ``transformers`` config, parameter shapes, FSDP2 block sizes and training
FLOPs. Standard library only, like ``memory.py``; the activation arithmetic is in ``encoder_memory.py``.

Why a separate description and not the Llama closed form: an encoder attends to every key, has biases,
LayerNorms, learned position embeddings and an MLM head (a transform layer before the tied decoder); a
T5 runs two stacks over two lengths (the corrupted input and the shorter target) joined by
cross-attention, and its FLOPs per training token depend on both.
"""

from __future__ import annotations

import math
from typing import Any

BERT_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
"""Post-LN encoders with BERT's module layout (embeddings with token types, q/k/v/o with biases, GELU MLP,
MLM head = dense + act + LayerNorm + decoder tied to the word embeddings)."""
DISTILBERT_TYPES = frozenset({"distilbert"})
"""BERT without token types, with its own config names (dim, n_layers, hidden_dim)."""
MODERNBERT_TYPES = frozenset({"modernbert"})
"""Pre-norm, bias-free, GeGLU, RoPE, alternating global and sliding-window attention."""
T5_TYPES = frozenset({"t5", "mt5"})
"""T5 v1.0 (ReLU, tied head) and v1.1/mT5 (gated GELU, untied head): RMS norms, no biases, a relative
position bias in the first block of each stack."""

# Per activation function: (f-sized tensors it saves for backward, whether one of them is its output).
# relu keeps its output; F.gelu/F.silu keep their input; transformers' python tanh-GELU (gelu_new, T5
# v1.1) keeps x, tanh(.), 1 + tanh(.) and 0.5·x.
_ACT_SAVES = {
    "relu": (1, True),
    "gelu": (1, False),
    "gelu_pytorch_tanh": (1, False),
    "silu": (1, False),
    "swish": (1, False),
    "gelu_new": (4, False),
    "gelu_fast": (4, False),
}


def act_saves(act: str) -> tuple[int, bool]:
    """(tensors saved, output among them) for an activation name; unknown names count as F.gelu."""
    return _ACT_SAVES.get(str(act).lower(), (1, False))


def _get(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    return next((d[n] for n in names if d.get(n) is not None), default)


def describe(config: dict[str, Any], objective: str | None = None) -> dict[str, Any] | None:
    """The planner's description of an encoder or encoder-decoder from a config dict, or None for a
    decoder-only model (the Llama arithmetic in ``memory.py`` applies).

    Defaults are the ``transformers`` config classes' defaults. Another encoder-decoder (BART, ...)
    gets a T5-shaped description and another model trained with ``mlm`` (DeBERTa, ELECTRA, ...) a
    BERT-shaped one, from their generic config numbers, flagged ``approximate``. (An encoder described
    for ``span``, or an encoder-decoder for ``mlm``, is refused by the estimate: the train loop cannot
    build it either.)
    """
    d = dict(config)
    mt = d.get("model_type")
    if mt in T5_TYPES or d.get("is_encoder_decoder"):
        h = _get(d, "d_model", "hidden_size", default=512)
        heads = _get(d, "num_heads", "encoder_attention_heads", "num_attention_heads", default=8)
        d_kv = _get(d, "d_kv", default=h // heads if mt not in T5_TYPES else 64)
        layers = _get(d, "num_layers", "encoder_layers", "num_hidden_layers", default=6)
        proj = str(_get(d, "feed_forward_proj", default="relu"))
        gated = bool(_get(d, "is_gated_act", default=proj.startswith("gated-")))
        act = _get(d, "dense_act_fn", "activation_function", default=proj.split("-")[-1])
        if gated and act == "gelu" and d.get("dense_act_fn") is None:
            act = "gelu_new"  # T5Config's mapping of "gated-gelu"
        return {
            "family": "t5",
            "kind": "encoder_decoder",
            "model_type": mt,
            "approximate": mt not in T5_TYPES,
            "layers": layers,
            "decoder_layers": _get(d, "num_decoder_layers", "decoder_layers", default=layers),
            "hidden": h,
            "heads": heads,
            "inner": heads * d_kv,
            "intermediate": _get(d, "d_ff", "encoder_ffn_dim", "intermediate_size", default=2048),
            "vocab": d.get("vocab_size", 32128),
            "act": act,
            "gated": gated,
            "tied": bool(_get(d, "tie_word_embeddings", default=True)),
            "buckets": _get(d, "relative_attention_num_buckets", default=32),
            "hidden_dropout": float(_get(d, "dropout_rate", "dropout", default=0.1)),
            "attention_dropout": float(_get(d, "dropout_rate", "attention_dropout", default=0.1)),
        }
    if mt in BERT_TYPES or (objective in ("mlm", "span") and mt not in DISTILBERT_TYPES | MODERNBERT_TYPES):
        hidden = _get(d, "hidden_size", "d_model", "dim", "n_embd")
        heads = _get(d, "num_attention_heads", "n_heads", "num_heads", "encoder_attention_heads")
        spec = {
            "family": "bert",
            "kind": "encoder",
            "model_type": mt,
            "approximate": mt not in BERT_TYPES,
            "layers": _get(d, "num_hidden_layers", "num_layers", "n_layers", "encoder_layers"),
            "hidden": hidden,
            "heads": heads,
            "inner": hidden,
            "intermediate": _get(d, "intermediate_size", "hidden_dim", "encoder_ffn_dim", "d_ff"),
            "vocab": d.get("vocab_size"),
            "positions": _get(d, "max_position_embeddings", default=512),
            "type_vocab": _get(d, "type_vocab_size", default=2),
            "act": _get(d, "hidden_act", "activation", default="gelu"),
            "gated": False,
            "tied": bool(_get(d, "tie_word_embeddings", default=True)),
            "hidden_dropout": float(_get(d, "hidden_dropout_prob", "dropout", default=0.1)),
            "attention_dropout": float(
                _get(d, "attention_probs_dropout_prob", "attention_dropout", default=0.1)
            ),
        }
        if spec["intermediate"] is None and hidden:
            spec["intermediate"] = 4 * hidden
        return spec
    if mt in DISTILBERT_TYPES:
        return {
            "family": "distilbert",
            "kind": "encoder",
            "model_type": mt,
            "approximate": False,
            "layers": _get(d, "n_layers", default=6),
            "hidden": _get(d, "dim", default=768),
            "heads": _get(d, "n_heads", default=12),
            "inner": _get(d, "dim", default=768),
            "intermediate": _get(d, "hidden_dim", default=3072),
            "vocab": d.get("vocab_size", 30522),
            "positions": _get(d, "max_position_embeddings", default=512),
            "type_vocab": 0,
            "act": _get(d, "activation", default="gelu"),
            "gated": False,
            "tied": bool(_get(d, "tie_word_embeddings", default=True)),
            "hidden_dropout": float(_get(d, "dropout", default=0.1)),
            "attention_dropout": float(_get(d, "attention_dropout", default=0.1)),
        }
    if mt in MODERNBERT_TYPES:
        h = _get(d, "hidden_size", default=768)
        layers = _get(d, "num_hidden_layers", default=22)
        every = _get(d, "global_attn_every_n_layers", default=3)
        types = d.get("layer_types") or [
            "full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)
        ]
        return {
            "family": "modernbert",
            "kind": "encoder",
            "model_type": mt,
            # shapes and FLOPs follow the module layout; the activations use the BERT-shaped ledger
            "approximate": True,
            "layers": layers,
            "hidden": h,
            "heads": _get(d, "num_attention_heads", default=12),
            "inner": h,
            "intermediate": _get(d, "intermediate_size", default=1152),
            "vocab": d.get("vocab_size", 50368),
            "positions": 0,
            "type_vocab": 0,
            "act": _get(d, "hidden_activation", default="gelu"),
            "gated": True,
            "tied": bool(_get(d, "tie_word_embeddings", default=True)),
            "hidden_dropout": float(_get(d, "mlp_dropout", default=0.0)),
            "attention_dropout": float(_get(d, "attention_dropout", default=0.0)),
            "attention_bias": bool(_get(d, "attention_bias", default=False)),
            "mlp_bias": bool(_get(d, "mlp_bias", default=False)),
            "norm_bias": bool(_get(d, "norm_bias", default=False)),
            "decoder_bias": bool(_get(d, "decoder_bias", default=True)),
            "classifier_bias": bool(_get(d, "classifier_bias", default=False)),
            "window": int(_get(d, "local_attention", default=128)),
            "global_layers": sum(1 for t in types if t == "full_attention"),
        }
    return None


# --------------------------------------------------------------------------------------------------
# Parameter shapes, each tagged with its use: "lookup" (embeddings, T5's relative position bias),
# "linear" (matmul weights and their biases) or "norm".

Tagged = list[tuple[tuple[int, ...], str]]


def _linear(out: int, inp: int, bias: bool) -> Tagged:
    return [((out, inp), "linear"), ((out,), "linear")] if bias else [((out, inp), "linear")]


def _norm(h: int, bias: bool = True) -> Tagged:
    return [((h,), "norm"), ((h,), "norm")] if bias else [((h,), "norm")]


def _bert_block(spec: dict[str, Any], first: bool) -> Tagged:
    h, f = spec["hidden"], spec["intermediate"]
    if spec["family"] == "modernbert":
        ab, mb, nb = spec["attention_bias"], spec["mlp_bias"], spec["norm_bias"]
        attn_norm = [] if first else _norm(h, nb)  # the first layer's attention norm is an Identity
        return [*attn_norm, *_linear(3 * h, h, ab), *_linear(h, h, ab), *_norm(h, nb),
                *_linear(2 * f, h, mb), *_linear(h, f, mb)]  # fmt: skip
    attn = [e for _ in range(4) for e in _linear(h, h, True)]
    return [*attn, *_norm(h), *_linear(f, h, True), *_linear(h, f, True), *_norm(h)]


def _t5_block(spec: dict[str, Any], decoder: bool, first: bool) -> Tagged:
    h, i, f = spec["hidden"], spec["inner"], spec["intermediate"]
    attn = [*_linear(i, h, False) * 3, *_linear(h, i, False)]
    out = list(attn)
    if first:
        out.append(((spec["buckets"], spec["heads"]), "lookup"))
    out += _norm(h, False)
    if decoder:
        out += [*attn, *_norm(h, False)]
    out += _linear(f, h, False) * (2 if spec["gated"] else 1)
    return out + [*_linear(h, f, False), *_norm(h, False)]


def tagged_blocks(spec: dict[str, Any]) -> list[Tagged]:
    """Each transformer block's tagged parameter shapes, in order (the FSDP2 wrap units of
    train/setup.py: the encoder's layers, or T5's encoder blocks then decoder blocks)."""
    if spec["family"] == "t5":
        enc = [_t5_block(spec, False, i == 0) for i in range(spec["layers"])]
        return enc + [_t5_block(spec, True, i == 0) for i in range(spec["decoder_layers"])]
    return [_bert_block(spec, i == 0) for i in range(spec["layers"])]


def tagged_params(spec: dict[str, Any]) -> Tagged:
    """Every parameter, each shared (tied) tensor once, as ``transformers`` lists them (order aside)."""
    h, v = spec["hidden"], spec["vocab"]
    blocks = [e for b in tagged_blocks(spec) for e in b]
    head = [] if spec["tied"] else [((v, h), "linear")]
    fam = spec["family"]
    if fam == "t5":
        return [((v, h), "lookup"), *blocks, *_norm(h, False), *_norm(h, False), *head]
    if fam == "modernbert":
        nb = spec["norm_bias"]
        out = [((v, h), "lookup"), *_norm(h, nb), *blocks, *_norm(h, nb)]
        out += [*_linear(h, h, spec["classifier_bias"]), *_norm(h, nb), *head]
        return out + ([((v,), "linear")] if spec["decoder_bias"] else [])
    emb = [((v, h), "lookup"), ((spec["positions"], h), "lookup")]
    if spec["type_vocab"]:
        emb.append(((spec["type_vocab"], h), "lookup"))
    if fam == "bert" and not spec["tied"]:  # the untied decoder has a bias of its own besides the head's
        head.append(((v,), "linear"))
    return [*emb, *_norm(h), *blocks, *_linear(h, h, True), *_norm(h), *head, ((v,), "linear")]


def param_shapes(spec: dict[str, Any]) -> list[tuple[int, ...]]:
    """Every parameter's shape: ``sum(numel)`` equals ``sum(p.numel() for p in model.parameters())``."""
    return [s for s, _ in tagged_params(spec)]


def block_numels(spec: dict[str, Any]) -> list[int]:
    """Elements of each FSDP2 block."""
    return [sum(numel(s) for s, _ in b) for b in tagged_blocks(spec)]


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def _sum(entries: Tagged, kind: str) -> int:
    return sum(numel(s) for s, k in entries if k == kind)


def lookup_numel(spec: dict[str, Any]) -> int:
    """Parameters used by lookup, not in matmuls: word, position and token-type embeddings, T5's
    relative position biases."""
    return _sum(tagged_params(spec), "lookup")


def matmul_numel(spec: dict[str, Any]) -> int:
    """Weights and biases of the linear layers, the output projection included when it is tied to the
    embedding (a matmul over the same matrix): what autocast keeps a 16-bit copy of under DDP."""
    tied = spec["vocab"] * spec["hidden"] if spec["tied"] else 0
    return _sum(tagged_params(spec), "linear") + tied


# --------------------------------------------------------------------------------------------------
# FLOPs


def flops_per_token(
    spec: dict[str, Any],
    seq_len: int,
    lengths: tuple[int, int] | None = None,
    block_tokens: int | None = None,
) -> dict[str, float]:
    """Training FLOPs per token of the packed data (``block_tokens`` per row of ``seq_len``, default
    ``seq_len``: the unit the token budget counts), PaLM's convention:
    6 per matmul parameter per token it is applied to (forward 2, backward 4), plus 12 per attention
    score width (QKᵀ and the weighted sum of V, forward and backward).

    Encoder (mlm): the MLM head computes the logits at every position (train/loss.py's
    ``masked_lm_loss`` takes the full logits), so ``dense`` = 6·(N − lookups + V·h if tied) and
    ``attention`` = 12·L·h·s: every query attends to all s keys.

    Encoder-decoder (span, ``lengths`` = (S_e, S_d), the corrupted input's and the target's lengths from
    ``train.objectives.corrupted_lengths``): per block the encoder's matmuls run over S_e tokens, the
    decoder's over S_d, except the cross-attention's K and V projections, which run over the S_e
    encoder outputs; the output projection over S_d. Attention: 12·i·(L_e·S_e² + L_d·S_d² + L_d·S_d·S_e)
    (i the attention width, heads × d_kv; the decoder's causal self-attention without the causal
    discount, as the planner counts causal LMs). Divided by ``block_tokens``: with T5's packing the
    block is longer than its corrupted input (``train.objectives.block_tokens``).
    """
    per_block = block_tokens or seq_len
    h, v = spec["hidden"], spec["vocab"]
    tied_head = v * h if spec["tied"] else 0
    if spec["family"] != "t5":
        matmul = sum(numel(s) for s in param_shapes(spec)) - lookup_numel(spec) + tied_head
        if spec["family"] == "modernbert":
            g = spec["global_layers"]
            keys = g * seq_len + (spec["layers"] - g) * min(seq_len, spec["window"])  # summed over layers
        else:
            keys = spec["layers"] * seq_len
        scale = seq_len / per_block  # a row of seq_len positions carries per_block data tokens
        return _flops(6.0 * matmul * scale, 12.0 * spec["inner"] * keys * scale)
    if lengths is None:
        raise ValueError("span: give the (input, target) lengths of a corrupted block")
    se, sd = lengths
    i, le, ld = spec["inner"], spec["layers"], spec["decoder_layers"]
    blocks = tagged_blocks(spec)
    enc = sum(numel(s) for b in blocks[:le] for s, k in b if k != "lookup") + h  # + final norm
    cross_kv = ld * 2 * i * h
    dec = sum(numel(s) for b in blocks[le:] for s, k in b if k != "lookup") - cross_kv + h
    dense = 6.0 * ((enc + cross_kv) * se + (dec + v * h) * sd)
    attention = 12.0 * i * (le * se * se + ld * sd * sd + ld * sd * se)
    return _flops(dense / per_block, attention / per_block)


def _flops(dense: float, attention: float) -> dict[str, float]:
    return {"dense": dense, "attention": attention, "total": dense + attention}
