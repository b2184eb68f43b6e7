"""Adding domain tokens to a base tokenizer without changing any existing id.

Two base families, each extended in its own model so that new tokens apply only where the base would
form them and decoding stays exact (plain ``add_tokens`` matches inside words and breaks spacing):

- **Unigram** (sentencepiece-style, e.g. Llama-1/T5/the fixtures): new pieces are appended to the
  Unigram vocabulary with a score just above the base's best segmentation of the same string, so the
  Viterbi search prefers the new piece exactly where it spans that string. Text whose best
  segmentation uses no new piece encodes exactly as before (the search space only grew).
- **BPE** (byte-level GPT-2 style such as SmolLM2, or Metaspace BPE): frequent domain *pre-tokens*
  (the base's own word split) get a chain of merges appended after every base merge, building the
  word left to right from its base tokens. Base merges always fire first, so text in which no new
  merge fires encodes exactly as before; chains whose intermediate result is already a base token
  are skipped, because such a merge could change base-only encodings.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import InputError

log = logging.getLogger("dapt.tokenizer")

UNIGRAM_MARGIN = 1.0
"""Log-probability margin by which a new Unigram piece beats its base segmentation."""


@dataclass
class Extension:
    """What ``extend_*`` produced: the new ``tokenizer.json`` dict and the added tokens."""

    tokenizer_json: dict[str, Any]
    added: list[dict[str, Any]]
    """One entry per added vocabulary entry: token, id, count (in the domain sample), base_ids."""


def _max_id(tj: dict[str, Any]) -> int:
    model = tj["model"]
    vocab = model["vocab"]
    ids = list(range(len(vocab))) if isinstance(vocab, list) else list(vocab.values())
    ids += [a["id"] for a in tj.get("added_tokens", [])]
    return max(ids) if ids else -1


def _has_digit(token: str) -> bool:
    return any(c.isdigit() for c in token)


def extend_unigram(
    tj: dict[str, Any],
    candidates: list[tuple[str, int]],
    new_tokens: int,
    min_frequency: int,
    allow_digits: bool = False,
) -> Extension:
    """Append up to ``new_tokens`` of ``candidates`` ((piece, count in the domain sample), piece in
    the model's ``▁`` space) to a Unigram ``tokenizer.json``, best savings first.

    Savings of a piece = count x (base pieces it replaces - 1), an estimate of tokens saved.
    """
    from tokenizers import Tokenizer

    model = tj["model"]
    vocab: list[list[Any]] = model["vocab"]
    if any(a["id"] >= len(vocab) for a in tj.get("added_tokens", [])):
        raise InputError(
            "base tokenizer has added tokens after its Unigram vocabulary; extend cannot append pieces "
            "without renumbering them (use mode: replace)"
        )
    base = Tokenizer.from_str(json.dumps(tj))
    existing = {p for p, _ in vocab}
    scores = [s for _, s in vocab]
    unk_id = model.get("unk_id")
    ranked = []
    for piece, count in candidates:
        if piece in existing or count < min_frequency or not piece.strip("▁"):
            continue
        if not allow_digits and _has_digit(piece):
            continue
        seg = base.model.tokenize(piece)
        ids = [t.id for t in seg]
        if len(ids) < 2 or (unk_id is not None and unk_id in ids):
            continue
        ranked.append((count * (len(ids) - 1), piece, count, ids))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    new = json.loads(json.dumps(tj))
    added = []
    next_id = len(vocab)
    for _savings, piece, count, ids in ranked[:new_tokens]:
        score = sum(scores[i] for i in ids) + UNIGRAM_MARGIN
        new["model"]["vocab"].append([piece, score])
        added.append({"token": piece, "id": next_id, "count": count, "base_ids": ids, "score": score})
        next_id += 1
    return Extension(new, added)


def extend_sp_proto(proto: bytes, added: list[dict[str, Any]]) -> bytes:
    """The same Unigram extension applied to a sentencepiece ``ModelProto`` (for the fast path)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(proto)
    for a in added:
        if a["id"] != len(m.pieces):
            raise InputError("sentencepiece model and tokenizer.json of the base disagree on vocabulary size")
        p = m.pieces.add()
        p.piece = a["token"]
        p.score = a["score"]
        p.type = pb.ModelProto.SentencePiece.NORMAL
    return m.SerializeToString()


def pretoken_counts(base_backend: Any, docs: list[str]) -> Counter[str]:
    """Pre-tokens (the base's own word split, in its model alphabet) of ``docs`` with counts."""
    counts: Counter[str] = Counter()
    norm = base_backend.normalizer
    pre = base_backend.pre_tokenizer
    for d in docs:
        text = norm.normalize_str(d) if norm is not None else d
        if pre is None:
            counts[text] += 1
            continue
        counts.update(p for p, _ in pre.pre_tokenize_str(text))
    return counts


def extend_bpe(
    tj: dict[str, Any], counts: Counter[str], new_tokens: int, min_frequency: int, allow_digits: bool = False
) -> Extension:
    """Append merge chains for the most frequent multi-token pre-tokens in ``counts`` to a BPE
    ``tokenizer.json`` until ``new_tokens`` vocabulary entries are used.

    Words with digits are skipped unless ``allow_digits``: bases that split numbers into single
    digits (SmolLM2, Llama-3, BloombergGPT) do so on purpose, and "00" or "2024" tokens would undo it."""
    from tokenizers import Tokenizer

    base = Tokenizer.from_str(json.dumps(tj))
    new = json.loads(json.dumps(tj))
    vocab: dict[str, int] = new["model"]["vocab"]
    merges: list[Any] = new["model"]["merges"]
    pair_style = not merges or isinstance(merges[0], list)
    base_vocab = set(vocab)
    merge_set = {tuple(m) if pair_style else tuple(m.split(" ", 1)) for m in merges}
    next_id = _max_id(tj) + 1
    added: list[dict[str, Any]] = []
    added_set: set[str] = set()
    words = sorted(((c, w) for w, c in counts.items() if c >= min_frequency), key=lambda x: (-x[0], x[1]))
    for count, word in words:
        if len(added) >= new_tokens:
            break
        if word in base_vocab or word in added_set or (not allow_digits and _has_digit(word)):
            continue
        toks = [t.value for t in base.model.tokenize(word)]
        if len(toks) < 2 or "".join(toks) != word:
            continue
        chain = []
        cur = toks[0]
        ok = True
        for t in toks[1:]:
            merged = cur + t
            if merged in base_vocab:
                ok = False  # a new merge producing a base token could change base-only encodings
                break
            chain.append((cur, t, merged))
            cur = merged
        if not ok:
            continue
        cost = sum(1 for _, _, m in chain if m not in added_set)
        if len(added) + cost > new_tokens:
            continue
        for a, b, merged in chain:
            if (a, b) not in merge_set:
                merges.append([a, b] if pair_style else f"{a} {b}")
                merge_set.add((a, b))
            if merged not in added_set:
                vocab[merged] = next_id
                added.append(
                    {"token": merged, "id": next_id, "count": count if merged == word else 0, "word": word}
                )
                added_set.add(merged)
                next_id += 1
    return Extension(new, added)


def save_extended(base_tok: Any, ext: Extension, out_dir: Path, sp_proto: bytes | None = None) -> Any:
    """Write the extended tokenizer as an HF folder (the base's config, the new ``tokenizer.json``,
    and ``tokenizer.model`` when given) and return it reloaded with ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    src = out_dir.parent / f".{out_dir.name}.src"
    if src.exists():
        shutil.rmtree(src)
    base_tok.save_pretrained(str(src))
    for stale in ("tokenizer.model", "vocab.json", "merges.txt"):
        (src / stale).unlink(missing_ok=True)  # tokenizer.json must be the only definition
    (src / "tokenizer.json").write_text(json.dumps(ext.tokenizer_json, ensure_ascii=False), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    if sp_proto is not None:
        (out_dir / "tokenizer.model").write_bytes(sp_proto)
    shutil.rmtree(src)
    return AutoTokenizer.from_pretrained(str(out_dir))
