"""Sampling cleaned text, training sentencepiece models, choosing the size, converting to HF format.

Training settings are chosen so that the HF conversion is exact and decoding is lossless: identity
normalisation (no NFKC folding), whitespace runs kept (``remove_extra_whitespaces=False``), byte
fallback, and newline/tab as user-defined symbols (sentencepiece trains on lines and would otherwise
never see them). With these, ``AutoTokenizer`` on the converted folder gives sentencepiece's ids.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dapt.corpora.split.stage import HeldoutRule
from dapt.pipeline.errors import ConfigError, InputError
from dapt.tokenizer.config import TokenizerConfig
from dapt.tokenizer.encode import SP_FILE

log = logging.getLogger("dapt.tokenizer")

MAX_SENTENCE_BYTES = 1 << 16
"""sentencepiece skips longer training lines; 64 KiB keeps long paragraphs of real text."""


@dataclass
class Sample:
    """Documents per source: ``train`` feeds tokenizer training, ``heldout`` the fertility report
    and round-trip checks (disjoint by a hash of the document id)."""

    kinds: dict[str, str] = field(default_factory=dict)
    train: dict[str, list[str]] = field(default_factory=dict)
    heldout: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    """Documents skipped per source because the split stage holds them out for evaluation."""

    def train_docs(self, kind: str | None = None) -> list[str]:
        return [d for s, docs in self.train.items() if kind is None or self.kinds[s] == kind for d in docs]

    def heldout_docs(self, kind: str | None = None) -> list[str]:
        return [d for s, docs in self.heldout.items() if kind is None or self.kinds[s] == kind for d in docs]


def _iter_docs(folder: Path) -> Iterator[tuple[str, str, object]]:
    """(id, text, date) of every document in a clean ``kept/<source>/`` folder, in file order."""
    import pyarrow.parquet as pq

    for f in sorted(folder.glob("*.parquet")):
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise InputError(f"{f}: cannot read parquet: {e}") from None
        cols = set(pf.schema_arrow.names)
        if "text" not in cols:
            raise InputError(f"{f}: no 'text' column (columns: {sorted(cols)})")
        use = ["text"] + [c for c in ("id", "date") if c in cols]
        n = 0
        for batch in pf.iter_batches(columns=use, batch_size=1024):
            texts = batch.column("text").to_pylist()
            ids = batch.column("id").to_pylist() if "id" in use else [None] * len(texts)
            dates = batch.column("date").to_pylist() if "date" in use else [None] * len(texts)
            for i, t, d in zip(ids, texts, dates, strict=True):
                n += 1
                if t:
                    yield (str(i) if i is not None else f"{f.name}:{n}"), t, d


def sample_corpus(
    kept_dir: Path,
    sources: list[tuple[str, str, float]],
    tcfg: TokenizerConfig,
    seed: int,
    exclude: HeldoutRule | None = None,
) -> Sample:
    """Draw the training sample and the held-out sample from the clean stage's kept documents.

    ``sources`` is ``[(name, kind, weight)]``. The byte budget ``sample_bytes`` is split
    ``domain_share`` / rest between domain and general sources (all of it to the side that exists),
    then by weight within a side. A document is held out when the hash of ``seed:id`` falls under
    ``heldout_fraction``, so the split is stable across runs and independent of file order.

    Documents ``exclude`` rules out (the split stage's rule: its validation and test documents, and with
    ``by: date`` everything dated after the cut) are never read into either sample: the evaluation text must not shape the vocabulary that is evaluated on it.
    The tokenizer's own ``heldout`` is a further cut of the training split, for its fertility checks.
    """
    import xxhash

    kinds = {k for _, k, _ in sources}
    side_share = {"domain": tcfg.domain_share, "general": 1.0 - tcfg.domain_share}
    if kinds == {"domain"}:
        side_share = {"domain": 1.0}
    elif kinds == {"general"}:
        side_share = {"general": 1.0}
    out = Sample()
    cut = int(tcfg.heldout_fraction * (1 << 64))
    for name, kind, weight in sources:
        side_weight = sum(w for _, k, w in sources if k == kind)
        budget = int(tcfg.sample_bytes * side_share.get(kind, 0.0) * weight / side_weight)
        folder = kept_dir / name
        out.kinds[name] = kind
        train: list[str] = []
        held: list[str] = []
        used = 0
        excluded = 0
        if folder.is_dir():
            for doc_id, text, date in _iter_docs(folder):
                if exclude is not None and exclude.excludes(name, doc_id, date):
                    excluded += 1
                    continue
                if xxhash.xxh64_intdigest(f"{seed}:{doc_id}".encode()) < cut:
                    if len(held) < tcfg.heldout_max_docs:
                        held.append(text)
                elif used < budget:
                    train.append(text)
                    used += len(text.encode("utf-8"))
                if used >= budget and len(held) >= tcfg.heldout_max_docs:
                    break
        out.train[name] = train
        out.heldout[name] = held
        out.excluded[name] = excluded
        log.info(
            "sample %s (%s): %d train docs (%d bytes), %d held out", name, kind, len(train), used, len(held)
        )
    if not any(out.train.values()):
        raise InputError(f"{kept_dir}: no cleaned documents found for sources {[s for s, _, _ in sources]}")
    return out


def write_lines(docs: list[str], path: Path) -> int:
    """Training text for sentencepiece: one line per document line (newlines are symbols, not text)."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            for line in d.split("\n"):
                if line.strip():
                    f.write(line.replace("\r", " ") + "\n")
                    n += 1
    return n


