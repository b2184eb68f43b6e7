"""Encode throughput: dapt's encode path vs raw sentencepiece vs the HF fast tokenizer in batch mode.

Same text for every path, one run each, ids checked identical; prints tokens/s and ratios. Timings on
a shared machine drift: compare ratios within one run, not absolute numbers across runs.

    .venv/bin/python bench/tokenize_speed.py [--mb 4] [--vocab 8000] [--batch 256]

Text: the demo corpus in data/demo/*.jsonl when it exists (real finance and general English), else
the synthetic test documents. Tokenizers: a Unigram model trained here with dapt's settings (a
sentencepiece-backed folder) and, when data/models/smollm2-135m exists, SmolLM2's byte-level BPE.
"""

from __future__ import annotations

import os
import sys

# This file shares its name with the stdlib ``tokenize`` module (which transformers imports): take
# its folder off the import path before anything else is imported.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def load_text(mb: float) -> list[str]:
    files = sorted((ROOT / "data" / "demo").glob("*.jsonl"))
    docs: list[str] = []
    if files:
        per_file = int(mb * 1e6 / len(files))
        for f in files:
            used = 0
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    t = json.loads(line).get("text") or ""
                    if used >= per_file:
                        break
                    docs.append(t)
                    used += len(t.encode())
    else:
        from conftest import make_docs

        while sum(len(d) for d in docs) < mb * 1e6:
            docs += make_docs("domain", 500, seed=len(docs)) + make_docs("general", 500, seed=len(docs))
    return docs


def timed(fn, texts: list[str], batch: int) -> tuple[list[list[int]], float]:
    t0 = time.perf_counter()
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(fn(texts[i : i + batch]))
    return out, time.perf_counter() - t0


def report(
    name: str, results: dict[str, tuple[list[list[int]], float]], ref: list[list[int]], ours: str
) -> None:
    """Tokens/s of each path, how many texts differ from the HF tokenizer's ids, and speed ratios."""
    tokens = sum(len(x) for x in ref)
    print(f"\n{name}: {len(ref)} texts, {tokens:,} tokens (reference: AutoTokenizer ids)")
    for label, (ids, sec) in results.items():
        differ = sum(a != b for a, b in zip(ids, ref, strict=True))
        print(f"  {label:<36} {tokens / sec / 1e6:7.3f} M tokens/s  ({sec:6.2f} s, {differ} texts differ)")
    base = results[ours][1]
    for label, (_, sec) in results.items():
        if label != ours:
            print(f"  ratio {ours} / {label}: {sec / base:.2f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from dapt.tokenizer.config import TokenizerConfig
    from dapt.tokenizer.encode import load_encoder
    from dapt.tokenizer.train import sp_to_hf, train_sentencepiece, write_lines

    docs = load_text(args.mb * 2)
    train, texts = docs[::2], docs[1::2]
    print(
        f"text: {len(texts)} documents, {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB; "
        f"cpus {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_lines(train, d / "lines.txt")
        t0 = time.perf_counter()
        model = train_sentencepiece(d / "lines.txt", d / "sp", TokenizerConfig(), args.vocab)
        print(f"trained Unigram {args.vocab} in {time.perf_counter() - t0:.1f} s")
        folder = sp_to_hf(model, d / "hf")
        enc = load_encoder(folder)
        fast = load_encoder(folder, exact=False)
        sp = spm.SentencePieceProcessor(model_file=str(model))
        hf = AutoTokenizer.from_pretrained(str(folder))

        def hf_call(b: list[str]) -> list[list[int]]:
            return hf(b, add_special_tokens=False, split_special_tokens=True)["input_ids"]

        results = {
            f"dapt encoder (default, {enc.backend})": timed(enc.encode_batch, texts, args.batch),
            f"dapt encoder (exact=False, {fast.backend})": timed(fast.encode_batch, texts, args.batch),
            "raw sentencepiece": timed(lambda b: sp.encode(b, out_type=int), texts, args.batch),
            "HF fast batch (__call__)": timed(hf_call, texts, args.batch),
        }
        ref = results["HF fast batch (__call__)"][0]
        report(
            f"Unigram {args.vocab} (dapt-trained), documents",
            results,
            ref,
            f"dapt encoder (default, {enc.backend})",
        )
        lines = [ln for t in texts for ln in t.split("\n") if ln.strip()]
        sp_lines = sp.encode(lines, out_type=int)
        hf_lines = hf_call(lines)
        differ = sum(a != b for a, b in zip(sp_lines, hf_lines, strict=True))
        print(f"  held-out lines: {len(lines)}, raw sentencepiece ids differ from HF on {differ}")

    smol = ROOT / "data" / "models" / "smollm2-135m"
    if (smol / "tokenizer.json").exists():
        enc = load_encoder(smol)
        hf = AutoTokenizer.from_pretrained(str(smol))
        results = {
            f"dapt encoder ({enc.backend})": timed(enc.encode_batch, texts, args.batch),
            "HF fast batch (__call__)": timed(
                lambda b: hf(b, add_special_tokens=False, split_special_tokens=True)["input_ids"],
                texts,
                args.batch,
            ),
        }
        ref = results["HF fast batch (__call__)"][0]
        report("SmolLM2 byte-level BPE 49,152", results, ref, f"dapt encoder ({enc.backend})")


if __name__ == "__main__":
    main()
