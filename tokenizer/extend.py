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
- **WordPiece** (BERT family): frequent domain words (the base's pre-tokens) become whole-word vocabulary
  entries. WordPiece is greedy longest-match-first per word, so an entry can only change the encoding
  of a word it is a prefix of; see :func:`extend_wordpiece`.

T5 is a Unigram base whose 100 ``<extra_id_i>`` sentinels end the vocabulary; new pieces go after them.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Container, Iterable
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


def extension_kind(tj: dict[str, Any]) -> str:
    """Which ``extend_*`` function handles this ``tokenizer.json``: "unigram", "bpe" or "wordpiece".

    Raises ``InputError`` for any other model (WordLevel has no way to split an unseen word)."""
    kind = tj["model"]["type"]
    kinds = {"Unigram": "unigram", "BPE": "bpe", "WordPiece": "wordpiece"}
    if kind not in kinds:
        raise InputError(f"cannot extend a {kind} tokenizer (Unigram, BPE and WordPiece are supported)")
    return kinds[kind]


def _ranked(
    candidates: Iterable[tuple[str, int]],
    tokenize: Callable[[str], Any],
    existing: Container[str],
    min_frequency: int,
    allow_digits: bool,
    unk_id: int | None,
) -> list[tuple[int, str, int, list[int]]]:
    """(savings, token, count, base ids) of the candidates worth adding, best first.

    Savings = count x (base tokens it replaces - 1), an estimate of tokens saved on the domain sample.
    Skipped: existing tokens, rare ones, digit-containing ones unless ``allow_digits`` (bases that split
    numbers into digits do so on purpose), and ones the base keeps whole or can only spell with unk."""
    ranked = []
    for token, count in candidates:
        if token in existing or count < min_frequency or not token.strip("▁"):
            continue
        if not allow_digits and _has_digit(token):
            continue
        ids = [t.id for t in tokenize(token)]
        if len(ids) < 2 or (unk_id is not None and unk_id in ids):
            continue
        ranked.append((count * (len(ids) - 1), token, count, ids))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    return ranked


def extend_unigram(
    tj: dict[str, Any],
    candidates: list[tuple[str, int]],
    new_tokens: int,
    min_frequency: int,
    allow_digits: bool = False,
) -> Extension:
    """Append up to ``new_tokens`` of ``candidates`` ((piece, count in the domain sample), piece in
    the model's ``▁`` space) to a Unigram ``tokenizer.json``, best savings first.

    Savings of a piece = count x (base pieces it replaces - 1), an estimate of tokens saved. New ids
    follow every existing id, T5's sentinels included, so no existing id moves.
    """
    from tokenizers import Tokenizer

    base = Tokenizer.from_str(json.dumps(tj))
    new = json.loads(json.dumps(tj))
    _absorb_trailing_added(new)
    vocab: list[list[Any]] = new["model"]["vocab"]
    existing = {p for p, _ in vocab}
    scores = [s for _, s in vocab]
    ranked = _ranked(
        candidates, base.model.tokenize, existing, min_frequency, allow_digits, tj["model"].get("unk_id")
    )
    added = []
    next_id = len(vocab)
    for _savings, piece, count, ids in ranked[:new_tokens]:
        score = sum(scores[i] for i in ids) + UNIGRAM_MARGIN
        new["model"]["vocab"].append([piece, score])
        added.append({"token": piece, "id": next_id, "count": count, "base_ids": ids, "score": score})
        next_id += 1
    return Extension(new, added)


def _absorb_trailing_added(tj: dict[str, Any]) -> None:
    """Make special tokens that sit after the Unigram vocabulary (sentinels such as T5's
    ``<extra_id_i>`` when a tokenizer.json lists them only as added tokens) vocabulary pieces at their
    own ids, in place, so that new pieces can be numbered after them.

    Score 0.0 as transformers' T5 converter lays sentinels out; the pieces are never reached from text
    (the added-token table takes special tokens first, and ``encode.text_only_backend`` hides special
    pieces). Non-special added tokens there, or gaps between the ids, are refused: a non-special one
    with ``single_word`` could be reached by the model inside a longer word."""
    vocab = tj["model"]["vocab"]
    after = [a for a in tj.get("added_tokens", []) if a["id"] >= len(vocab)]
    if not after:
        return
    ids = sorted(a["id"] for a in after)
    if ids != list(range(len(vocab), len(vocab) + len(ids))) or not all(a.get("special") for a in after):
        raise InputError(
            "base tokenizer has added tokens after its Unigram vocabulary (not all special, or with gaps "
            "between their ids); extend cannot append pieces without renumbering them (use mode: replace)"
        )
    content = {a["id"]: a["content"] for a in after}
    vocab.extend([content[i], 0.0] for i in ids)


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


def extend_wordpiece(
    tj: dict[str, Any], counts: Counter[str], new_tokens: int, min_frequency: int, allow_digits: bool = False
) -> Extension:
    """Append up to ``new_tokens`` domain words from ``counts`` (pre-tokens with their counts, from
    :func:`pretoken_counts`) that the base splits into several pieces to a WordPiece ``tokenizer.json``
    as whole-word entries, best savings first (as :func:`extend_unigram`), with ids after the largest
    existing id.

    WordPiece takes, at each position of a word, the longest vocabulary entry there (``##``-prefixed
    after the first). A whole-word entry ``w`` can only be taken at a word's start, so it changes the
    encoding of exactly the words that begin with ``w`` ("revenue", "revenues": ``revenue ##s``); all
    other words encode as before. After ``w`` the rest of such a word is spelled with ``##`` pieces; a
    base that can encode a character ``c`` inside a word only within a longer piece, with no ``##c``,
    would turn some of those words into ``[UNK]``, so such ``##c`` are added first and count against
    ``new_tokens`` (they change no word the base could encode: where the base matched, its match was
    longer than one character). A WordPieceTrainer vocabulary has every ``##c`` it needs.
    """
    from tokenizers import Tokenizer

    base = Tokenizer.from_str(json.dumps(tj))
    new = json.loads(json.dumps(tj))
    model = new["model"]
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix") or "##"
    specials = {a["content"] for a in tj.get("added_tokens", [])}
    closure = _missing_continuations(base, vocab, prefix, specials)
    words = [(w, c) for w, c in counts.items() if not w.startswith(prefix)]
    unk_id = base.token_to_id(model["unk_token"])
    ranked = _ranked(words, base.model.tokenize, vocab.keys() | specials, min_frequency, allow_digits, unk_id)
    ranked = ranked[: max(new_tokens - len(closure), 0)]
    if not ranked:
        if closure and len(closure) >= new_tokens:
            log.warning("extend: the %d ##-pieces the base lacks leave no room in new_tokens", len(closure))
        return Extension(new, [])
    added: list[dict[str, Any]] = []
    next_id = _max_id(tj) + 1
    for piece in closure:
        ids = [t.id for t in base.model.tokenize(piece[len(prefix) :])]
        added.append({"token": piece, "id": next_id, "count": 0, "base_ids": ids, "continuation": True})
        next_id += 1
    for _savings, word, count, ids in ranked:
        added.append({"token": word, "id": next_id, "count": count, "base_ids": ids, "word": word})
        next_id += 1
    vocab.update((a["token"], a["id"]) for a in added)
    return Extension(new, added)


def _missing_continuations(base: Any, vocab: dict[str, int], prefix: str, specials: set[str]) -> list[str]:
    """``prefix + c`` for each character ``c`` the base can encode inside a word (some piece has it
    after a word's first character) but has no continuation piece for, and that the normaliser keeps
    and the pre-tokeniser does not split off. Empty for trainer-made and BERT vocabularies."""
    inner = set()
    for t in vocab:
        if t not in specials:
            inner.update(t[len(prefix) :] if t.startswith(prefix) else t[1:])
    missing = []
    for c in sorted(inner):
        if prefix + c in vocab:
            continue
        probe = f"a{c}a"
        if base.normalizer is not None and base.normalizer.normalize_str(probe) != probe:
            continue
        if base.pre_tokenizer is None or len(base.pre_tokenizer.pre_tokenize_str(probe)) == 1:
            missing.append(prefix + c)
    return missing


def save_extended(base_tok: Any, ext: Extension, out_dir: Path, sp_proto: bytes | None = None) -> Any:
    """Write the extended tokenizer as an HF folder (the base's config, the new ``tokenizer.json``,
    and ``tokenizer.model`` when given) and return it reloaded with ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    src = out_dir.parent / f".{out_dir.name}.src"
    if src.exists():
        shutil.rmtree(src)
    base_tok.save_pretrained(str(src))
    for stale in ("tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt"):
        (src / stale).unlink(missing_ok=True)  # tokenizer.json must be the only definition
    (src / "tokenizer.json").write_text(json.dumps(ext.tokenizer_json, ensure_ascii=False), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    if sp_proto is not None:
        (out_dir / "tokenizer.model").write_bytes(sp_proto)
    shutil.rmtree(src)
    return AutoTokenizer.from_pretrained(str(out_dir))