def train_sentencepiece(
    lines_file: Path,
    prefix: Path,
    tcfg: TokenizerConfig,
    vocab_size: int,
    model_type: str | None = None,
    user_defined_symbols: list[str] | None = None,
    hard_limit: bool = True,
) -> Path:
    """Train one sentencepiece model; returns the ``.model`` path. Raises ValueError when the text
    cannot support ``vocab_size`` pieces (sentencepiece's hard limit)."""
    import sentencepiece as spm

    symbols = tcfg.user_defined_symbols if user_defined_symbols is None else user_defined_symbols
    try:
        spm.SentencePieceTrainer.train(
            input=str(lines_file),
            model_prefix=str(prefix),
            model_type=model_type or tcfg.algorithm,
            vocab_size=vocab_size,
            character_coverage=tcfg.character_coverage,
            byte_fallback=tcfg.byte_fallback,
            split_digits=tcfg.split_digits,
            user_defined_symbols=list(symbols),
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            max_sentencepiece_length=tcfg.max_piece_length,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=tcfg.num_threads or os.cpu_count() or 1,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            hard_vocab_limit=hard_limit,
            minloglevel=2,
        )
    except RuntimeError as e:
        if "Vocabulary size" in str(e) or "vocab_size" in str(e):
            raise ValueError(str(e)) from None
        raise
    return prefix.with_suffix(".model")


def encoded_size_bits(sp_model: Path, docs: list[str]) -> tuple[int, float]:
    """Tokens of ``docs`` under the model and ``tokens * log2(vocab)``: the size of the encoded
    text in bits if every id were stored in a fixed-width code (BloombergGPT's criterion)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokens = sum(len(ids) for ids in sp.encode(docs, out_type=int)) if docs else 0
    return tokens, tokens * math.log2(sp.get_piece_size())


def train_with_sweep(
    lines_file: Path, work: Path, tcfg: TokenizerConfig, eval_docs: list[str]
) -> tuple[Path, dict]:
    """Train at ``vocab_size`` or, when unset, at every ``sweep_sizes`` entry, and keep the size
    that minimises the held-out encoded size. Returns the model path and the sweep table."""
    sizes = [tcfg.vocab_size] if tcfg.vocab_size else sorted(set(tcfg.sweep_sizes))
    table: list[dict] = []
    best: tuple[float, Path] | None = None
    for size in sizes:
        try:
            model = train_sentencepiece(lines_file, work / f"sp_{size}", tcfg, size)
        except ValueError as e:
            if tcfg.vocab_size:
                raise ConfigError(
                    f"tokenizer.vocab_size: {size} is too large for the training sample "
                    f"(raise tokenizer.sample_bytes or lower the size): {e}"
                ) from None
            table.append({"vocab_size": size, "feasible": False})
            continue
        tokens, bits = encoded_size_bits(model, eval_docs)
        table.append({"vocab_size": size, "feasible": True, "heldout_tokens": tokens, "bits": round(bits, 1)})
        log.info("sweep: vocab %d -> %d held-out tokens, %.0f bits", size, tokens, bits)
        if best is None or bits < best[0]:
            best = (bits, model)
    if best is None:
        raise ConfigError(
            f"tokenizer.sweep_sizes: none of {sizes} is feasible for a sample this small; "
            "add smaller sizes or raise tokenizer.sample_bytes"
        )
    return best[1], {"sizes": table, "chosen": _piece_size(best[1])}


def _piece_size(model: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()


def sp_to_hf(sp_model: Path, out_dir: Path) -> Path:
    """Save a sentencepiece model as an HF tokenizer folder (``tokenizer.json`` + config, and the
    ``tokenizer.model`` itself for the fast encode path).

    Goes through ``AutoTokenizer`` on a folder holding ``tokenizer.model``, the conversion that is
    known to be exact; ``LlamaTokenizer(vocab_file=...)`` silently builds an empty tokenizer in
    transformers 5.
    """
    from transformers import AutoTokenizer

    src = out_dir.parent / f".{out_dir.name}.src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copyfile(sp_model, src / SP_FILE)
    tok = AutoTokenizer.from_pretrained(str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    shutil.copyfile(sp_model, out_dir / SP_FILE)
    shutil.rmtree(src)
    return out_dir
