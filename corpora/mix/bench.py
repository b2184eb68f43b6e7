"""Throughput of the mix stage on real text, against the bare minimum work (one sentencepiece encode).

    .venv/bin/python -m dapt.corpora.mix.bench [--mb 20] [--out /tmp/mixbench]

Builds a clean-stage output from the dictd files of Debian's ``dict-gcide`` (general) and ``dict-wn``
(stand-in for the domain side), trains an 8k BPE sentencepiece tokenizer on a sample, then times:

- ``baseline``: encoding every document once with sentencepiece in one process (what any packer must do);
- ``mix (cold)``: the whole stage: held-out selection, the pass of Ray tasks (near-dedup against held-out,
  13-gram decontamination, tokenisation), solving and packing;
- ``mix (warm)``: the stage again with another domain fraction (the prepared documents are reused).

Prints seconds, MB/s and ratios. Timings drift on a shared machine: compare numbers of the same run only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

DICTD = Path("/usr/share/dictd")


def _docs_from_dictd(name: str, mb: float, doc_bytes: int = 3000) -> list[str]:
    with gzip.open(DICTD / f"{name}.dict.dz", "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read(int(mb * 1e6))
    docs, cur, size = [], [], 0
    for line in raw.split("\n"):
        cur.append(line.rstrip())
        size += len(line) + 1
        if size >= doc_bytes:
            docs.append("\n".join(cur))
            cur, size = [], 0
    return docs


def _write_source(run: Path, name: str, kind: str, texts: list[str]) -> None:
    folder = run / "clean" / "kept" / name
    folder.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    for part in range(4):
        sl = slice(part * n // 4, (part + 1) * n // 4)
        t = texts[sl]
        pq.write_table(
            pa.table(
                {
                    "id": [f"{name}-{part}-{i}" for i in range(len(t))],
                    "source": [name] * len(t),
                    "kind": [kind] * len(t),
                    "text": t,
                    "bytes": [len(x.encode()) for x in t],
                    "date": pa.array([None] * len(t), pa.string()),
                    "pii": [0] * len(t),
                    "cluster_id": list(range(len(t))),
                }
            ),
            folder / f"part-{part:05d}.parquet",
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=20.0, help="MB of text per side")
    ap.add_argument("--out", default="/tmp/mixbench")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dapt.pipeline.ray_runtime import ray_env

    ray_env()  # before anything imports ray (transformers may): keeps the local Ray on loopback
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from dapt.pipeline.config import load_config
    from dapt.pipeline.stages import run_stage

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    run = out / "run"
    general = _docs_from_dictd("gcide", args.mb)
    domain = _docs_from_dictd("wn", args.mb)
    _write_source(run, "wn", "domain", domain)
    _write_source(run, "gcide", "general", general)
    (run / "clean" / "manifest.json").write_text(
        json.dumps({"fingerprint": "bench", "outputs": {"kept": "kept"}})
    )
    (run / "clean" / "_DONE").write_text("bench\n")

    sample = out / "sample.txt"
    sample.write_text("\n".join(domain[:1500] + general[:1500]))
    spm.SentencePieceTrainer.train(
        input=str(sample),
        model_prefix=str(out / "sp"),
        vocab_size=8000,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
        max_sentence_length=100000,
    )
    tok_dir = out / "tok"
    tok_dir.mkdir()
    shutil.copy(out / "sp.model", tok_dir / "tokenizer.model")
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tok_dir)
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "manifest.json").write_text(
        json.dumps({"fingerprint": "bench", "outputs": {"tokenizer": str(tok_dir)}})
    )
    (run / "tokenizer" / "_DONE").write_text("bench\n")

    texts = domain + general
    mb = sum(len(t.encode()) for t in texts) / 1e6
    sp = spm.SentencePieceProcessor(model_file=str(out / "sp.model"))
    t0 = time.perf_counter()
    n_tok = sum(len(x) for x in sp.encode(texts, out_type=int))
    base = time.perf_counter() - t0

    cfg_path = out / "bench.yaml"
    src = out / "src.jsonl"
    src.write_text('{"text": "x"}\n')
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "name": "bench",
                "run_dir": str(run),
                "sources": [
                    {"name": "wn", "kind": "domain", "paths": [str(src)]},
                    {"name": "gcide", "kind": "general", "paths": [str(src)]},
                ],
                "model": {"from_config": {}},
                "ray": {"num_cpus": 2, "object_store_memory_gb": 1.0},
                "train": {"seq_len": 2048},
                "mix": {"domain_fraction": 0.51},
            }
        )
    )
    t0 = time.perf_counter()
    m = run_stage(load_config(cfg_path), "mix", echo=None)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    m2 = run_stage(load_config(cfg_path, ["mix.domain_fraction=0.3"]), "mix", echo=None)
    warm = time.perf_counter() - t0

    print(f"corpus: {mb:.1f} MB, {len(texts)} docs, {n_tok:,} tokens; encoder backend {m['encoder_backend']}")
    print(f"baseline sentencepiece encode, 1 process: {base:.2f} s ({mb / base:.1f} MB/s)")
    print(
        f"mix (cold, 2 Ray CPUs incl. startup):     {cold:.2f} s ({mb / cold:.1f} MB/s), ratio to baseline {cold / base:.2f}"
    )
    print(f"mix (warm, fraction changed):             {warm:.2f} s, ratio to cold {warm / cold:.2f}")
    print(f"cold breakdown (s): {m['timings']}")
    print(
        f"blocks {m['n_blocks']}, achieved {m['mix']['achieved_domain_fraction']:.5f} (target 0.51); "
        f"rerun {m2['mix']['achieved_domain_fraction']:.5f} (target 0.3); near-dup dropped "
        f"{m['counts']['near_dup_dropped']}, held out {m['counts']['heldout_test_docs']} test docs"
    )


if __name__ == "__main__":
    main()
