"""Helpers (no tests) for the tokenizer tests: a finished fake clean stage, configs, a byte-level BPE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from conftest import make_docs

EXTRA = [
    "\n\nTotal:  $1,234.56\tnet of fees (€980; ¥12,000).",
    "\nNaïve café résumé — 日本語 — Ελληνικά.\n",
    "\n    indented   code_line(x)  # comment\n\n\n",
    "\nSection\n==============\n\n        - item one\n        - item two\n------------------------\n",
]


def corpus(kind: str, n: int, seed: int = 1) -> list[str]:
    """``make_docs`` documents with newlines, whitespace runs, currency and non-ASCII mixed in."""
    docs = make_docs(kind, n, seed=seed)
    return [d + EXTRA[i % len(EXTRA)] if i % 2 == 0 else d for i, d in enumerate(docs)]


def make_clean_stage(run_dir: Path, n: int = 60) -> dict[str, list[str]]:
    """Write ``<run>/clean/`` exactly as the runner leaves it: kept parquet, manifest, ``_DONE``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    for name, kind in [("fin", "domain"), ("gen", "general")]:
        docs = corpus(kind, n)
        folder = run_dir / "clean" / "kept" / name
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "id": [f"{name}-{i}" for i in range(n)],
                "source": [name] * n,
                "kind": [kind] * n,
                "text": docs,
                "bytes": [len(d.encode()) for d in docs],
            }
        )
        pq.write_table(table.slice(0, n // 2), folder / "part-00000.parquet")
        pq.write_table(table.slice(n // 2), folder / "part-00001.parquet")
        out[name] = docs
    (run_dir / "clean" / "manifest.json").write_text(
        json.dumps({"fingerprint": "x", "outputs": {"kept": "kept"}})
    )
    (run_dir / "clean" / "_DONE").write_text("x\n")
    return out


def write_config(tmp_path: Path, model: dict[str, Any], tokenizer: dict[str, Any]) -> Path:
    cfg = {
        "name": "toktest",
        "run_dir": str(tmp_path / "run"),
        "sources": [
            {"name": "fin", "kind": "domain", "paths": ["src/fin.jsonl"]},
            {"name": "gen", "kind": "general", "paths": ["src/gen.jsonl"]},
        ],
        "model": model,
        "tokenizer": tokenizer,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_bytelevel_bpe(out: Path, vocab_size: int = 400) -> Path:
    """A GPT-2-style byte-level BPE (like SmolLM2's) trained with ``tokenizers``, as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = make_docs("general", 300, seed=7) + make_docs("domain", 30, seed=7)
    tok.train_from_iterator(text, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token=None
    )
    hf.save_pretrained(str(out))
    return out
