"""The three pretraining objectives over the same packed blocks: causal LM, masked LM, span corruption.

``clm`` (decoders): predict every next token. ``mlm`` (BERT-style encoders): 15% of the non-special
tokens are chosen, of those 80% become the mask token, 10% a random token and 10% stay, and only the
chosen ones are predicted (Devlin et al. 2019; RoBERTa's dynamic masking: a new mask every time a
block is read). ``span`` (T5-style encoder-decoders): T5's span corruption, noise density 0.15 and
mean span length 3 (Raffel et al. 2020): noise spans are replaced in the input by one sentinel each
and the target is the sentinels followed by the spans they replaced.

Why the random choices are seeded by the block's stream position (with the run's seed) and not drawn
from a running generator: a block then gets the same mask whichever rank, micro-step or attempt reads
it, so a 2-worker run reproduces a 1-worker run and a resumed run reproduces an uninterrupted one,
with no generator state to checkpoint. The masks still change between epochs (the stream position
grows), which is RoBERTa's dynamic masking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dapt.train.monitor import IGNORE

OBJECTIVES = ("clm", "mlm", "span")
_MLM_STREAM, _SPAN_STREAM = 0x4D4C4D, 0x5350414E  # separate random streams per objective


def infer_objective(config: Any) -> str:
    """The objective a ``transformers`` config's architecture is pretrained with."""
    if getattr(config, "is_encoder_decoder", False):
        return "span"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForMaskedLM") for a in archs):
        return "mlm"
    if getattr(config, "model_type", None) in {"bert", "roberta", "xlm-roberta", "distilbert", "modernbert",
                                                "deberta", "deberta-v2", "electra", "camembert"}:  # fmt: skip
        return "mlm"
    return "clm"


def auto_class(objective: str) -> Any:
    """The ``transformers`` Auto class that builds, loads and exports a model for ``objective``."""
    import transformers

    return {
        "clm": transformers.AutoModelForCausalLM,
        "mlm": transformers.AutoModelForMaskedLM,
        "span": transformers.AutoModelForSeq2SeqLM,
    }[objective]


@dataclass(frozen=True)
class TokenRoles:
    """The token ids an objective needs from the tokenizer (a small, picklable payload)."""

    vocab_size: int
    special_ids: tuple[int, ...] = ()
    """Never masked or replaced (separators, padding, [CLS], sentinels)."""
    mask_id: int | None = None
    sentinel_ids: tuple[int, ...] = ()
    """T5's ``<extra_id_0>``, ``<extra_id_1>``, ... in that order."""
    eos_id: int | None = None
    decoder_start_id: int | None = None
    head: tuple[int, ...] = ()
    """mlm: the ids the tokenizer puts before a text (BERT's ``[CLS]``), added before every block."""
    tail: tuple[int, ...] = ()
    """mlm: the ids it puts after a text (``[SEP]``), added after every block."""
    word_starts: bytes = b""
    """mlm whole-word masking: one byte per vocabulary id, 1 where the token begins a word (bytes, not
    an array, so the payload stays a plain hashable value); empty: token-level masking."""


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (``[CLS]`` / ``[SEP]`` for BERT, ``<s>`` for
    Llama-style sentencepiece), found by encoding a probe with and without special tokens:
    transformers 5's fast tokenizers no longer have ``build_inputs_with_special_tokens``, and this
    works for every family."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for off in range(len(full) - len(plain) + 1):
        if full[off : off + len(plain)] == plain:
            return list(full[:off]), list(full[off + len(plain) :])
    return [], []


def block_tokens(
    objective: str, seq_len: int, frame_len: int = 0, density: float = 0.15, mean_span: float = 3.0
) -> int:
    """Tokens per packed block so that the model's input row is ``seq_len`` tokens long.

    clm: ``seq_len + 1`` (inputs and shifted targets come from one block). mlm: ``seq_len`` minus the
    special frame the loop adds around each block. span: the longest raw length whose corrupted input
    (kept tokens + one sentinel per span + EOS) is at most ``seq_len``, as T5's reference
    preprocessing (``random_spans_helper``) packs raw text so that inputs fill the row. Every token of
    a block is consumed by the objective, so the mix stage's token-exact ratio is a ratio of what the
    model trains on."""
    if objective == "clm":
        return seq_len + 1
    if objective == "mlm":
        if seq_len - frame_len < 2:
            raise ValueError(f"mix.seq_len {seq_len} leaves no room inside the {frame_len} special tokens")
        return seq_len - frame_len
    if objective != "span":
        raise ValueError(f"unknown objective {objective!r}")
    raw = seq_len
    while corrupted_lengths(raw + 1, density, mean_span)[0] <= seq_len:
        raw += 1
    while raw > 2 and corrupted_lengths(raw, density, mean_span)[0] > seq_len:
        raw -= 1
    return raw


