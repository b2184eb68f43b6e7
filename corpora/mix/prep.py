"""The mix stage's cached pass over every kept document (one Ray task per slice of input).

Each training document is dropped if the split stage holds it out, flagged if it is an exact or
MinHash near-copy of held-out text or shares an n-gram with evaluation data, and otherwise tokenised
with the tokenizer stage's fastest exact encoder. The result (``prep/docs/*.parquet``) depends on the
clean, split and tokenizer outputs and the decontamination settings, not on the mix ratio, total or
seed, so re-mixing reuses it.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.corpora.mix.config import MixConfig
from dapt.corpora.mix.decontam import NgramIndex, build_index, match_documents
from dapt.corpora.mix.neardup import HeldoutShingles, best_matches
from dapt.corpora.mix.store import PART_DIR, part_name, token_dtype, write_raw
from dapt.corpora.split.select import HeldoutDoc, split_key
from dapt.corpora.split.stage import HeldoutRule, heldout_id
from dapt.pipeline.fsutil import atomic_write_json, atomic_write_parquet
from dapt.pipeline.progress import counting_files
from dapt.pipeline.ray_runtime import complete_in_tasks, init_ray  # sets the loopback env first
from dapt.pipeline.threads import use_cpus

PREP_VERSION = 2
"""Bump when the prep pass's output changes meaning, so stale caches are not reused (2: tokens moved
from a Parquet column to the token store's shards)."""

_READ_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("date", pa.string()),
    ]
)
OUT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("kind", pa.string()),
        ("key", pa.uint64()),
        ("status", pa.string()),
        ("n_tokens", pa.int64()),
        ("n_bytes", pa.int64()),
        ("part", pa.int32()),
        ("offset", pa.int64()),
        ("near_dup_of", pa.string()),
        ("contam", pa.list_(pa.string())),
    ]
)


# ------------------------------------------------------------------------------------------ Ray task


@dataclass(frozen=True)
class PrepState:
    """What every prep worker needs, put in the object store once and fetched once per worker process."""

    encoder: Any
    """The tokenizer stage's exact encoder (``dapt.tokenizer.encode.load_encoder``)."""
    heldout: HeldoutRule
    """The split stage's rule: its held-out documents (by id) and, with ``by: date``, every document dated
    after the cut never enter training."""
    heldout_keys: dict[int, list[int]]
    """Split key -> indices into ``heldout_texts`` (exact copies of held-out text, confirmed on the text)."""
    heldout_texts: list[str]
    heldout_names: list[str]
    """``source/id`` of each held-out text, recorded as ``near_dup_of``."""
    near_dedup: HeldoutShingles | None
    near_dedup_threshold: float
    ngram_index: NgramIndex | None
    eos_id: int
    token_dtype: np.dtype


_WORKER_STATE: dict[str, PrepState] = {}


def _state(ref_box: list) -> PrepState:
    """The broadcast state (encoder, held-out tables, n-gram index), fetched once per worker process."""
    import ray

    key = ref_box[0].hex()
    if key not in _WORKER_STATE:
        _WORKER_STATE.clear()
        _WORKER_STATE[key] = ray.get(ref_box[0])
    return _WORKER_STATE[key]


@dataclass(frozen=True)
class WorkUnit:
    """One prep task's slice of an input file: rows ``[start, stop)`` of one row group. It writes token
    shard ``part`` and the rows' table ``docs/part-<part>.parquet``."""

    part: int
    file: str
    row_group: int
    start: int
    stop: int


def work_units(files: list[str], docs_per_task: int) -> list[WorkUnit]:
    """Slices of the input files, each one Ray task writing one token shard, ``part``. Parts are numbered
    in input order, so (part, position in part) is the input order whatever ``docs_per_task`` is.

    Why not ``ray.data.read_parquet``: on Ray 2.60 it packed a few small files into a single block, and
    one block is one map task, so tokenisation ran on one core. Explicit slices make the parallelism
    the number of slices whatever the file layout (a row group split in several slices is read once per
    slice; reading is cheap next to tokenising).
    """
    units: list[WorkUnit] = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            for start in range(0, n, docs_per_task):
                units.append(WorkUnit(len(units), f, rg, start, min(n, start + docs_per_task)))
    return units


