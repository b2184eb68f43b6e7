"""Config of the ``tokenizer`` section of the run config. (Imports pydantic only.)"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TokenizerConfig(BaseModel):
    """How the domain tokenizer is made and how the model's embeddings follow it (docs/tokenizer.md)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["base", "extend", "replace"] = "base"
    """``base`` keeps the model's tokenizer; ``extend`` adds up to ``new_tokens`` domain tokens without
    changing any existing id (ChipNeMo); ``replace`` trains a new tokenizer and transfers every
    embedding to it by sub-token means."""

    # --- training a sentencepiece model (``replace``, and the domain model ``extend`` draws from) ---
    algorithm: Literal["unigram", "bpe"] = "unigram"
    """sentencepiece model type of a trained tokenizer (BloombergGPT used Unigram)."""
    vocab_size: int | None = Field(default=None, ge=100, le=1_048_576)
    """Size of the tokenizer ``replace`` trains; None chooses it by ``sweep_sizes``."""
    sweep_sizes: list[int] = Field(default_factory=lambda: [8192, 16384, 32768, 65536])
    """Candidate sizes; the one minimising held-out encoded size (tokens x log2(vocab)) wins."""
    sample_bytes: int = Field(default=20_000_000, ge=1_000, le=10_000_000_000)
    """UTF-8 bytes of cleaned text sampled for training (sentencepiece holds it all in memory)."""
    domain_share: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of the training sample drawn from domain sources (the rest from general ones)."""
    split_digits: bool = True
    """One token per digit, as BloombergGPT: numbers tokenize consistently. Also keeps ``extend`` from
    adding tokens that contain digits (which would undo a digit-splitting base such as SmolLM2)."""
    byte_fallback: bool = True
    """Unknown characters become UTF-8 byte tokens instead of <unk>, so decoding is lossless."""
    character_coverage: float = Field(default=1.0, ge=0.9, le=1.0)
    """1.0 keeps every character seen; at 0.9995 rare symbols such as ``$`` fall to byte fallback."""
    user_defined_symbols: list[str] = Field(default_factory=lambda: ["\n", "\t"])
    """Strings that are always one token. Newline and tab by default: sentencepiece trains on lines,
    so without them every newline would cost a byte-fallback token."""
    max_piece_length: int = Field(default=16, ge=1, le=64)
    num_threads: int | None = Field(default=None, ge=1, le=256)
    """sentencepiece trainer threads; None uses every CPU."""

    # --- extend ---
    new_tokens: int = Field(default=4000, ge=1, le=1_000_000)
    """Most tokens ``extend`` adds (for a BPE base, intermediate merge tokens count too)."""
    domain_vocab_size: int | None = Field(default=None, ge=100, le=1_048_576)
    """Size of the domain-only Unigram model whose pieces ``extend`` considers for a Unigram base;
    None: ``2 * new_tokens`` capped by what the sample supports."""
    min_frequency: int = Field(default=2, ge=1)
    """A candidate must occur at least this often in the domain sample to be added."""

    # --- embedding initialisation ---
    output_init: Literal["zero", "mean"] = "zero"
    """Untied output rows of *added* tokens in ``extend``: zero (ChipNeMo) or the sub-token mean. In
    ``replace`` every output row is a sub-token mean (zero rows would erase the model's predictions)."""

    # --- held-out checks and fertility ---
    heldout_fraction: float = Field(default=0.02, gt=0.0, lt=1.0)
    """Share of documents (by hash of id) kept out of the training sample for fertility and checks."""
    heldout_max_docs: int = Field(default=500, ge=1, le=1_000_000)
    """Most held-out documents per source."""
    loss_check_docs: int = Field(default=4, ge=0, le=1000)
    """Held-out documents without new tokens on which base vs extended loss is measured (0: off)."""
    loss_check_tokens: int = Field(default=256, ge=8, le=8192)

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        if not self.sweep_sizes or any(s < 100 for s in self.sweep_sizes):
            raise ValueError("sweep_sizes must be a non-empty list of sizes >= 100")
        return self
