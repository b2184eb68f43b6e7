"""The causal-LM loss without the full logits: output projection and cross-entropy, chunk by chunk.

Why: a model returns ``[batch, seq, vocab]`` logits and the loss upcasts them to fp32; at a 128k
vocabulary, 8 sequences of 2,048 tokens make 8.6 GB of fp32 logits per micro-batch, more than the
activations of a 1B model. Here the output projection and the cross-entropy run over chunks of
``chunk_tokens`` tokens inside one autograd function that also computes the gradients of the hidden
states and of the head's weight in the forward pass (Liger-Kernel's fused linear cross-entropy does
the same), so the backward pass only scales them: no chunk's logits outlive its loop iteration and
nothing is recomputed. The cost is one fp32 buffer of the head weight's size for its gradient, held
from the forward to the backward pass.

How it plugs into a ``transformers`` model without changing its forward or its parameter names: the
output projection (an ``nn.Linear``) becomes a :class:`ChunkedLossHead`, which computes logits as
before unless targets are set (:func:`targets_for`), and then returns the summed loss in their place.
That works only for models that return the head's output as their logits unchanged, so the head is
installed for an allow-list of model families, and every loss call checks that the model returned the
very tensor the head computed (a family that scales or caps its logits fails loudly, not silently).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dapt.train.monitor import IGNORE
from dapt.train.plan.families import DIRECT_LOGITS


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, in token chunks."""

    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, targets, chunk: int):  # noqa: ANN001 (autograd signature)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for lo in range(0, hidden.shape[0], chunk):
            h, t = hidden[lo : lo + chunk], targets[lo : lo + chunk]
            logits = F.linear(h, weight, bias).float()
            valid = t != IGNORE
            safe = torch.where(valid, t, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if need_h or need_w or need_b:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' own buffer
                g.scatter_add_(1, safe[:, None], -valid[:, None].to(g.dtype))
                g.mul_(valid[:, None])
                g_c = g.to(h.dtype)
                if need_h:
                    grad_h[lo : lo + chunk] = g_c @ weight
                if need_w:
                    grad_w += (g_c.t() @ h).float()
                if need_b:
                    grad_b += g.sum(0)
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.have = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out):  # noqa: ANN001
        saved = iter(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.have
        if need_h:
            grad_h = next(saved)
            gh = grad_h * grad_out.to(grad_h.dtype)
        else:
            gh = None
        gw = (next(saved) * grad_out).to(ctx.dtypes[0]) if need_w else None
        gb = (next(saved) * grad_out).to(ctx.dtypes[1]) if need_b else None
        return gh, gw, gb, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Summed loss over the non-ignored targets; ``hidden`` is ``[..., H]``, ``targets`` the same ``[...]``."""
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1), int(chunk)
    )


class ChunkedLossHead(nn.Linear):
    """The model's output projection; while :func:`targets_for` holds targets, its forward returns the
    summed loss over them (a 0-d tensor) instead of the logits. Same parameters and names as before."""

    chunk_tokens: int = 1024
    _targets: torch.Tensor | None = None
    _returned: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._targets is None:
            return super().forward(x)
        out = linear_cross_entropy(x, self.weight, self.bias, self._targets, self.chunk_tokens)
        self._returned = out
        return out


def install_chunked_head(model: nn.Module, chunk_tokens: int) -> ChunkedLossHead | None:
    """Turn the model's output projection into a :class:`ChunkedLossHead` (in place, before sharding);
    None (nothing changed) for a model family outside :data:`DIRECT_LOGITS` or a head that is not a
    plain ``nn.Linear``."""
    head = model.get_output_embeddings()
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DIRECT_LOGITS or type(head) is not nn.Linear:
        return None
    head.__class__ = ChunkedLossHead
    head.chunk_tokens = int(chunk_tokens)
    return head


def chunked_head(model: nn.Module) -> ChunkedLossHead | None:
    """The installed :class:`ChunkedLossHead` of ``model`` (unwrapped), if any."""
    head = model.get_output_embeddings()
    return head if isinstance(head, ChunkedLossHead) else None


@contextmanager
def targets_for(head: ChunkedLossHead, targets: torch.Tensor) -> Iterator[None]:
    head._targets, head._returned = targets, None
    try:
        yield
    finally:
        head._targets = None


def causal_lm_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    reduction: str = "mean",
    position_ids: torch.Tensor | None = None,
    head: ChunkedLossHead | None = None,
) -> torch.Tensor:
    """Cross-entropy of the model's next-token predictions for inputs ``x`` against targets ``y``
    (``IGNORE`` skipped), ``mean`` over the counted targets or ``sum``; through ``head`` (chunked) when
    given, else from the full logits. ``position_ids`` restart at document starts for document masking
    (``transformers`` then masks attention to each document; see ``train.batches``)."""
    # No KV cache: with one, transformers does not derive the document mask from the position ids.
    kw: dict[str, Any] = {"use_cache": False}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    if head is None:
        logits = model(input_ids=x, **kw).logits
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            y.reshape(-1),
            ignore_index=IGNORE,
            reduction=reduction,
        )
    with targets_for(head, y):
        total = model(input_ids=x, **kw).logits
        if total is not head._returned:
            raise RuntimeError(
                f"train.loss_chunk_tokens: {type(model).__name__} changed the output projection's result "
                "before returning it as logits, so the chunked loss cannot be used; set train.loss_chunk_tokens: 0"
            )
    if reduction == "sum":
        return total
    return total / (y != IGNORE).sum()


def masked_lm_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy at the masked positions (``y`` is ``IGNORE`` elsewhere); a micro-batch in which no
    token was chosen contributes zero, not NaN."""
    logits = model(input_ids=x).logits
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    if reduction == "sum":
        return total
    return total / (y != IGNORE).sum().clamp(min=1)


def seq2seq_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of an encoder-decoder's predictions of the targets ``y`` given the inputs ``x``; the
    model shifts ``y`` right itself (its ``decoder_start_token_id`` first) to feed the decoder."""
    logits = model(input_ids=x, labels=y, use_cache=False).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction=reduction
    )


def objective_loss(
    objective: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    head: ChunkedLossHead | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The loss of one micro-batch under ``objective`` (train.objectives), mean over the predicted
    tokens or (``reduction="sum"``, the monitor's windows) their sum."""
    if objective == "mlm":
        return masked_lm_loss(model, x, y, reduction=reduction)
    if objective == "span":
        return seq2seq_loss(model, x, y, reduction=reduction)
    return causal_lm_loss(model, x, y, position_ids=position_ids, head=head, reduction=reduction)
