"""The exact encode path every data stage uses: ``load_encoder(folder).encode_batch(texts)``.

A Hugging Face tokenizer folder is the contract between stages (train and eval load it with
``AutoTokenizer``), so the ids must be the HF tokenizer's. ``load_encoder`` returns its Rust backend
(``tokenizers``) in batch mode, without the Python-side overhead of ``AutoTokenizer.__call__``.

Raw sentencepiece is 5-7x faster on the same Unigram model but is *not* id-identical on real text:
(1) when pieces are powers of one string (``=`` and ``==========``, ``▁`` and ``▁▁▁▁``) a run of that
character has several orderings of equal score and the two libraries break the tie differently (we
fix this by reordering such runs the HF way), and (2) rare float near-ties between different
segmentations (~0.1% of documents on the demo corpus) that cannot be detected without running HF.
So sentencepiece is used only when asked for (``exact=False``) and after agreeing on probe strings.

One deliberate difference from ``AutoTokenizer.__call__``, and one rule for every stage that turns text
into ids (the mix stage's packing, the training monitor, eval's bits-per-byte and lm-eval tasks): **text
is text**. A document that spells a special token (``</s>``, ``<|endoftext|>``) is encoded as those
characters, never as the special id, so documents cannot inject document boundaries and a model is
scored on exactly the characters it was trained on. Sentencepiece behaves that way natively (its control
pieces are never matched). HF needs two things (``text_only_backend``): the added-token layer must not
extract special tokens (``encode_special_tokens``, i.e. ``split_special_tokens=True``), *and*, for
Unigram models, the special pieces must leave the Viterbi search, because HF keeps ``<s>``/``</s>`` in
the Unigram vocabulary with score 0 and would otherwise pick them for the spelled-out text even with
``split_special_tokens=True`` (ids unchanged: their vocabulary strings are replaced by unreachable ones).
Eval makes its tokenizer objects follow the rule with ``text_only``; ``encode_texts`` encodes any HF
tokenizer by it.

An ``Encoder`` pickles to its serialized model (a few MB at most), not to a path, so it can be shipped
to Ray Data workers on other machines that cannot see the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import InputError

SP_FILE = "tokenizer.model"
"""Name of the sentencepiece model inside an HF tokenizer folder (the HF convention)."""

DEFAULT_PROBES: tuple[str, ...] = (
    "Hello world",
    "Hello  world,   three   spaces",
    "  leading spaces and trailing  ",
    "line one\nline two\n\nafter a blank line\n",
    "tab\tseparated\tvalues",
    "Net income was $1,234.56 million (up 12.5% YoY) on 2024-03-31.",
    "Prices: €5, £7.20, ¥300, ₹1,000, 0.000123 BTC",
    "naïve café résumé Ångström façade",
    "日本語のテキストと中文文本",
    "Здравствуйте, мир. Ελληνικά.",
    "emoji 🚀📈 and symbols ©®™ ± × ÷",
    "x" * 50 + " " + "9" * 40,
    "Title\n=====\n\nSection\n-------------------------\n" + " " * 23 + "indented ***** ~~~~~~",
    "CamelCaseWords and snake_case_words and kebab-case-words",
    "def f(x):\n    return x ** 2  # comment",
    "",
    " ",
    "\n",
    "special spellings: <s> </s> <unk> <pad> <|endoftext|> <|im_start|>user<|im_end|> [CLS] [SEP]",
)
"""Strings on which the sentencepiece and HF paths must agree before the fast path is trusted:
whitespace runs, newlines, digits, currency signs, non-ASCII, emoji, code, and text that spells
special tokens (encoded as characters on both paths)."""

UNREACHABLE = "\U0010fffe"
"""A Unicode noncharacter (reserved for internal use, never in interchange text) that brackets the
replacement vocabulary strings of special Unigram pieces, so no text can spell them."""


def _special_ids(backend: Any) -> dict[int, str]:
    """``{id: content}`` of the backend's special added tokens (``<s>``, ``</s>``, ``<|endoftext|>``...)."""
    return {int(i): t.content for i, t in backend.get_added_tokens_decoder().items() if t.special}