def read_unit(unit: WorkUnit) -> pa.Table:
    """The rows of one work unit, with the columns the prep pass reads (``date`` may be absent)."""
    pf = pq.ParquetFile(unit.file)
    names = set(pf.schema_arrow.names)
    cols = [c for c in _READ_SCHEMA.names if c in names]
    t = pf.read_row_group(unit.row_group, columns=cols).slice(unit.start, unit.stop - unit.start)
    if "date" not in names:
        t = t.append_column("date", pa.nulls(t.num_rows, pa.string()))
    return t.select(_READ_SCHEMA.names).cast(_READ_SCHEMA)


def prep_unit(unit: WorkUnit, ref_box: list, batch_size: int, store_dir: str) -> int:
    """One Ray task: read the unit's rows, run :func:`prep_batch` on them ``batch_size`` at a time, write
    the unit's training tokens (each document + EOS) to token shard ``part`` and its rows to
    ``docs/part-<part>.parquet``; returns the rows written. Both files go through temporary names, so a
    retried or killed task never leaves a half file and a retry cannot duplicate tokens."""
    use_cpus()  # a 1-CPU task encodes on one core (the tokenizer's pool would take them all)
    st = _state(ref_box)
    rows = read_unit(unit)
    tables: list[pa.Table] = []
    chunks: list[np.ndarray] = []
    filled = 0
    for s in range(0, rows.num_rows, batch_size):
        table, toks = prep_batch(rows.slice(s, batch_size), st, unit.part, filled)
        tables.append(table)
        chunks.append(toks)
        filled += int(toks.size)
    flat = np.concatenate(chunks) if chunks else np.zeros(0, st.token_dtype)
    write_raw(Path(store_dir) / part_name(unit.part), flat, st.token_dtype)
    table = pa.concat_tables(tables) if tables else OUT_SCHEMA.empty_table()
    atomic_write_parquet(Path(store_dir) / "docs" / f"part-{unit.part:06d}.parquet", table)
    return table.num_rows


def prep_batch(batch: pa.Table, st: PrepState, part: int = 0, filled: int = 0) -> tuple[pa.Table, np.ndarray]:
    """The per-batch work of the prep pass (pure function of the batch and the broadcast state): the
    documents' rows, and the tokens of its training documents, each followed by EOS, to append to token
    shard ``part`` at position ``filled`` (the rows' ``offset``)."""
    d = batch.to_pydict()
    n = batch.num_rows
    rule: HeldoutRule = st.heldout
    dates = d.get("date") or [None] * n
    rows = [i for i in range(n) if not rule.excludes(d["source"][i], str(d["id"][i]), dates[i])]
    texts = [d["text"][i] for i in rows]
    keys = [split_key(t) for t in texts]
    near: list[str | None] = [None] * len(rows)

    # Exact copies of held-out text (by key, confirmed on the text itself).
    hk: dict[int, list[int]] = st.heldout_keys
    htexts: list[str] = st.heldout_texts
    hids: list[str] = st.heldout_names
    for j, k in enumerate(keys):
        for h in hk.get(k, ()):
            if htexts[h] == texts[j]:
                near[j] = hids[h]
                break

    nd: HeldoutShingles | None = st.near_dedup
    if nd is not None and texts:
        for j, (h, _sim) in enumerate(best_matches(nd, texts, st.near_dedup_threshold)):
            if near[j] is None and h >= 0:
                near[j] = hids[h]

    index: NgramIndex | None = st.ngram_index
    contam = match_documents(index, texts) if index is not None else [[] for _ in texts]
    status = ["near_dup" if near[j] else ("contaminated" if contam[j] else "train") for j in range(len(rows))]
    train_j = [j for j, s in enumerate(status) if s == "train"]
    enc = st.encoder
    ids = enc.encode_batch([texts[j] for j in train_j]) if train_j else []
    n_tokens = [0] * len(rows)
    offsets = [-1] * len(rows)
    pos = filled
    for j, t in zip(train_j, ids, strict=True):
        if t:  # an empty document has no tokens to train on: no EOS either
            n_tokens[j], offsets[j] = len(t), pos
            pos += len(t) + 1
    eos = (st.eos_id,)
    pieces = itertools.chain.from_iterable(itertools.chain(t, eos) for t in ids if t)
    flat = np.fromiter(pieces, dtype=st.token_dtype, count=pos - filled)
    table = pa.table(
        {
            "source": pa.array([d["source"][i] for i in rows], pa.string()),
            "id": pa.array([str(d["id"][i]) for i in rows], pa.string()),
            "kind": pa.array([d["kind"][i] for i in rows], pa.string()),
            "key": pa.array(keys, pa.uint64()),
            "status": pa.array(status, pa.string()),
            "n_tokens": pa.array(n_tokens, pa.int64()),
            "n_bytes": pa.array([len(t.encode("utf-8", "surrogatepass")) for t in texts], pa.int64()),
            "part": pa.array([part] * len(rows), pa.int32()),
            "offset": pa.array(offsets, pa.int64()),
            "near_dup_of": pa.array(near, pa.string()),
            "contam": pa.array(contam, pa.list_(pa.string())),
        },
        schema=OUT_SCHEMA,
    )
    return table, flat


