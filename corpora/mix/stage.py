"""The ``mix`` stage: decontamination, tokenisation, token-exact mixing, packing.

Flow (docs/mixing.md has the reasoning and the output format):

1. ``prep`` (:mod:`prep`, cached in ``work_dir``; a mix-ratio, total, seed or ``seq_len`` change
   reuses it): one Ray Data pass over every kept document: drop the split stage's held-out ones, flag
   training documents that are exact or MinHash near-duplicates of held-out text and those sharing an
   n-gram with evaluation data, and tokenise the rest;
2. the solver turns supply (tokens per source), the target fraction and the total into per-source
   budgets;
3. the packer streams each source's documents (epochs of permutations, last document truncated to hit
   the budget exactly) into shuffled ``seq_len + 1`` blocks.

The block length ``seq_len`` is this stage's fact: train and eval read it from the manifest.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.corpora.clean.outputs import kept_files
from dapt.corpora.mix.config import MixConfig
from dapt.corpora.mix.pack import BlockWriter, source_stream
from dapt.corpora.mix.prep import OUT_SCHEMA, PREP_VERSION, build_prep
from dapt.corpora.mix.solver import MixPlan, SourceSupply, solve_mix
from dapt.corpora.split.stage import read_heldout_docs
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import atomic_write_json, read_json, resolve_output, stable_hash

# ----------------------------------------------------------------------------------------------- inputs


def tokenizer_path(ctx: Any) -> Path:
    tok_dir = ctx.upstream_dir("tokenizer")
    outputs = ctx.upstream_manifest("tokenizer").get("outputs") or {}
    if "tokenizer" not in outputs:
        raise InputError(
            f"{tok_dir / 'manifest.json'}: outputs.tokenizer is missing (re-run `dapt tokenizer`)"
        )
    return resolve_output(tok_dir, outputs["tokenizer"])


def eval_texts(ctx: Any) -> tuple[dict[str, list[str]], str | None]:
    """Texts of the evaluation data to decontaminate against, and why some could not be read (or None)."""
    mcfg: MixConfig = ctx.cfg.mix
    texts: dict[str, list[str]] = {}
    problem = None
    if not mcfg.decontamination.enabled:
        return texts, None
    tasks = list(mcfg.decontamination.tasks or [])
    if tasks:
        try:
            from dapt.eval.tasks_data import task_texts
        except ImportError as e:
            problem = f"dapt.eval.tasks_data is not available ({e}); tasks {tasks} were NOT checked"
            ctx.log.warning("decontamination: %s", problem)
        else:
            task_dirs = mcfg.decontamination.task_dirs
            texts.update({k: list(v) for k, v in task_texts(tasks, task_dirs=task_dirs).items()})
            empty = sorted(k for k, v in texts.items() if not v)
            if empty:
                problem = f"no item text could be loaded for tasks {empty}; they were NOT checked"
                ctx.log.warning("decontamination: %s", problem)
    for f in mcfg.decontamination.extra_files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise ConfigError(f"mix.decontamination.extra_files: {f}: no such file")
        items: list[str] = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if path.suffix == ".jsonl":
                    try:
                        items.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise InputError(
                            f"{path}:{lineno}: expected a JSON object with a 'text' field"
                        ) from None
                else:
                    items.append(line.rstrip("\n"))
        texts[path.name] = items
    return texts, problem


# ----------------------------------------------------------------------------------------------- stage


def _doc_table(prep: Path, columns: list[str], filters: list | None = None) -> pa.Table:
    return pq.read_table(prep / "docs", columns=columns, filters=filters, schema=OUT_SCHEMA)


def _source_tokens(prep: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat content tokens, offsets) of a source's training documents in canonical (key, id) order."""
    t = _doc_table(
        prep,
        ["id", "key", "tokens"],
        [("source", "=", source), ("status", "=", "train"), ("n_tokens", ">", 0)],
    )
    t = t.sort_by([("key", "ascending"), ("id", "ascending")])
    arr = t.column("tokens").combine_chunks()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks else pa.array([], pa.large_list(pa.uint32()))
    lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
    return flat, offsets


def _supply_stats(prep: Path) -> dict[str, dict[str, Any]]:
    t = _doc_table(prep, ["source", "status", "n_tokens", "n_bytes", "contam"])
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "docs": 0,
            "tokens": 0,
            "bytes": 0,
            "near_dup": 0,
            "contaminated": 0,
            "contam_by_task": Counter(),
        }
    )
    d = t.to_pydict()
    for src, status, ntok, nbytes, contam in zip(
        d["source"], d["status"], d["n_tokens"], d["n_bytes"], d["contam"], strict=True
    ):
        s = stats[src]
        if status == "train" and ntok > 0:
            s["docs"] += 1
            s["tokens"] += ntok + 1  # + EOS
            s["bytes"] += nbytes
        elif status == "near_dup":
            s["near_dup"] += 1
        elif status == "contaminated":
            s["contaminated"] += 1
        if status != "train":
            s["contam_by_task"].update(contam or [])
    return stats


