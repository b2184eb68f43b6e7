"""The ``mix`` stage: held-out splits, decontamination, tokenisation, token-exact mixing, packing.

Flow (docs/mixing.md has the reasoning and the output format):

1. ``prep`` (cached in ``work_dir``; a mix-ratio, total, seed or ``seq_len`` change reuses it):
   a. held-out selection by a stable text hash or by date, streamed from the clean Parquet (driver);
   b. one Ray Data pass over every kept document: drop held-out ones, flag training documents that are
      exact or MinHash near-duplicates of held-out text and those sharing an n-gram with evaluation
      data, and tokenise the rest with the tokenizer stage's fastest exact encoder.
2. the solver turns supply (tokens per source), the target fraction and the total into per-source
   budgets;
3. the packer streams each source's documents (epochs of permutations, last document truncated to hit
   the budget exactly) into shuffled ``seq_len + 1`` blocks.
"""

from __future__ import annotations

import itertools
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

from dapt.corpora.mix.config import MixConfig
from dapt.corpora.mix.decontam import NgramIndex, build_index, match_documents
from dapt.corpora.mix.neardup import HeldoutShingles, best_matches
from dapt.corpora.mix.pack import BlockWriter, source_stream
from dapt.corpora.mix.solver import MixPlan, SourceSupply, solve_mix
from dapt.corpora.mix.split import HeldoutSet, is_after, select_heldout, split_key
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import atomic_write_json, read_json, stable_hash
from dapt.pipeline.ray_runtime import init_ray  # also sets Ray's loopback environment before ray is imported

PREP_VERSION = 1
"""Bump when the prep pass's output changes meaning, so stale caches are not reused."""

_READ_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("date", pa.string()),
    ]
)
_OUT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("kind", pa.string()),
        ("key", pa.uint64()),
        ("status", pa.string()),
        ("n_tokens", pa.int64()),
        ("n_bytes", pa.int64()),
        ("tokens", pa.large_list(pa.uint32())),
        ("near_dup_of", pa.string()),
        ("contam", pa.list_(pa.string())),
    ]
)


# ----------------------------------------------------------------------------------------------- inputs


def _resolve(stage_dir: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else stage_dir / q


def kept_files(ctx: Any) -> dict[str, list[Path]]:
    """The clean stage's kept Parquet files per configured source (config order)."""
    clean_dir = ctx.upstream_dir("clean")
    outputs = ctx.upstream_manifest("clean").get("outputs") or {}
    if "kept" not in outputs:
        raise InputError(f"{clean_dir / 'manifest.json'}: outputs.kept is missing (re-run `dapt clean`)")
    kept = _resolve(clean_dir, outputs["kept"])
    if not kept.is_dir():
        raise InputError(f"{kept}: the clean stage's kept folder does not exist (re-run `dapt clean`)")
    out: dict[str, list[Path]] = {}
    for src in ctx.cfg.sources:
        files = sorted((kept / src.name).glob("*.parquet"))
        if not files:
            ctx.log.warning("source %s: no kept documents in %s", src.name, kept / src.name)
        out[src.name] = files
    extra = sorted(p.name for p in kept.iterdir() if p.is_dir() and p.name not in out)
    if extra:
        ctx.log.warning("ignoring kept folders of sources not in the config: %s", extra)
    return out


def tokenizer_path(ctx: Any) -> Path:
    tok_dir = ctx.upstream_dir("tokenizer")
    outputs = ctx.upstream_manifest("tokenizer").get("outputs") or {}
    if "tokenizer" not in outputs:
        raise InputError(
            f"{tok_dir / 'manifest.json'}: outputs.tokenizer is missing (re-run `dapt tokenizer`)"
        )
    return _resolve(tok_dir, outputs["tokenizer"])


def eval_texts(ctx: Any) -> tuple[dict[str, list[str]], str | None]:
    """Texts of the evaluation data to decontaminate against, and why some could not be read (or None)."""
    mcfg: MixConfig = ctx.cfg.mix
    texts: dict[str, list[str]] = {}
    problem = None
    if not mcfg.decontamination.enabled:
        return texts, None
    tasks = list(ctx.cfg.eval.tasks)
    if tasks:
        try:
            from dapt.eval.tasks_data import task_texts
        except ImportError as e:
            problem = f"dapt.eval.tasks_data is not available ({e}); tasks {tasks} were NOT checked"
            ctx.log.warning("decontamination: %s", problem)
        else:
            task_dirs = getattr(ctx.cfg.eval, "task_dirs", None)
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


# ------------------------------------------------------------------------------------- Ray Data worker

_WORKER_STATE: dict[str, Any] = {}


def _state(ref_box: list) -> dict[str, Any]:
    """The broadcast state (encoder, held-out tables, n-gram index), fetched once per worker process."""
    import ray

    key = ref_box[0].hex()
    if key not in _WORKER_STATE:
        _WORKER_STATE.clear()
        _WORKER_STATE[key] = ray.get(ref_box[0])
    return _WORKER_STATE[key]


def _list_array(seqs: list[list[int]]) -> pa.Array:
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.uint32, count=int(offsets[-1]))
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat, pa.uint32()))


