"""Held-out scores for the objectives that are not causal: masked LMs and encoder-decoders.

**Pseudo-log-likelihood bits-per-byte (masked LMs).** A masked LM gives no probability of a text, but
it gives each token's probability given all the others. Salazar et al. 2020 ("Masked Language Model
Scoring") sum those: PLL(text) = Σ_i log p(token_i | text with token_i masked). Divided by the text's
UTF-8 bytes and ln 2 it is comparable across tokenizers like the causal bits-per-byte (eval/bpb.py),
and base vs adapted on the same text is a fair comparison. It is not a normalised likelihood, so it is
never compared with a causal model's bits-per-byte.

Windows: each document's tokens are cut into disjoint windows of at most ``max_length`` tokens with the
tokenizer's own special tokens around them (``[CLS] ... [SEP]`` for BERT), so every token is scored once
with the context of its window. Batching: every (window, position) pair is one row, the window with
that one position masked; rows are batched ``batch_size`` at a time and only the masked position's
logits are read. One forward per token is the method's cost, which is why ``max_docs`` matters more
here than for causal bits-per-byte. The masked-token accuracy (top-1 at the masked position) comes
from the same forwards.

**Denoising bits-per-byte (encoder-decoders).** The span-corruption loss (train/objectives.py, seeded by
the window's index so base and adapted see the same corruption) summed over each window's targets,
per UTF-8 byte of the text, in bits. Lower is better; like PLL it compares models on the same text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dapt.eval.bpb import LN2, encode_texts
from dapt.train.objectives import special_frame


def _result(texts: Sequence[str], doc_nll: list[float], tokens: int, windows: int, **extra: Any) -> dict:
    """The shape of :func:`dapt.eval.bpb.bits_per_byte`'s result, so the same paired bootstrap compares
    base and adapted whatever the objective."""
    doc_bytes = [len(t.encode("utf-8")) for t in texts]
    nll_sum, n_bytes = math.fsum(doc_nll), sum(doc_bytes)
    return {
        "bpb": nll_sum / n_bytes / LN2 if n_bytes else float("nan"),
        "nll_sum": nll_sum,
        "bytes": n_bytes,
        "tokens": tokens,
        "docs": len(texts),
        "windows": windows,
        **extra,
        "per_doc": list(zip(doc_nll, doc_bytes, strict=True)),
    }


def _windows(tokenizer: Any, tokens: list[int], max_length: int) -> list[tuple[list[int], int, int]]:
    """(input ids, first content position, content length) per window of one document."""
    head, tail = special_frame(tokenizer)
    size = max(1, max_length - len(head) - len(tail))
    return [
        (head + tokens[lo : lo + size] + tail, len(head), len(tokens[lo : lo + size]))
        for lo in range(0, len(tokens), size)
    ]


MLM_HEADS = ("cls", "lm_head")
"""Attribute names of the masked-LM head over the encoder's hidden states (BERT, RoBERTa/XLM-R)."""


def _masked_logits(model: Any, ids: Any, attn: Any, at: Any) -> Any:
    """``[rows, vocab]`` logits at one position per row. Where the model is an encoder plus a head
    module (BERT's ``cls``, RoBERTa's ``lm_head``), the head runs on those positions only: the vocabulary
    projection at every position was about 60% of a forward on the MiniLM demo, and only one position
    per row is read. Other masked LMs run whole and the positions are picked from their logits."""
    import torch

    rows = torch.arange(ids.shape[0], device=ids.device)
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = next(
        (getattr(model, n) for n in MLM_HEADS if isinstance(getattr(model, n, None), torch.nn.Module)), None
    )
    if encoder is not None and head is not None and encoder is not model:
        hidden = encoder(input_ids=ids, attention_mask=attn).last_hidden_state
        return head(hidden[rows, at])
    return model(input_ids=ids, attention_mask=attn).logits[rows, at]