def word_start_table(tokenizer: Any, vocab_size: int) -> bytes:
    """Per vocabulary id, whether the token begins a word: WordPiece marks continuations with its
    prefix (``##``); sentencepiece (``▁``) and byte-level BPE (``Ġ`` space, ``Ċ`` newline) mark starts.
    Special tokens and ids beyond the tokenizer count as starts (they are never masked anyway)."""
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
    prefix = model.get("continuing_subword_prefix") if model.get("type") == "WordPiece" else None
    table = np.ones(vocab_size, dtype=np.uint8)
    for token, tid in tokenizer.get_vocab().items():
        if 0 <= tid < vocab_size and tid not in tokenizer.all_special_ids:
            if prefix:
                table[tid] = not token.startswith(prefix)
            else:
                table[tid] = token.startswith(("▁", "Ġ", "Ċ"))
    return table.tobytes()


def token_roles(tokenizer: Any, objective: str, vocab_size: int, whole_word: bool = False) -> TokenRoles:
    """Read the roles from a ``transformers`` tokenizer; one line naming the option if one is missing."""
    specials = tuple(sorted({int(i) for i in tokenizer.all_special_ids if i is not None}))
    if objective == "mlm":
        if tokenizer.mask_token_id is None:
            raise ValueError(
                "model.objective: mlm needs a mask token in the tokenizer (tokenizer.mask_token), and it has none"
            )
        head, tail = special_frame(tokenizer)
        starts = word_start_table(tokenizer, vocab_size) if whole_word else b""
        return TokenRoles(
            vocab_size,
            specials,
            mask_id=int(tokenizer.mask_token_id),
            head=tuple(head),
            tail=tuple(tail),
            word_starts=starts,
        )
    if objective == "span":
        sentinels = []
        for i in range(1000):
            tid = tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>")
            if tid is None or tid == tokenizer.unk_token_id:
                break
            sentinels.append(int(tid))
        if not sentinels:
            raise ValueError(
                "model.objective: span needs T5's sentinel tokens <extra_id_0>, <extra_id_1>, ... in the "
                "tokenizer, and it has none"
            )
        eos = tokenizer.eos_token_id
        return TokenRoles(
            vocab_size, specials, sentinel_ids=tuple(sentinels), eos_id=None if eos is None else int(eos)
        )
    return TokenRoles(vocab_size, specials)


def _rng(seed: int, stream: int, position: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, int(position)])