def work_units(files: list[str], docs_per_task: int) -> list[dict[str, Any]]:
    """Slices of the input files, ``(file, row group, start, stop)``, each one Ray task.

    Why not ``ray.data.read_parquet``: on Ray 2.60 it packed a few small files into a single block, and
    one block is one map task, so tokenisation ran on one core. Explicit slices make the parallelism
    the number of slices whatever the file layout (a row group split in several slices is read once per
    slice; reading is cheap next to tokenising).
    """
    units = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            for start in range(0, n, docs_per_task):
                units.append(
                    {"file": f, "row_group": rg, "start": start, "stop": min(n, start + docs_per_task)}
                )
    return units


def read_unit(unit: dict[str, Any]) -> pa.Table:
    """The rows of one work unit, with the columns the prep pass reads (``date`` may be absent)."""
    pf = pq.ParquetFile(unit["file"])
    names = set(pf.schema_arrow.names)
    cols = [c for c in _READ_SCHEMA.names if c in names]
    t = pf.read_row_group(int(unit["row_group"]), columns=cols)
    t = t.slice(int(unit["start"]), int(unit["stop"]) - int(unit["start"]))
    if "date" not in names:
        t = t.append_column("date", pa.nulls(t.num_rows, pa.string()))
    return t.select(_READ_SCHEMA.names).cast(_READ_SCHEMA)


def process_units(units: pa.Table, ref_box: list, batch_size: int) -> pa.Table:
    """Ray Data UDF: read each unit's rows and run :func:`prep_batch` on them, ``batch_size`` at a time."""
    st = _state(ref_box)
    out = []
    for unit in units.to_pylist():
        rows = read_unit(unit)
        for s in range(0, rows.num_rows, batch_size):
            out.append(prep_batch(rows.slice(s, batch_size), st))
    return pa.concat_tables(out) if out else _OUT_SCHEMA.empty_table()


def prep_batch(batch: pa.Table, st: dict[str, Any]) -> pa.Table:
    """The per-batch work of the prep pass (pure function of the batch and the broadcast state)."""
    d = batch.to_pydict()
    n = batch.num_rows
    dates = d.get("date") or [None] * n
    after = st["after"]
    by_id: dict[tuple[str, str], str] = st["heldout_by_id"]
    rows = []
    for i in range(n):
        src, doc_id = d["source"][i], str(d["id"][i])
        if (src, doc_id) in by_id:
            continue
        if after is not None and is_after(dates[i], after):
            continue
        rows.append(i)
    texts = [d["text"][i] for i in rows]
    keys = [split_key(t) for t in texts]
    near: list[str | None] = [None] * len(rows)

    # Exact copies of held-out text (by key, confirmed on the text itself).
    hk: dict[int, list[int]] = st["heldout_keys"]
    htexts: list[str] = st["heldout_texts"]
    hids: list[str] = st["heldout_ids"]
    for j, k in enumerate(keys):
        for h in hk.get(k, ()):
            if htexts[h] == texts[j]:
                near[j] = hids[h]
                break

    nd: HeldoutShingles | None = st["near_dedup"]
    if nd is not None and texts:
        for j, (h, _sim) in enumerate(best_matches(nd, texts, st["near_dedup_threshold"])):
            if near[j] is None and h >= 0:
                near[j] = hids[h]

    index: NgramIndex | None = st["ngram_index"]
    contam = match_documents(index, texts) if index is not None else [[] for _ in texts]
    status = ["near_dup" if near[j] else ("contaminated" if contam[j] else "train") for j in range(len(rows))]
    train_j = [j for j, s in enumerate(status) if s == "train"]
    enc = st["encoder"]
    ids = enc.encode_batch([texts[j] for j in train_j]) if train_j else []
    tokens: list[list[int]] = [[] for _ in rows]
    for j, t in zip(train_j, ids, strict=True):
        tokens[j] = t
    return pa.table(
        {
            "source": pa.array([d["source"][i] for i in rows], pa.string()),
            "id": pa.array([str(d["id"][i]) for i in rows], pa.string()),
            "kind": pa.array([d["kind"][i] for i in rows], pa.string()),
            "key": pa.array(keys, pa.uint64()),
            "status": pa.array(status, pa.string()),
            "n_tokens": pa.array([len(t) for t in tokens], pa.int64()),
            "n_bytes": pa.array([len(t.encode("utf-8", "surrogatepass")) for t in texts], pa.int64()),
            "tokens": _list_array(tokens),
            "near_dup_of": pa.array(near, pa.string()),
            "contam": pa.array(contam, pa.list_(pa.string())),
        },
        schema=_OUT_SCHEMA,
    )


