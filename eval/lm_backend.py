"""lm-eval model backend that scores each context once for all of its continuations.

Why: a multiple-choice item with ``k`` choices reaches lm-eval's ``HFLM`` as ``k`` requests
``(context, choice_i)``, and ``HFLM`` runs the whole ``context + choice_i`` through the model ``k`` times
(it shares work only when every choice is a single token; its own source carries a TODO for this).
With few-shot prompts the context is nearly all of each request, so most of the compute is repeated.

``DaptLM`` is ``HFLM`` with one method replaced, ``_loglikelihood_tokens``. Requests are grouped by their
context tokens; each group becomes one *segment*: the context once, then every continuation as its own
branch (a tree). Segments are packed into rows of about ``pack_tokens`` tokens. One forward pass takes a
batch of rows with an explicit 4D attention mask (a token sees earlier tokens of its own context and
branch, nothing of other branches or other segments) and position ids that restart at each segment and
continue from the context into each branch, so every continuation token sees exactly what it would see
in ``HFLM``'s separate pass. Logits are projected only at the scored positions (``logits_to_keep`` with a
boolean mask), not at every context token.

The log-likelihoods equal ``HFLM``'s up to floating-point summation order (tested to 1e-4 relative);
``is_greedy`` is computed the same way. Requests that ``HFLM`` would truncate from the left (context +
continuation longer than ``max_length + 1``), and on a sliding-window model requests longer than its
window, go through ``HFLM``'s own code unchanged, so truncation and windowing are lm-eval's. Everything
else in ``HFLM`` (generation, rolling windows' bookkeeping, chat templates, the request cache) is
inherited.

Tokenisation is inherited too (``HFLM.tok_encode`` calls the tokenizer object), so the rule it follows is
the tokenizer's: the eval stage passes one made ``dapt.tokenizer.encode.text_only``, and a prompt that
spells ``</s>`` is then scored as characters, the ids training and bits-per-byte use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lm_eval.models.huggingface import HFLM

Request = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class _Segment:
    """One context and the continuations scored against it (indices into the request list)."""

    ctx: list[int]
    branches: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (cont, request ids)

    def length(self) -> int:
        return len(self.ctx) + sum(len(cont) - 1 for cont, _ in self.branches)

    def is_chain(self) -> bool:
        return len(self.branches) == 1


@dataclass
class _Row:
    segments: list[_Segment] = field(default_factory=list)
    length: int = 0


def _build_segments(requests: list[Request], ids: list[int], limit: int) -> list[_Segment]:
    """Group request ids by context, identical continuations merged, split so no segment exceeds
    ``limit`` tokens (each request alone always fits: the caller routed longer ones elsewhere)."""
    by_ctx: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    for i in ids:
        _, ctx, cont = requests[i]
        by_ctx.setdefault(tuple(ctx), {}).setdefault(tuple(cont), []).append(i)
    out: list[_Segment] = []
    for ctx, conts in by_ctx.items():
        seg = _Segment(list(ctx))
        for cont, rids in sorted(conts.items(), key=lambda kv: -len(kv[0])):
            if seg.branches and seg.length() + len(cont) - 1 > limit:
                out.append(seg)
                seg = _Segment(list(ctx))
            seg.branches.append((list(cont), rids))
        out.append(seg)
    return out


def _pack_rows(segments: list[_Segment], pack_tokens: int) -> list[_Row]:
    """Best-fit decreasing: few rows, each at most ``pack_tokens`` long (a longer segment gets its own).
    Rows with room are kept sorted by free space, so each placement is a binary search."""
    import bisect

    rows: list[_Row] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), ascending
    for seg in sorted(segments, key=lambda s: -s.length()):
        n = seg.length()
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].segments.append(seg)
            rows[r].length += n
            room -= n
        else:
            rows.append(_Row([seg], n))
            room, r = pack_tokens - n, len(rows) - 1
        if room > 0:
            bisect.insort(free, (room, r))
    return rows


class DaptLM(HFLM):
    """``HFLM`` with context sharing and packing for log-likelihood requests (see the module docstring).

    ``batch_size`` counts packed rows per forward pass; ``pack_tokens`` is the row length packing aims
    for (the attention mask is ``pack_tokens``² per row, so keep it modest on long-context models).
    """

    def __init__(self, *args: Any, pack_tokens: int = 512, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if pack_tokens < 1:
            raise ValueError(f"pack_tokens must be >= 1, got {pack_tokens}")
        self.pack_tokens = pack_tokens

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if self.backend != "causal" or not requests:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # The explicit mask replaces the model's own, so a sliding-window model (Mistral, Gemma) may only
        # get trees that fit in its window; longer requests take HFLM's path, as truncated ones do.
        window = getattr(getattr(self.model, "config", None), "sliding_window", None)
        limit = min(self.max_length, window) if isinstance(window, int) and window > 0 else self.max_length
        packable, own_path = [], []
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont:
                raise ValueError(f"request {i}: empty context or continuation")
            (packable if len(ctx) + len(cont) - 1 <= limit else own_path).append(i)
        if own_path:  # lm-eval's own code, unchanged (left truncation included)
            done = super()._loglikelihood_tokens([requests[i] for i in own_path], True)
            for i, r in zip(own_path, done, strict=True):
                results[i] = r
        rows = _pack_rows(_build_segments(requests, packable, limit), min(self.pack_tokens, limit))
        rows.sort(key=lambda r: -r.length)
        bs = self.batch_size if isinstance(self.batch_size, int) else (override_bs or 1)
        for b in range(0, len(rows), max(1, bs)):
            self._score_rows(rows[b : b + bs], requests, results)
        for i in packable:  # (HFLM's own path above has already told the cache about its requests)
            r = results[i]
            if r is None:
                raise RuntimeError(f"request {i} was not scored")
            if requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], r)
        return results  # type: ignore[return-value]

    def _score_rows(
        self, rows: list[_Row], requests: list[Request], results: list[tuple[float, bool] | None]
    ) -> None:
        import torch
        import torch.nn.functional as F

        n_rows, t_max = len(rows), max(r.length for r in rows)
        ids = torch.full((n_rows, t_max), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        pos = torch.zeros((n_rows, t_max), dtype=torch.long)
        seg_id = torch.full((n_rows, t_max), -1, dtype=torch.long)
        branch = torch.zeros((n_rows, t_max), dtype=torch.long)  # 0: context, b>0: branch b
        keep = torch.zeros((n_rows, t_max), dtype=torch.bool)
        # (request ids, [(row, column) of the logit predicting each continuation token], continuation)
        wanted: list[tuple[list[int], list[tuple[int, int]], list[int]]] = []
        for r, row in enumerate(rows):
            col = 0
            for s, seg in enumerate(row.segments):
                lc = len(seg.ctx)
                ids[r, col : col + lc] = torch.tensor(seg.ctx)
                pos[r, col : col + lc] = torch.arange(lc)
                seg_id[r, col : col + lc] = s
                last_ctx = col + lc - 1
                keep[r, last_ctx] = True
                col += lc
                for b, (cont, rids) in enumerate(seg.branches, start=1):
                    body = cont[:-1]
                    n = len(body)
                    if n:
                        ids[r, col : col + n] = torch.tensor(body)
                        pos[r, col : col + n] = torch.arange(lc, lc + n)
                        seg_id[r, col : col + n] = s
                        branch[r, col : col + n] = b
                        keep[r, col : col + n] = True
                    where = [(r, last_ctx)] + [(r, col + j) for j in range(n)]
                    wanted.append((rids, where, cont))
                    col += n
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "use_cache": False}
        # Rows that each hold one plain sequence (one context, one continuation) need no explicit mask:
        # right-padded, the model's own causal mask is exact and the attention kernel keeps its fast path.
        if not all(len(row.segments) == 1 and row.segments[0].is_chain() for row in rows):
            q = torch.arange(t_max)
            same = seg_id[:, :, None] == seg_id[:, None, :]
            visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
            allowed = same & visible & (q[None, None, :] <= q[None, :, None]) & (seg_id[:, :, None] >= 0)
            allowed |= torch.eye(t_max, dtype=torch.bool)[None]  # padding attends to itself: no empty rows
            dtype = self.model.dtype if self.mixed_precision_dtype is None else self.mixed_precision_dtype
            mask = torch.zeros((n_rows, 1, t_max, t_max), dtype=dtype)
            mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
            kwargs["attention_mask"] = mask.to(self.device)
            kwargs["position_ids"] = pos.to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            try:
                logits = self.model(**kwargs, logits_to_keep=keep.to(self.device)).logits
            except (TypeError, ValueError, IndexError):  # a model without boolean logits_to_keep
                logits = self.model(**kwargs).logits
            if logits.dim() == 3:
                logits = logits[keep.to(logits.device)]
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)  # [n_kept, vocab]
        # row-major order of the kept positions -> index into logp
        flat = torch.cumsum(keep.flatten(), 0) - 1
        greedy = logp.argmax(dim=-1).cpu()
        for rids, where, cont in wanted:
            idx = torch.tensor([int(flat[r * t_max + c]) for r, c in where])
            tgt = torch.tensor(cont)
            ll = float(logp[idx.to(logp.device), tgt.to(logp.device)].double().sum())
            answer = (ll, bool((greedy[idx] == tgt).all()))
            for i in rids:
                results[i] = answer