def mlm_mask(
    tokens: np.ndarray, position: int, seed: int, roles: TokenRoles, probability: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of one block for masked LM; labels are ``IGNORE`` except at chosen positions.
    With ``roles.word_starts`` whole words are chosen (each word with ``probability``), and every
    sub-token of a chosen word is predicted; the 80/10/10 replacement stays per token."""
    rng = _rng(seed, _MLM_STREAM, position)
    tokens = np.asarray(tokens, dtype=np.int64)
    eligible = ~np.isin(tokens, np.asarray(roles.special_ids, dtype=np.int64))
    if roles.word_starts:
        starts = np.frombuffer(roles.word_starts, dtype=np.uint8)[tokens].astype(bool) | ~eligible
        starts[0] = True  # a block that begins mid-word: its first piece is a word of its own
        word = np.cumsum(starts) - 1
        chosen = (rng.random(int(word[-1]) + 1) < probability)[word] & eligible
    else:
        chosen = (rng.random(tokens.shape) < probability) & eligible
    action = rng.random(tokens.shape)
    random_ids = rng.integers(0, roles.vocab_size, tokens.shape)
    inputs = tokens.copy()
    inputs[chosen & (action < 0.8)] = roles.mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    labels = np.where(chosen, tokens, IGNORE)
    return inputs, labels


def span_lengths(length: int, density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) for ``length`` tokens: T5's ``random_spans_noise_mask`` counts."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(int(round(noise / mean_span)), 1)
    return noise, spans


def corrupted_lengths(length: int, density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """(input, target) lengths after corrupting ``length`` tokens: fixed for a given length, which is
    what lets packed blocks of one length make batches without padding. Each counts one EOS."""
    noise, spans = span_lengths(length, density, mean_span)
    return length - noise + spans + 1, noise + spans + 1


def _segments(rng: np.random.Generator, items: int, segments: int) -> np.ndarray:
    """``items`` split into ``segments`` positive lengths, uniformly at random (T5's random_segmentation)."""
    cuts = np.sort(rng.choice(np.arange(1, items), size=segments - 1, replace=False)) if segments > 1 else []
    return np.diff(np.concatenate([[0], cuts, [items]])).astype(np.int64)


def span_corrupt(
    tokens: np.ndarray,
    position: int,
    seed: int,
    roles: TokenRoles,
    density: float = 0.15,
    mean_span: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one block for span corruption, T5's layout: the input keeps the non-noise
    spans and puts sentinel *i* where noise span *i* was; the target is sentinel *i* then span *i*, for
    every span; both end with EOS. Lengths are :func:`corrupted_lengths`."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.size
    noise, spans = span_lengths(n, density, mean_span)
    if spans > len(roles.sentinel_ids):
        raise ValueError(
            f"model.objective: span needs {spans} sentinel tokens for blocks of {n} tokens; the tokenizer has "
            f"{len(roles.sentinel_ids)}: use a shorter mix.seq_len or a larger span_mean_length"
        )
    rng = _rng(seed, _SPAN_STREAM, position)
    noise_lens = _segments(rng, noise, spans)
    keep_lens = _segments(rng, n - noise, spans)
    inputs, targets, at = [], [], 0
    for i in range(spans):  # T5: every noise span follows a non-noise span
        inputs.append(tokens[at : at + keep_lens[i]])
        at += keep_lens[i]
        inputs.append(np.array([roles.sentinel_ids[i]]))
        targets.append(np.array([roles.sentinel_ids[i]]))
        targets.append(tokens[at : at + noise_lens[i]])
        at += noise_lens[i]
    eos = np.array([roles.eos_id if roles.eos_id is not None else roles.sentinel_ids[-1]])
    return np.concatenate([*inputs, eos]), np.concatenate([*targets, eos])


def reconstruct(inputs: np.ndarray, targets: np.ndarray, roles: TokenRoles) -> np.ndarray:
    """The original tokens from a :func:`span_corrupt` pair (the sentinels substituted back)."""
    sentinel = {s: i for i, s in enumerate(roles.sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1].tolist():
        if t in sentinel:
            current = sentinel[t]
            spans[current] = []
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs[:-1].tolist():
        out.extend(spans[sentinel[t]] if t in sentinel else [t])
    return np.asarray(out, dtype=np.int64)


def make_batch(
    objective: str,
    blocks: np.ndarray,
    positions: list[int],
    seed: int,
    roles: TokenRoles | None,
    options: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) ``int64`` arrays for a micro-batch of packed blocks ``[mb, block_len]`` read at
    stream ``positions`` (``block_len`` from :func:`block_tokens`). clm: the block shifted by one.
    mlm: the block inside the tokenizer's special frame, masked. span: the whole block, corrupted."""
    if objective == "clm":
        blocks = np.asarray(blocks, dtype=np.int64)
        return blocks[:, :-1], blocks[:, 1:]
    opts = options or {}
    assert roles is not None
    head, tail = np.asarray(roles.head, dtype=np.int64), np.asarray(roles.tail, dtype=np.int64)
    rows = [
        mlm_mask(np.concatenate([head, b, tail]), p, seed, roles, opts.get("mlm_probability", 0.15))
        if objective == "mlm"
        else span_corrupt(
            b, p, seed, roles, opts.get("span_noise_density", 0.15), opts.get("span_mean_length", 3.0)
        )
        for b, p in zip(np.asarray(blocks, dtype=np.int64), positions, strict=True)
    ]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
