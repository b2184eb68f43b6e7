"""Resizing a model to a new tokenizer and initialising rows from sub-token means (ChipNeMo).

For every token that needs a row, we recover the exact bytes it stands for, segment those bytes with
the *base* tokenizer, and average the base rows of that segmentation (for a WordPiece base a ``##``
piece is segmented as a word continuation, from the base's ``##`` pieces). Existing rows are never
recomputed: ``resize_token_embeddings`` copies them, so they stay bit-identical. This runs on the
unsharded model, before any FSDP wrapping, in float32 arithmetic.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

log = logging.getLogger("dapt.tokenizer")

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


BYTE_ENCODER = _bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def _has(component: dict[str, Any] | None, type_name: str) -> bool:
    """Whether a tokenizer.json component (possibly a Sequence) contains ``type_name``."""
    if not component:
        return False
    if component.get("type") == type_name:
        return True
    for key in ("pretokenizers", "normalizers", "decoders"):
        if any(_has(c, type_name) for c in component.get(key) or []):
            return True
    return False


class TokenText:
    """Recovers the bytes a token id stands for, for any of the tokenizer families we handle."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        tj = json.loads(tok.backend_tokenizer.to_str())
        self.byte_level = _has(tj.get("pre_tokenizer"), "ByteLevel") or _has(tj.get("decoder"), "ByteLevel")
        self.special = {a["id"]: a["content"] for a in tj.get("added_tokens", [])}

    def bytes_of(self, token_id: int) -> bytes | None:
        """The token's bytes; None for special tokens, which are mapped by role instead."""
        if token_id in self.special:
            return self.special[token_id].encode("utf-8") if not self._is_special(token_id) else None
        s = self.tok.convert_ids_to_tokens(token_id)
        if s is None:
            return None
        if self.byte_level:
            try:
                return bytes(BYTE_DECODER[c] for c in s)
            except KeyError:
                return s.encode("utf-8")
        m = _BYTE_PIECE.match(s)
        if m:
            return bytes([int(m.group(1), 16)])
        return s.replace("▁", " ").encode("utf-8")

    def _is_special(self, token_id: int) -> bool:
        return self.special[token_id] in set(self.tok.all_special_tokens)


class BaseSegmenter:
    """Segments raw bytes with the base tokenizer into base ids (without special tokens)."""

    def __init__(self, base_tok: Any) -> None:
        from tokenizers import Tokenizer

        self.tok = base_tok
        self.tj = json.loads(base_tok.backend_tokenizer.to_str())
        self.byte_level = _has(self.tj.get("pre_tokenizer"), "ByteLevel")
        model = self.tj["model"]
        self.wp_prefix = (
            (model.get("continuing_subword_prefix") or "##") if model["type"] == "WordPiece" else None
        )
        self.backend = Tokenizer.from_str(base_tok.backend_tokenizer.to_str())
        self.backend.encode_special_tokens = True
        self.vocab = base_tok.get_vocab()
        self.unk = base_tok.unk_token_id

    def ids(self, data: bytes) -> list[int]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if self.byte_level:
            if text is None:
                return [self.vocab[BYTE_ENCODER[b]] for b in data if BYTE_ENCODER[b] in self.vocab]
            ids = self.backend.encode(text, add_special_tokens=False).ids
        elif self.wp_prefix is not None:
            ids = self._wordpiece_ids(text) if text is not None else []
        elif text is None:
            ids = [self.vocab.get(f"<0x{b:02X}>", -1) for b in data]
            ids = [i for i in ids if i >= 0]
        else:
            # Straight into the model, in its ▁ alphabet: a piece's leading space is part of the
            # piece, and the pipeline's dummy-prefix/whitespace normalisation must not add or drop one.
            ids = [t.id for t in self.backend.model.tokenize(text.replace(" ", "▁"))]
        return [i for i in ids if i != self.unk]

    def _wordpiece_ids(self, text: str) -> list[int]:
        """WordPiece has no space pieces (words are split before the model), so plain text goes
        through the whole base pipeline; a ``##`` piece is a word's continuation and is matched
        greedily against the base's ``##`` pieces, or as a word where the base has none for it."""
        prefix = self.wp_prefix
        assert prefix is not None
        rest = text[len(prefix) :] if text.startswith(prefix) and len(text) > len(prefix) else None
        if rest is None:
            return self.backend.encode(text, add_special_tokens=False).ids
        ids, i = [], 0
        while i < len(rest):
            j = next((j for j in range(len(rest), i, -1) if prefix + rest[i:j] in self.vocab), None)
            if j is None:
                return self.backend.encode(rest, add_special_tokens=False).ids
            ids.append(self.vocab[prefix + rest[i:j]])
            i = j
        return ids