def text_only_backend(backend: Any, where: str = "tokenizer") -> Any:
    """Make a ``tokenizers.Tokenizer`` encode text as text, in place, and return it.

    Special tokens are not extracted from the text (``encode_special_tokens``) and, in a Unigram model,
    the special pieces get unreachable vocabulary strings (same ids, same scores; decoding still
    goes through the added-token table and prints ``<s>``). Other models (BPE, WordPiece) keep their
    vocabulary: their merges / word splits do not rebuild a special token from its characters, which
    is checked here. Raises ``InputError`` (naming ``where``) if a special id can still come from text.
    """
    special = _special_ids(backend)
    backend.encode_special_tokens = True
    if special:
        model = json.loads(backend.to_str()).get("model") or {}
        unk = model.get("unk_id") if model.get("type") == "Unigram" else None
        if unk is None and isinstance(model.get("unk_token"), str):
            unk = backend.token_to_id(model["unk_token"])
        if model.get("type") == "Unigram":
            from tokenizers.models import Unigram

            vocab = [
                (f"{UNREACHABLE}{i}{UNREACHABLE}" if i in special else piece, score)
                for i, (piece, score) in enumerate(model["vocab"])
            ]
            backend.model = Unigram(vocab, model.get("unk_id"), bool(model.get("byte_fallback", False)))
        spelled = [e.ids for e in backend.encode_batch(list(special.values()), add_special_tokens=False)]
        reachable = special.keys() - {unk}  # <unk> for characters the vocabulary lacks is not spelled
        for content, ids in zip(special.values(), spelled, strict=True):
            if reachable & set(ids):
                raise InputError(
                    f"{where}: the text {content!r} still encodes to a special token id {ids}; dapt encodes "
                    "text as text (special tokens only where a stage inserts them) and cannot with this model"
                )
    return backend


def text_only(tokenizer: Any, where: str | None = None) -> Any:
    """Make an HF tokenizer object follow the text-is-text rule, in place (idempotent), and return it.

    Every later call (``tok(texts)``, ``tok.encode``, lm-eval's ``tok_encode``) then treats spelled-out
    special tokens as characters; ``add_special_tokens=True`` still inserts BOS/EOS where the
    post-processor does; ids, ``tok.vocab_size``, ``bos_token_id`` and decoding are unchanged. Meant for
    tokenizers loaded for one run: never serialise the result (``save_pretrained``, ``to_str``, pickle):
    written out, a Unigram model carries the replacement strings, and read back, ``tokenizers`` gives the
    special tokens (and every added token after them) new ids. Count embedding rows with
    :func:`vocab_rows`, because ``len(tok)`` of a Unigram tokenizer now also counts the replacement
    strings. A tokenizer without a Rust backend only gets ``split_special_tokens=True``.
    """
    tokenizer.split_special_tokens = True
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text_only_backend(backend, where or str(getattr(tokenizer, "name_or_path", "tokenizer")))
    return tokenizer


def vocab_rows(tokenizer: Any) -> int:
    """Embedding rows the tokenizer's ids need (1 + the largest id): ``len(tokenizer)`` for an ordinary
    tokenizer, and still right after :func:`text_only`."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return max(int(tokenizer.vocab_size), max((int(i) for i in added), default=-1) + 1)


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text under the text-is-text rule, no BOS/EOS, without changing ``tokenizer``.

    Through a copy of its Rust backend (what ``AutoTokenizer`` calls for a fast tokenizer, so the ids are
    the HF ids of the plain text); a tokenizer already made :func:`text_only` (which must not be copied
    through ``to_str``) or without a Rust backend is called itself with ``split_special_tokens=True``.
    """
    texts = list(texts)
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    js = backend.to_str() if backend is not None else ""
    if backend is None or UNREACHABLE in js:
        enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [list(e) for e in enc]
    from tokenizers import Tokenizer

    plain = text_only_backend(Tokenizer.from_str(js), str(getattr(tokenizer, "name_or_path", "")))
    return [e.ids for e in plain.encode_batch(texts, add_special_tokens=False)]


