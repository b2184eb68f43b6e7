"""Bits-per-byte of a causal LM on raw text: summed token NLL / UTF-8 bytes / ln 2.

Why bytes and not tokens: the adapted model may have a different tokenizer from the base model, and
per-token perplexity rewards a tokenizer that cuts text into more, easier pieces. Normalising the
summed negative log-likelihood of the whole text by its UTF-8 byte count makes models with different
tokenizers comparable (BloombergGPT reports held-out bits-per-byte for this reason).

Tokenisation: text is text, the rule the mix stage packed the training blocks by
(``dapt.tokenizer.encode``): a document that spells ``<|endoftext|>`` or ``</s>`` is scored as those
characters, never as the special id, so a model is scored on the ids it was trained on. The eval stage
gives lm-eval the same rule (``text_only`` on its tokenizer), so dapt and ``loglikelihood_rolling`` see
identical ids.

Context handling. Each document is encoded without special tokens and preceded by one prefix token
(BOS, else EOS), so the first real token has something to condition on, exactly as lm-eval's
``loglikelihood_rolling`` does. Documents longer than ``max_length`` are scored with sliding windows:
the first window scores every token it holds, every later window scores ``stride`` new tokens and uses
the (up to) ``max_length - stride`` tokens before them as context only. ``stride=max_length``
(``None``) gives disjoint windows, which is lm-eval's ``context_len=1`` scheme token for token; BloombergGPT
used half-window context (``stride = max_length // 2``), which costs about twice the compute and gives
lower (better-informed) NLL for long documents.

Speed. All windows of all documents are sorted by length and batched; logits are computed only for
the positions that are scored (``logits_to_keep``) and the loss is a fused cross-entropy, so no
``[batch, seq, vocab]`` log-softmax copy is materialised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Window:
    """One forward pass worth of a document: ``ids`` are the input, the last ``len(targets)``
    positions are scored against ``targets``."""

    doc: int
    ids: list[int]
    targets: list[int]


def rolling_windows(
    tokens: Sequence[int], prefix_id: int, max_length: int, stride: int | None
) -> list[Window]:
    """Split one document's tokens into scoring windows (``doc`` is set to -1; see ``make_windows``).

    Every token of ``tokens`` is scored exactly once. Input position ``j`` of the virtual sequence
    ``[prefix] + tokens`` predicts ``tokens[j]``.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    n = len(tokens)
    if n == 0:
        return []
    seq = [prefix_id, *tokens]
    out: list[Window] = []
    end = min(max_length, n)  # first window: score everything it holds
    out.append(Window(-1, seq[:end], list(tokens[:end])))
    scored = end
    while scored < n:
        new = min(stride, n - scored)
        end = scored + new  # exclusive index into tokens of the last scored token
        start = max(0, end - max_length)  # seq[start:end] predicts tokens[start:end]
        out.append(Window(-1, seq[start:end], list(tokens[end - new : end])))
        scored = end
    return out


def _prefix_id(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise ValueError("tokenizer has neither a BOS nor an EOS token to condition the first token on")


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added and none parsed from the text (the prefix token
    is added by the windows); ``tokenizer`` itself is left as it is."""
    from dapt.tokenizer.encode import encode_texts as plain_ids

    return plain_ids(tokenizer, list(texts))


def _forward_scored(model: Any, batch: list[Window], pad_id: int, device: Any) -> list[float]:
    """Summed NLL (nats) of each window's targets, one padded forward pass for the whole batch."""
    import torch
    import torch.nn.functional as F

    lengths = [len(w.ids) for w in batch]
    t_max = max(lengths)
    ids = torch.full((len(batch), t_max), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), t_max), -100, dtype=torch.long)
    for r, w in enumerate(batch):
        n, k = len(w.ids), len(w.targets)
        ids[r, :n] = torch.tensor(w.ids)
        targets[r, n - k : n] = torch.tensor(w.targets)
    # Right padding needs no attention mask: under the causal mask a real position never attends to
    # the pads after it, and position ids count from 0 as without padding. Without a padding mask the
    # attention kernel takes its fast pure-causal path. Keep only logits from the first scored position on.
    first = min(n - len(w.targets) for n, w in zip(lengths, batch, strict=True))
    keep = t_max - first
    kwargs: dict[str, Any] = {"input_ids": ids.to(device)}
    try:
        logits = model(**kwargs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model class without logits_to_keep: compute all, slice
        logits = model(**kwargs, use_cache=False).logits[:, -keep:]
    tgt = targets[:, first:].to(logits.device)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="none"
    ).view(len(batch), keep)
    return nll.double().sum(dim=1).tolist()


def bits_per_byte(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: Any = None,
    prefix_token_id: int | None = None,
) -> dict[str, Any]:
    """Bits-per-byte of ``model`` on ``texts``; see the module docstring for the context handling.

    Returns ``{"bpb", "nll_sum" (nats), "bytes", "tokens", "docs", "windows", "per_doc": [(nll, bytes)]}``.
    ``per_doc`` keeps the item-level numbers for the paired bootstrap. A text that encodes to no tokens
    contributes its bytes and zero NLL (as in lm-eval), so such texts should not be fed in.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    prefix = _prefix_id(tokenizer) if prefix_token_id is None else prefix_token_id
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else prefix
    encoded = encode_texts(tokenizer, texts)
    windows: list[Window] = []
    for d, toks in enumerate(encoded):
        windows.extend(Window(d, w.ids, w.targets) for w in rolling_windows(toks, prefix, max_length, stride))
    # Longest first: batches of equal-length windows need no padding, and an out-of-memory error
    # shows up on the first batch rather than at the end.
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].ids))
    doc_nll = [0.0] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                batch = [windows[i] for i in order[b : b + batch_size]]
                for w, nll in zip(batch, _forward_scored(model, batch, pad_id, device), strict=True):
                    doc_nll[w.doc] += nll
    finally:
        model.train(was_training)
    doc_bytes = [len(t.encode("utf-8")) for t in texts]
    nll_sum = math.fsum(doc_nll)
    n_bytes = sum(doc_bytes)
    return {
        "bpb": nll_sum / n_bytes / LN2 if n_bytes else float("nan"),
        "nll_sum": nll_sum,
        "bytes": n_bytes,
        "tokens": sum(len(e) for e in encoded),
        "docs": len(texts),
        "windows": len(windows),
        "per_doc": list(zip(doc_nll, doc_bytes, strict=True)),
    }