# ------------------------------------------------------------------------------------------------ prep


def _write_heldout(heldout: HeldoutSet, sources: list[Any], folder: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for src in sources:
        counts[src.name] = {}
        for split in ("validation", "test"):
            docs = heldout.of(src.name, split)
            path = folder / src.name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for h in docs:
                    rec = {"id": h.id, "source": h.source, "kind": h.kind, "text": h.text}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[src.name][split] = len(docs)
    return counts


def build_prep(
    ctx: Any, files: dict[str, list[Path]], tok_path: Path, texts: dict[str, list[str]], prep: Path
) -> None:
    """Run steps 1a and 1b into ``prep`` (a fresh folder); marks it done last."""
    import ray

    from dapt.tokenizer.encode import load_encoder

    mcfg: MixConfig = ctx.cfg.mix
    tmp = prep.with_name(prep.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    t0 = time.perf_counter()
    heldout = select_heldout(files, mcfg.split)
    held_counts = _write_heldout(heldout, ctx.cfg.sources, tmp / "heldout")
    ctx.log.info("held out: %s", held_counts)

    # Probe the fast encode path on real text too (load_encoder checks it against the HF tokenizer).
    probes = [h.text[:2000] for h in heldout.docs[:64]]
    t_held = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder = load_encoder(tok_path, probes=probes)
    t_enc = time.perf_counter() - t0
    ctx.log.info("encoder: %r (backend %s, eos %d)", encoder, encoder.backend, encoder.eos_id)

    index = None
    if texts:
        dc = mcfg.decontamination
        index = build_index(texts, dc.ngram, dc.min_words)
        ctx.log.info("decontamination index: %d n-grams from %s", len(index), index.texts_used)

    hkeys: dict[int, list[int]] = defaultdict(list)
    for i, h in enumerate(heldout.docs):
        hkeys[h.key].append(i)
    after = None
    if mcfg.split.by == "date" and mcfg.split.after:
        import datetime as dt

        after = dt.date.fromisoformat(mcfg.split.after[:10])
    state = {
        "encoder": encoder,
        "after": after,
        "heldout_by_id": heldout.by_id,
        "heldout_keys": dict(hkeys),
        "heldout_texts": [h.text for h in heldout.docs],
        "heldout_ids": [f"{h.source}/{h.id}" for h in heldout.docs],
        "near_dedup": (
            HeldoutShingles.build([h.text for h in heldout.docs], mcfg.near_dedup.ngram)
            if mcfg.near_dedup.enabled
            else None
        ),
        "near_dedup_threshold": mcfg.near_dedup.threshold,
        "ngram_index": index,
    }

    all_files = [str(f) for fs in files.values() for f in fs]
    t0 = time.perf_counter()
    docs_dir = tmp / "docs"
    t_init = 0.0
    if all_files:
        init_ray(ctx.cfg.ray)
        t_init = time.perf_counter() - t0
        import ray.data

        dctx = ray.data.DataContext.get_current()
        dctx.enable_progress_bars = False
        ref = ray.put(state)
        units = work_units(all_files, mcfg.docs_per_task)
        ds = ray.data.from_items(units, override_num_blocks=len(units))
        ds = ds.map_batches(
            process_units,
            fn_kwargs={"ref_box": [ref], "batch_size": mcfg.encode_batch_size},
            batch_size=1,
            batch_format="pyarrow",
        )
        ds.write_parquet(str(docs_dir))
        del ref
    docs_dir.mkdir(exist_ok=True)
    if not any(docs_dir.glob("*.parquet")):
        pq.write_table(_OUT_SCHEMA.empty_table(), docs_dir / "empty.parquet")

    t_ray = time.perf_counter() - t0
    atomic_write_json(
        tmp / "prep.json",
        {
            "seconds": {
                "heldout_selection": round(t_held, 3),
                "load_encoder": round(t_enc, 3),
                "ray_init": round(t_init, 3),
                "ray_pass": round(t_ray - t_init, 3),
            },
            "heldout": held_counts,
            "heldout_stats": heldout.stats,
            "encoder": {
                "backend": encoder.backend,
                "eos_id": encoder.eos_id,
                "vocab_size": encoder.vocab_size,
            },
            "decontamination": {
                "tasks": sorted(texts),
                "ngram": mcfg.decontamination.ngram,
                "min_words": mcfg.decontamination.min_words,
                "texts_used": index.texts_used if index else {},
                "texts_ignored": index.texts_ignored if index else {},
                "ngrams": len(index) if index else 0,
            },
        },
    )
    if prep.exists():
        shutil.rmtree(prep)
    tmp.rename(prep)
    (prep / "_DONE").write_text("ok\n")


# ----------------------------------------------------------------------------------------------- stage


def _doc_table(prep: Path, columns: list[str], filters: list | None = None) -> pa.Table:
    return pq.read_table(prep / "docs", columns=columns, filters=filters, schema=_OUT_SCHEMA)


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
            "split": mcfg.split.model_dump(mode="json"),
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
    block_len = cfg.train.seq_len + 1
    fraction = mcfg.target_domain_fraction
    kinds = {s.name: s.kind for s in cfg.sources}
    for name in {**mcfg.weights, **mcfg.max_epochs_per_source}:
        if name not in kinds:
            raise ConfigError(f"mix: per-source setting for {name!r}, which is not a configured source")

    files = kept_files(ctx)
    tok_path = tokenizer_path(ctx)
    texts, decontam_problem = eval_texts(ctx)

    key = _prep_key(ctx, texts, tok_path)
    prep = ctx.work_dir / f"prep-{key[:16]}"
    if ctx.force or not (prep / "_DONE").exists():  # --force also redoes the cached pass
        for old in ctx.work_dir.glob("prep-*"):
            shutil.rmtree(old, ignore_errors=True)  # one cache at a time: it is as large as the corpus
        build_prep(ctx, files, tok_path, texts, prep)
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

    heldout_dir = ctx.out_dir / "heldout"
    shutil.copytree(prep / "heldout", heldout_dir)
    atomic_write_json(
        train_dir / "index.json",
        {
            "format": "dapt-packed-v1",
            "files": train_files,
            "dtype": "uint32",
            "shape": [plan.n_blocks, block_len],
            "seq_len": cfg.train.seq_len,
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
    unchecked = sorted(set(ctx.cfg.eval.tasks) - set(decontam)) if mcfg.decontamination.enabled else []
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
            "heldout": "heldout",
        },
        "seq_len": cfg.train.seq_len,
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
        "heldout": info["heldout"],
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
            "heldout_validation_docs": sum(v["validation"] for v in info["heldout"].values()),
            "heldout_test_docs": sum(v["test"] for v in info["heldout"].values()),
            "near_dup_dropped": sum(near_dup.values()),
            "contaminated_dropped": sum(contaminated.values()),
            "train_docs_available": sum(s.docs for s in supplies),
            "doc_instances_packed": sum(u["docs"] for u in used.values()),
            "blocks": plan.n_blocks,
            "tokens": writer.total_tokens,
            "domain_tokens": writer.domain_tokens,
        },
    }


__all__ = ["run", "prep_batch", "work_units", "MixPlan"]