def pll_bits_per_byte(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    device: Any = None,
) -> dict[str, Any]:
    """Pseudo-log-likelihood bits-per-byte of a masked LM on ``texts`` (see the module docstring).

    Returns ``{"bpb", "nll_sum" (nats), "bytes", "tokens", "docs", "windows", "masked_accuracy",
    "per_doc": [(nll, bytes)]}``, the shape of :func:`dapt.eval.bpb.bits_per_byte`'s result, so the
    same paired bootstrap compares base and adapted."""
    import torch

    if tokenizer.mask_token_id is None:
        raise ValueError("pseudo-log-likelihood needs a mask token in the tokenizer")
    if device is None:
        device = next(model.parameters()).device
    mask_id = int(tokenizer.mask_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = encode_texts(tokenizer, texts)
    rows: list[tuple[int, list[int], int, int]] = []  # (doc, ids, masked position, target)
    n_windows = 0
    for d, toks in enumerate(encoded):
        for ids, off, n in _windows(tokenizer, toks, max_length):
            n_windows += 1
            rows.extend((d, ids, off + i, ids[off + i]) for i in range(n))
    rows.sort(key=lambda r: -len(r[1]))  # equal lengths batch together, little padding
    doc_nll = [0.0] * len(texts)
    correct = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(rows), batch_size):
                batch = rows[b : b + batch_size]
                t_max = max(len(r[1]) for r in batch)
                ids = torch.full((len(batch), t_max), pad_id, dtype=torch.long)
                attn = torch.zeros((len(batch), t_max), dtype=torch.long)
                for j, (_, r_ids, pos, _) in enumerate(batch):
                    ids[j, : len(r_ids)] = torch.tensor(r_ids)
                    ids[j, pos] = mask_id
                    attn[j, : len(r_ids)] = 1
                at = torch.tensor([r[2] for r in batch], device=device)
                picked = _masked_logits(model, ids.to(device), attn.to(device), at).float()
                logp = torch.log_softmax(picked, dim=-1)
                tgt = torch.tensor([r[3] for r in batch], device=picked.device)
                nll = -logp.gather(1, tgt[:, None]).squeeze(1).double()
                correct += int((picked.argmax(-1) == tgt).sum())
                for (d, *_), v in zip(batch, nll.tolist(), strict=True):
                    doc_nll[d] += v
    finally:
        model.train(was_training)
    accuracy = correct / len(rows) if rows else float("nan")
    return _result(texts, doc_nll, len(rows), n_windows, masked_accuracy=accuracy)


def denoising_bits_per_byte(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    seed: int = 0,
    density: float = 0.15,
    mean_span: float = 3.0,
    device: Any = None,
) -> dict[str, Any]:
    """Span-corruption loss of an encoder-decoder per UTF-8 byte of ``texts`` (see the module docstring);
    the same result shape as :func:`pll_bits_per_byte`."""
    import numpy as np
    import torch

    from dapt.train.loss import seq2seq_loss
    from dapt.train.objectives import span_corrupt, token_roles

    if device is None:
        device = next(model.parameters()).device
    roles = token_roles(tokenizer, "span", int(model.config.vocab_size))
    encoded = encode_texts(tokenizer, texts)
    doc_nll = [0.0] * len(texts)
    n_windows = n_targets = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for d, toks in enumerate(encoded):
                for lo in range(0, len(toks), max_length):
                    piece = np.asarray(toks[lo : lo + max_length], dtype=np.int64)
                    if piece.size < 2:
                        continue
                    x, y = span_corrupt(piece, n_windows, seed, roles, density, mean_span)
                    n_windows += 1
                    xt = torch.from_numpy(x)[None].to(device)
                    yt = torch.from_numpy(y)[None].to(device)
                    doc_nll[d] += float(seq2seq_loss(model, xt, yt, reduction="sum").double())
                    n_targets += int(y.size)
    finally:
        model.train(was_training)
    return _result(texts, doc_nll, n_targets, n_windows)
