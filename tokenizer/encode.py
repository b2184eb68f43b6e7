"""The fast, exact encode path every data stage uses: ``load_encoder(folder).encode_batch(texts)``.

A Hugging Face tokenizer folder is the contract between stages (train and eval load it with
``AutoTokenizer``), but the HF Unigram path is ~10x slower than raw sentencepiece on this kind of
machine. So when the folder also holds the sentencepiece model (``tokenizer.model``) *and* the two
give identical ids on a probe set checked at load time, we encode with sentencepiece; otherwise we use
the HF fast tokenizer's Rust backend in batch mode. Either way the ids are the ones the HF tokenizer
gives, which is what makes the fast path safe.

One deliberate difference from ``AutoTokenizer.__call__``: text that happens to spell a special token
(``</s>``, ``<|endoftext|>``) is encoded as ordinary text, never as the special id. Documents must not
be able to inject document boundaries; sentencepiece behaves that way natively and the HF path is set
to match (``encode_special_tokens``).

An ``Encoder`` pickles to its serialized model (a few MB at most), not to a path, so it can be shipped
to Ray Data workers on other machines that cannot see the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

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
    "CamelCaseWords and snake_case_words and kebab-case-words",
    "def f(x):\n    return x ** 2  # comment",
    "",
    " ",
    "\n",
)
"""Strings on which the sentencepiece and HF paths must agree before the fast path is trusted:
whitespace runs, newlines, digits, currency signs, non-ASCII, emoji, code."""


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
        if self.backend == "sentencepiece":
            import sentencepiece as spm

            self._impl = spm.SentencePieceProcessor(model_proto=self._sp_proto)
        elif self.backend == "hf_fast":
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._hf_json)
            tok.encode_special_tokens = True
            self._impl = tok
        else:
            raise ValueError(f"unknown encoder backend {self.backend!r}")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, no BOS/EOS added."""
        if not texts:
            return []
        if self.backend == "sentencepiece":
            return self._impl.encode(list(texts), out_type=int)
        return [e.ids for e in self._impl.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: list[int]) -> str:
        """Inverse of ``encode`` (for checks and debugging; training never decodes)."""
        if self.backend == "sentencepiece":
            return self._impl.decode(list(ids))
        return self._impl.decode(list(ids), skip_special_tokens=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_impl"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    def __repr__(self) -> str:
        return f"Encoder({self.path!r}, backend={self.backend!r}, vocab_size={self.vocab_size})"


def _hf_ids(tok: Any, texts: list[str]) -> list[list[int]]:
    """Reference ids from the HF tokenizer object itself, special-token text split like the encoder."""
    out = []
    for t in texts:
        try:
            ids = tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        except TypeError:  # older tokenizers without split_special_tokens
            ids = tok(t, add_special_tokens=False)["input_ids"]
        out.append(list(ids))
    return out


def load_encoder(path: str | Path, probes: list[str] | None = None) -> Encoder:
    """The encoder for the HF tokenizer folder ``path``.

    ``probes`` are extra strings (e.g. a sample of the corpus) on which the fast path must agree with
    the HF tokenizer, in addition to ``DEFAULT_PROBES``. Raises ``InputError`` if the folder cannot be
    loaded or has no EOS token (packing needs one to mark document boundaries).
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - any load failure is a bad input folder
        raise InputError(f"{folder}: cannot load a Hugging Face tokenizer: {e}") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise InputError(f"{folder}: tokenizer {type(tok).__name__} has no fast (Rust) backend")
    texts = list(DEFAULT_PROBES) + list(probes or [])
    reference = _hf_ids(tok, texts)
    vocab_size = len(tok)

    sp_eos = -1
    sp_file = folder / SP_FILE
    if sp_file.is_file():
        import sentencepiece as spm

        proto = sp_file.read_bytes()
        sp = spm.SentencePieceProcessor(model_proto=proto)
        sp_eos = sp.eos_id()
        eos = tok.eos_token_id if tok.eos_token_id is not None else sp_eos
        if eos is None or eos < 0:
            raise InputError(f"{folder}: tokenizer has no EOS token (needed for document boundaries)")
        if sp.get_piece_size() <= vocab_size and sp.encode(texts, out_type=int) == reference:
            return Encoder(str(folder), "sentencepiece", eos, vocab_size, sp_proto=proto)

    eos = tok.eos_token_id if tok.eos_token_id is not None else sp_eos
    if eos is None or eos < 0:
        raise InputError(f"{folder}: tokenizer has no EOS token (needed for document boundaries)")
    hf_json = tok.backend_tokenizer.to_str()
    enc = Encoder(str(folder), "hf_fast", eos, vocab_size, hf_json=hf_json)
    got = enc.encode_batch(texts)
    if got != reference:
        bad = next(t for t, a, b in zip(texts, got, reference, strict=True) if a != b)
        raise InputError(
            f"{folder}: the tokenizer's Rust backend disagrees with AutoTokenizer on {json.dumps(bad)[:80]}; "
            "this tokenizer has Python-side preprocessing dapt does not support"
        )
    return enc