def _prep_key(ctx: Any, texts: dict[str, list[str]], tok_path: Path) -> str:
    mcfg: MixConfig = ctx.cfg.mix
    return stable_hash(
        {
            "v": PREP_VERSION,
            "clean": ctx.upstream_manifest("clean").get("fingerprint"),
            "tokenizer": ctx.upstream_manifest("tokenizer").get("fingerprint"),
            "tokenizer_path": str(tok_path),
            "sources": [[s.name, s.kind] for s in ctx.cfg.sources],
            "split": ctx.upstream_manifest("split").get("fingerprint"),
            "near_dedup": mcfg.near_dedup.model_dump(mode="json"),
            "decontamination": mcfg.decontamination.model_dump(mode="json"),
            "eval_texts": stable_hash(texts),
        }
    )


def run(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see the module docstring)."""
    cfg = ctx.cfg
    mcfg: MixConfig = cfg.mix
    seed = mcfg.seed if mcfg.seed is not None else cfg.seed
    block_len = mcfg.seq_len + 1
    fraction = mcfg.target_domain_fraction
    kinds = {s.name: s.kind for s in cfg.sources}
    for name in {**mcfg.weights, **mcfg.max_epochs_per_source}:
        if name not in kinds:
            raise ConfigError(f"mix: per-source setting for {name!r}, which is not a configured source")

    files = kept_files(ctx)
    split_dir = ctx.require_output("split", "heldout", folder=True)
    tok_path = tokenizer_path(ctx)
    texts, decontam_problem = eval_texts(ctx)

    key = _prep_key(ctx, texts, tok_path)
    prep = ctx.work_dir / f"prep-{key[:16]}"
    if ctx.force or not (prep / "_DONE").exists():  # --force also redoes the cached pass
        for old in ctx.work_dir.glob("prep-*"):
            shutil.rmtree(old, ignore_errors=True)  # one cache at a time: it is as large as the corpus
        build_prep(ctx, files, read_heldout_docs(split_dir, kinds), tok_path, texts, prep)
        prep_reused = False
    else:
        prep_reused = True
        ctx.log.info("reusing prepared documents in %s", prep)
    info = read_json(prep / "prep.json")
    t0 = time.perf_counter()
    eos_id = int(info["encoder"]["eos_id"])
    if info["encoder"]["vocab_size"] > np.iinfo(np.uint32).max:
        raise InputError("vocabulary larger than uint32")

    stats = _supply_stats(prep)
    supplies = [
        SourceSupply(
            name=s.name,
            kind=s.kind,
            tokens=stats[s.name]["tokens"] if s.name in stats else 0,
            docs=stats[s.name]["docs"] if s.name in stats else 0,
            weight=mcfg.weights.get(s.name, s.weight),
            max_epochs=mcfg.max_epochs_per_source.get(s.name, mcfg.max_epochs),
        )
        for s in cfg.sources
    ]
    plan = solve_mix(
        supplies,
        fraction,
        block_len,
        total_tokens=mcfg.total_tokens,
        domain_epochs=mcfg.domain_epochs,
        allow_shortfall=mcfg.allow_shortfall,
    )
    for note in plan.notes:
        ctx.log.warning("%s", note)

    train_dir = ctx.out_dir / "train"
    writer = BlockWriter(train_dir, plan.n_blocks, block_len, seed)
    used: dict[str, dict[str, int]] = {}
    for sup in supplies:
        budget = plan.budgets.get(sup.name, 0)
        used[sup.name] = {"tokens": 0, "docs": 0}
        if budget == 0:
            continue
        flat, offsets = _source_tokens(prep, sup.name)
        rng = np.random.default_rng([int(seed), zlib.crc32(sup.name.encode())])
        for toks, starts, ndocs in source_stream(flat, offsets, budget, eos_id, rng):
            writer.add(toks, starts, sup.kind == "domain")
            used[sup.name]["tokens"] += int(toks.size)
            used[sup.name]["docs"] += ndocs
        del flat, offsets
    train_files = writer.close()
    t_pack = time.perf_counter() - t0
    achieved = writer.domain_tokens / writer.total_tokens

    atomic_write_json(
        train_dir / "index.json",
        {
            "format": "dapt-packed-v1",
            "files": train_files,
            "dtype": "uint32",
            "shape": [plan.n_blocks, block_len],
            "seq_len": mcfg.seq_len,
            "eos_id": eos_id,
            "doc_boundaries": "doc_starts[doc_offsets[r]:doc_offsets[r+1]] are the positions in row r where a "
            "document begins; every document (and a truncated final piece) ends with eos_id",
        },
    )

    per_source = {}
    for sup in supplies:
        st = stats.get(sup.name, {})
        u = used[sup.name]
        per_source[sup.name] = {
            "kind": sup.kind,
            "weight": sup.weight,
            "docs": sup.docs,
            "tokens_available": sup.tokens,
            "bytes_available": st.get("bytes", 0),
            "tokens_budget": plan.budgets.get(sup.name, 0),
            "tokens_used": u["tokens"],
            "docs_used": u["docs"],
            "epochs": round(u["tokens"] / sup.tokens, 6) if sup.tokens else 0.0,
            "max_epochs": sup.max_epochs,
            "share_of_total": round(u["tokens"] / writer.total_tokens, 6),
        }
    dom_used = sum(u["tokens"] for n, u in used.items() if kinds[n] == "domain")
    table = [
        {"quantity": "domain fraction", "target": fraction, "achieved": round(achieved, 6)},
        {"quantity": "total tokens", "target": plan.requested_total_tokens, "achieved": writer.total_tokens},
        {"quantity": "domain tokens", "target": round(fraction * writer.total_tokens), "achieved": dom_used},
        {
            "quantity": "general tokens",
            "target": round((1 - fraction) * writer.total_tokens),
            "achieved": writer.total_tokens - dom_used,
        },
    ] + [
        {"quantity": f"{n} tokens", "target": round(plan.ideal.get(n, 0.0)), "achieved": used[n]["tokens"]}
        for n in used
    ]

    # Only tasks whose items were actually indexed count as checked (an unloadable task has no texts).
    used_texts = info["decontamination"]["texts_used"]
    decontam = {t: 0 for t in info["decontamination"]["tasks"] if used_texts.get(t, 0) > 0}
    unchecked = (
        sorted(set(mcfg.decontamination.tasks or []) - set(decontam)) if mcfg.decontamination.enabled else []
    )
    for st in stats.values():
        for t, c in st["contam_by_task"].items():
            decontam[t] = decontam.get(t, 0) + c
    near_dup = {n: stats[n]["near_dup"] if n in stats else 0 for n in kinds}
    contaminated = {n: stats[n]["contaminated"] if n in stats else 0 for n in kinds}

    return {
        "outputs": {
            "train_tokens": "train/tokens.npy",
            "train_index": "train/index.json",
            "doc_offsets": "train/doc_offsets.npy",
            "doc_starts": "train/doc_starts.npy",
            "block_domain_tokens": "train/block_domain_tokens.npy",
        },
        "seq_len": mcfg.seq_len,
        "block_len": block_len,
        "n_blocks": plan.n_blocks,
        "vocab_size": int(info["encoder"]["vocab_size"]),
        "eos_id": eos_id,
        "encoder_backend": info["encoder"]["backend"],
        "total_tokens": writer.total_tokens,
        "mix": {
            "target_domain_fraction": fraction,
            "achieved_domain_fraction": achieved,
            "requested_total_tokens": plan.requested_total_tokens,
            "shortfall": plan.shortfall,
            "notes": plan.notes,
            "seed": seed,
            "per_source": per_source,
            "table": table,
        },
        "decontamination": decontam,
        "decontamination_info": {
            **info["decontamination"],
            "skipped": decontam_problem,
            "unchecked_tasks": unchecked,
            "dropped_by_source": contaminated,
        },
        "near_dedup": {
            "enabled": mcfg.near_dedup.enabled,
            "threshold": mcfg.near_dedup.threshold,
            "dropped_by_source": near_dup,
        },
        "timings": {**info["seconds"], "solve_and_pack": round(t_pack, 3), "prep_reused": prep_reused},
        "counts": {
            "near_dup_dropped": sum(near_dup.values()),
            "contaminated_dropped": sum(contaminated.values()),
            "train_docs_available": sum(s.docs for s in supplies),
            "doc_instances_packed": sum(u["docs"] for u in used.values()),
            "blocks": plan.n_blocks,
            "tokens": writer.total_tokens,
            "domain_tokens": writer.domain_tokens,
        },
    }


__all__ = ["run", "MixPlan"]