class Encoder:
    """Text -> token ids without special tokens, with the fastest backend that gives the HF ids.

    Attributes: ``backend`` (``"sentencepiece"`` or ``"hf_fast"``), ``eos_id``, ``vocab_size``
    (``len(tokenizer)``, i.e. including added tokens: the embedding rows the model needs), ``path``.
    """

    def __init__(
        self,
        path: str,
        backend: str,
        eos_id: int,
        vocab_size: int,
        sp_proto: bytes | None = None,
        hf_json: str | None = None,
    ) -> None:
        self.path = path
        self.backend = backend
        self.eos_id = int(eos_id)
        self.vocab_size = int(vocab_size)
        self._sp_proto = sp_proto
        self._hf_json = hf_json
        self._impl: Any = None
        self._build()

    def _build(self) -> None:
        if self.backend not in ("sentencepiece", "hf_fast"):
            raise ValueError(f"unknown encoder backend {self.backend!r}")
        from tokenizers import Tokenizer

        tok = text_only_backend(Tokenizer.from_str(self._hf_json), self.path)
        self._hf = tok
        self._impl = tok
        if self.backend == "sentencepiece":
            import numpy as np
            import sentencepiece as spm

            self._impl = spm.SentencePieceProcessor(model_proto=self._sp_proto)
            self._root = np.asarray(_periodic_groups(self._impl), dtype=np.int32)
            self._len = [len(self._impl.id_to_piece(i)) for i in range(self._impl.get_piece_size())]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, no BOS/EOS added."""
        if not texts:
            return []
        texts = list(texts)
        if self.backend == "hf_fast":
            return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]
        import numpy as np

        out = self._impl.encode(texts, out_type=int)
        # Unigram ties: pieces that are powers of one root ("=" and "=====", "▁" and "▁▁▁▁") can be
        # ordered either way at equal score; HF puts the shorter pieces first, sentencepiece does not.
        # Reorder each run of same-root pieces the HF way (cheap: only texts that have such a run).
        root, length = self._root, self._len
        for k, ids in enumerate(out):
            if len(ids) > 1:
                r = root[np.asarray(ids, dtype=np.int64)]
                if np.any((r[:-1] == r[1:]) & (r[:-1] >= 0)):
                    out[k] = _reorder_runs(ids, root, length)
        return out

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: list[int]) -> str:
        """Inverse of ``encode`` (for checks and debugging; training never decodes)."""
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_impl", "_hf", "_root", "_len"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    def __repr__(self) -> str:
        return f"Encoder({self.path!r}, backend={self.backend!r}, vocab_size={self.vocab_size})"


def _reorder_runs(ids: list[int], root: Any, length: list[int]) -> list[int]:
    """Sort each maximal run of adjacent pieces sharing a root by piece length (HF's tie order)."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        j = i
        g = root[ids[i]]
        while g >= 0 and j + 1 < len(ids) and root[ids[j + 1]] == g:
            j += 1
        out.extend(sorted(ids[i : j + 1], key=lambda x: length[x]) if j > i else ids[i : j + 1])
        i = j + 1
    return out


def _primitive_root(s: str) -> str:
    n = len(s)
    for p in range(1, n // 2 + 1):
        if n % p == 0 and s[:p] * (n // p) == s:
            return s[:p]
    return s


def _periodic_groups(sp: Any) -> list[int]:
    """Per piece id, a group number shared by pieces that are powers of the same root string
    (``-``, ``--``, ``--------``), or -1 when no other piece shares its root."""
    roots: dict[str, list[int]] = {}
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i):
            continue
        roots.setdefault(_primitive_root(sp.id_to_piece(i)), []).append(i)
    group = [-1] * sp.get_piece_size()
    for g, ids in enumerate(v for v in roots.values() if len(v) > 1):
        for i in ids:
            group[i] = g
    return group


def _hf_ids(tok: Any, texts: list[str]) -> list[list[int]]:
    """Reference ids from the HF tokenizer object itself (made text-only, like the encoder), one text
    per call: catches Python-side preprocessing that the Rust backend alone would not do."""
    return [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


def boundary_id(tok: Any, sp_eos: int = -1) -> int | None:
    """The id packed between documents: EOS, or for BERT-style tokenizers (no EOS) ``[SEP]``, which
    is what BERT puts between segments; else the sentencepiece model's EOS (-1: none)."""
    for tid in (tok.eos_token_id, getattr(tok, "sep_token_id", None)):
        if tid is not None:
            return int(tid)
    return sp_eos


def load_encoder(path: str | Path, probes: list[str] | None = None, exact: bool = True) -> Encoder:
    """The encoder for the HF tokenizer folder ``path``.

    ``exact=True`` (default): ids always equal the HF tokenizer's, via its Rust backend in batch mode.
    ``exact=False``: raw sentencepiece when the folder has ``tokenizer.model`` and it agrees on the
    probes (``DEFAULT_PROBES`` plus ``probes``, e.g. a corpus sample); about 5-7x faster, but on real
    text ~0.1% of documents get an equally scored, different segmentation (a float near-tie that
    cannot be detected without running HF; measured in docs/tokenizer.md). Raises ``InputError`` if the
    folder cannot be loaded or has no EOS token (packing needs one to mark document boundaries).
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - any load failure is a bad input folder
        raise InputError(f"{folder}: cannot load a Hugging Face tokenizer: {e}") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise InputError(f"{folder}: tokenizer {type(tok).__name__} has no fast (Rust) backend")
    hf_json = tok.backend_tokenizer.to_str()  # before text_only: the encoder applies the rule itself
    vocab_size = len(tok)  # before text_only too (see vocab_rows)
    text_only(tok, str(folder))
    texts = list(DEFAULT_PROBES) + list(probes or [])
    reference = _hf_ids(tok, texts)

    sp_eos = -1
    sp_file = folder / SP_FILE
    if sp_file.is_file():
        import sentencepiece as spm

        sp_eos = spm.SentencePieceProcessor(model_file=str(sp_file)).eos_id()
    if sp_file.is_file() and not exact:
        import sentencepiece as spm

        proto = sp_file.read_bytes()
        sp = spm.SentencePieceProcessor(model_proto=proto)
        eos = boundary_id(tok, sp_eos)
        if eos is None or eos < 0:
            raise InputError(f"{folder}: tokenizer has no EOS token (needed for document boundaries)")
        if sp.get_piece_size() <= vocab_size:
            enc = Encoder(str(folder), "sentencepiece", eos, vocab_size, sp_proto=proto, hf_json=hf_json)
            if enc.encode_batch(texts) == reference:
                return enc

    eos = boundary_id(tok, sp_eos)
    if eos is None or eos < 0:
        raise InputError(f"{folder}: tokenizer has no EOS or SEP token (needed for document boundaries)")
    enc = Encoder(str(folder), "hf_fast", eos, vocab_size, hf_json=hf_json)
    got = enc.encode_batch(texts)
    if got != reference:
        bad = next(t for t, a, b in zip(texts, got, reference, strict=True) if a != b)
        raise InputError(
            f"{folder}: the tokenizer's Rust backend disagrees with AutoTokenizer on {json.dumps(bad)[:80]}; "
            "this tokenizer has Python-side preprocessing dapt does not support"
        )
    return enc