def _role_map(new_tok: Any, base_tok: Any) -> dict[int, int]:
    """New special-token ids -> base ids: the same string if the base has it, else the same role."""
    base_vocab = base_tok.get_vocab()
    out: dict[int, int] = {}
    for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
        nt = getattr(new_tok, role, None)
        bt = getattr(base_tok, role, None)
        if nt is None:
            continue
        nid = new_tok.convert_tokens_to_ids(nt)
        if nt in base_vocab:
            out[nid] = base_vocab[nt]
        elif bt is not None and bt in base_vocab:
            out[nid] = base_vocab[bt]
    for t in new_tok.all_special_tokens:
        nid = new_tok.convert_tokens_to_ids(t)
        if nid not in out and t in base_vocab:
            out[nid] = base_vocab[t]
    return out


def plan_rows(new_tok: Any, base_tok: Any, ids: list[int]) -> dict[int, list[int]]:
    """For each new id, the base ids whose rows it averages (empty: the mean of all base rows)."""
    text = TokenText(new_tok)
    seg = BaseSegmenter(base_tok)
    roles = _role_map(new_tok, base_tok)
    plan: dict[int, list[int]] = {}
    for i in ids:
        if i in roles:
            plan[i] = [roles[i]]
            continue
        data = text.bytes_of(i)
        plan[i] = seg.ids(data) if data else []
    return plan


def resize_and_init(
    model: Any, plan: dict[int, list[int]], new_size: int, output_init: str, replace: bool
) -> dict[str, Any]:
    """Resize ``model`` to ``new_size`` rows and set the rows in ``plan`` to sub-token means.

    Only the ids in ``plan`` are written. ``extend`` (``replace=False``) plans only the added ids, so
    every other row is untouched (bit-identical); added input rows are means, untied added output rows
    zero or means (``output_init``). ``replace`` plans every id: input and output rows are all means of
    the base rows. ``new_size`` must not be below the current row count (padding rows are kept).
    Returns statistics for the manifest.
    """
    import torch

    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.weight.data_ptr()
    old_in = emb.weight.detach().to(torch.float32).clone()
    old_out = None if (out is None or tied) else out.weight.detach().to(torch.float32).clone()
    old_size = old_in.shape[0]

    def mean_rows(table: torch.Tensor, base_ids: list[int]) -> torch.Tensor:
        valid = [b for b in base_ids if 0 <= b < table.shape[0]]
        return table[valid].mean(0) if valid else table.mean(0)

    model.resize_token_embeddings(new_size, mean_resizing=False)
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    fallback = 0
    with torch.no_grad():
        for i, base_ids in plan.items():
            if not base_ids:
                fallback += 1
            emb.weight[i] = mean_rows(old_in, base_ids).to(emb.weight.dtype)
            if old_out is not None:
                if replace or output_init == "mean":
                    out.weight[i] = mean_rows(old_out, base_ids).to(out.weight.dtype)
                else:
                    out.weight[i] = 0
    if getattr(model.config, "tie_word_embeddings", False) and not tied:
        log.warning("config says tied embeddings but the weights are not shared")
    return {
        "old_rows": old_size,
        "new_rows": new_size,
        "tied": tied,
        "initialised": len(plan),
        "mean_of_all_fallback": fallback,
        "output_init": None if tied else ("mean" if replace else output_init),
    }