# ------------------------------------------------------------------------------------------------ prep


def build_prep(
    ctx: Any,
    files: dict[str, list[Path]],
    heldout: list[HeldoutDoc],
    tok_path: Path,
    texts: dict[str, list[str]],
    prep: Path,
    heldout_after: Any = None,
) -> None:
    """Run the prep pass into ``prep`` (a fresh folder), one Ray task per :class:`WorkUnit`, at most
    twice the cluster's CPUs in flight; marks it done last."""
    import ray

    from dapt.tokenizer.encode import load_encoder

    mcfg: MixConfig = ctx.cfg.mix
    tmp = prep.with_name(prep.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    # Probe the fast encode path on real text too (load_encoder checks it against the HF tokenizer).
    probes = [h.text[:2000] for h in heldout[:64]]
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
    for i, h in enumerate(heldout):
        hkeys[h.key].append(i)
    state = PrepState(
        encoder=encoder,
        heldout=HeldoutRule(frozenset(heldout_id(h.source, h.id) for h in heldout), heldout_after),
        heldout_keys=dict(hkeys),
        heldout_texts=[h.text for h in heldout],
        heldout_names=[f"{h.source}/{h.id}" for h in heldout],
        near_dedup=(
            HeldoutShingles.build([h.text for h in heldout], mcfg.near_dedup.ngram)
            if mcfg.near_dedup.enabled
            else None
        ),
        near_dedup_threshold=mcfg.near_dedup.threshold,
        ngram_index=index,
        eos_id=int(encoder.eos_id),
        token_dtype=token_dtype(int(encoder.vocab_size)),
    )

    all_files = [str(f) for fs in files.values() for f in fs]
    t0 = time.perf_counter()
    docs_dir = tmp / "docs"
    t_init = 0.0
    units: list[WorkUnit] = []
    if all_files:
        init_ray(ctx.cfg.ray)
        t_init = time.perf_counter() - t0
        ref = ray.put(state)
        units = work_units(all_files, mcfg.docs_per_task)
        calls = ((u, [ref], mcfg.encode_batch_size, str(tmp)) for u in units)
        with counting_files(
            ctx.run_dir, "mix", "tokenise", tmp / PART_DIR, "part-*.bin", len(units), "tasks"
        ):
            for _ in complete_in_tasks(prep_unit, calls, name="dapt:mix-prep"):
                pass
        del ref
    docs_dir.mkdir(exist_ok=True)
    if not any(docs_dir.glob("*.parquet")):
        pq.write_table(OUT_SCHEMA.empty_table(), docs_dir / "empty.parquet")

    t_ray = time.perf_counter() - t0
    atomic_write_json(
        tmp / "prep.json",
        {
            "seconds": {
                "load_encoder": round(t_enc, 3),
                "ray_init": round(t_init, 3),
                "ray_pass": round(t_ray - t_init, 3),
            },
            "encoder": {
                "backend": encoder.backend,
                "eos_id": encoder.eos_id,
                "vocab_size": encoder.vocab_size,
            },
            "store": {"dtype": state.token_dtype.str, "parts": len(units) if all_files else 0},
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
