"""Phase A of the clean stage: run each shard through its source's steps.

A shard is the unit of parallel work and of resumption (``plan`` numbers them). This module turns the
config into validated step lists and streams one shard's records through the steps into
``work_dir/shards/<n>/`` (surviving documents, rejected rows, the compact ``meta`` table the dedup
shuffles read, and a summary). It knows nothing of dedup or of the final outputs: those phases only
read the files it leaves, whose layout is in ``schema``.

A file that breaks while its shard is read (``BadFileError``) is not an exception crossing Ray: the
shard's summary carries it as ``bad_file`` and the driver decides (``clean.on_bad_file``). Ray Data
wraps a task's exception in a multi-line ``RayTaskError(UserCodeException)`` that no longer holds the
original error object (checked with Ray 2.60), so only data comes back intact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.corpora.clean.config import CleanConfig, StepSpec, default_profile, validate_steps
from dapt.corpora.clean.readers import FieldStats, ShardSpec, read_shard
from dapt.corpora.clean.schema import BATCH_BYTES, DOCS_SCHEMA, REJECTED_SCHEMA, SHARD_BITS, shard_dir
from dapt.pipeline.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# configuration


def resolve_steps(cfg: Any) -> list[list[tuple[str, Any]]]:
    """Validated step list per source: its own ``steps``, else ``clean.profiles[kind]``, else the
    built-in profile. Bad params raise ConfigError naming ``sources.N.steps.M.params.KEY``."""
    cc: CleanConfig = cfg.clean
    where = cfg.config_path or "config"
    out = []
    for i, src in enumerate(cfg.sources):
        if src.steps is not None:
            specs, key = src.steps, f"sources.{i}.steps"
        elif src.kind in cc.profiles:
            specs, key = cc.profiles[src.kind], f"clean.profiles.{src.kind}"
        else:
            specs, key = default_profile(src.kind), f"(default {src.kind} profile)"
        try:
            out.append(validate_steps(list(specs), key))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    nd = cc.near_dedup
    if nd.enabled and nd.bands * nd.rows > nd.num_perm:
        raise ConfigError(
            f"{where}: clean.near_dedup.bands: bands x rows = {nd.bands * nd.rows} exceeds num_perm {nd.num_perm}"
        )
    return out


def steps_json(validated: list[tuple[str, Any]]) -> list[dict]:
    """A validated step list as JSON-able data (what a Ray task receives)."""
    return [{"name": n, "params": p.model_dump(mode="json")} for n, p in validated]


def steps_from_json(items: list[dict]) -> list[tuple[str, Any]]:
    return validate_steps([StepSpec(**d) for d in items], "steps")


@dataclass(frozen=True)
class ShardParams:
    """What a phase-A task needs of the ``clean:`` section (a Ray payload: module-level, picklable)."""

    batch_docs: int
    rejected_text_chars: int
    on_bad_file: str
    near_dedup: bool
    num_perm: int
    ngram: int
    bands: int
    rows: int

    @classmethod
    def from_config(cls, cc: CleanConfig) -> ShardParams:
        nd = cc.near_dedup
        return cls(
            batch_docs=cc.batch_docs,
            rejected_text_chars=cc.rejected_text_chars,
            on_bad_file=cc.on_bad_file,
            near_dedup=nd.enabled,
            num_perm=nd.num_perm,
            ngram=nd.ngram,
            bands=nd.bands,
            rows=nd.rows,
        )


# ------------------------------------------------------------------------------------------------
# one shard through the steps


def rejected_row(
    spec: ShardSpec, rid: str | None, text: str | None, line: int, step: str, reason: str, max_chars: int
) -> dict:
    """One row of ``REJECTED_SCHEMA`` for a document a step (or the reader) rejected."""
    from dapt.corpora.clean.readers import doc_id

    return {
        "id": rid or doc_id(spec.source, spec.path, line),
        "source": spec.source,
        "kind": spec.kind,
        "text": None if text is None or max_chars == 0 else text[:max_chars],
        "file": spec.path,
        "line": line,
        "step": step,
        "reason": reason,
        "cluster_id": None,
    }


def _hash128(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """128-bit xxh3 of each text's UTF-8 bytes as (high, low) uint64 arrays."""
    import xxhash

    hi = np.empty(len(texts), np.uint64)
    lo = np.empty(len(texts), np.uint64)
    for i, t in enumerate(texts):
        h = xxhash.xxh3_128_intdigest(t.encode("utf-8"))
        hi[i] = h >> 64
        lo[i] = h & 0xFFFFFFFFFFFFFFFF
    return hi, lo


def _summary(spec: ShardSpec, **kw: Any) -> dict[str, Any]:
    return {
        "shard": spec.shard,
        "source": spec.source,
        "source_idx": spec.source_idx,
        "file": spec.path,
        **kw,
    }


def _publish(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)  # the shard exists only once complete
    except OSError:
        if not (dest / "summary.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another attempt finished first: same content


def process_shard(spec: ShardSpec, steps: list[dict], params: ShardParams, dest: Path) -> dict:
    """Read, clean and hash one shard; write it atomically to the folder ``dest``. Returns its summary.

    ``steps`` is the source's step list as :func:`steps_json` data. Each kept document gets two exact
    hashes, of its key text (``dedup.keytext``: before profile-specific edits) and of its cleaned text,
    and MinHash band keys of its key text. A broken file (``BadFileError``) gives a summary with
    ``bad_file`` and nothing else: with ``on_bad_file: skip`` that summary is the finished shard, with
    ``fail`` nothing is written (a rerun reads the file again)."""
    from dapt.corpora.clean.dedup.keytext import KeyText, cleaned_is_key
    from dapt.corpora.clean.minhash import MinHasher, band_keys
    from dapt.corpora.clean.readers import BadFileError, doc_id
    from dapt.corpora.clean.steps import apply_batch, build_steps

    validated = steps_from_json(steps)
    step_fns = build_steps(validated)
    key_of = None if cleaned_is_key(validated) else KeyText()
    hasher = MinHasher(params.num_perm, params.ngram, seed=0) if params.near_dedup else None
    max_chars = params.rejected_text_chars
    batch_docs = params.batch_docs
    # A private temporary folder per attempt: a retried or speculative attempt of the same shard
    # (or a straggler from a killed driver) never writes into another attempt's files.
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    docs_w = pq.ParquetWriter(tmp / "docs.parquet", DOCS_SCHEMA)
    rej_w = pq.ParquetWriter(tmp / "rejected.parquet", REJECTED_SCHEMA)
    meta_w: pq.ParquetWriter | None = None
    docs_in = bytes_in = 0
    reasons: Counter = Counter()
    base_rank = spec.shard << SHARD_BITS
    fields = FieldStats() if spec.fmt == "jsonl" else None

    def flush(kept: list[dict], keys: list[str], rejected: list[dict]) -> None:
        nonlocal meta_w
        if rejected:
            rej_w.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA))
        if not kept:
            return
        docs_w.write_table(pa.Table.from_pylist(kept, schema=DOCS_SCHEMA))
        khi, klo = _hash128(keys)
        xhi, xlo = _hash128([d["text"] for d in kept]) if key_of is not None else (khi, klo)
        cols: dict[str, Any] = {
            "rank": pa.array([d["rank"] for d in kept], pa.int64()),
            "khi": pa.array(khi),
            "klo": pa.array(klo),
            "xhi": pa.array(xhi),
            "xlo": pa.array(xlo),
            "source_idx": pa.array(np.full(len(kept), spec.source_idx, np.int32)),
        }
        if hasher is not None:
            sigs = hasher.signatures(keys)
            cols["has_sig"] = pa.array(MinHasher.has_shingles(sigs))
            bkeys = band_keys(sigs, params.bands, params.rows)
            for b in range(params.bands):
                cols[f"b{b}"] = pa.array(bkeys[:, b])
        table = pa.table(cols)
        if meta_w is None:
            meta_w = pq.ParquetWriter(tmp / "meta.parquet", table.schema)
        meta_w.write_table(table)

    pending: list[tuple[int, Any]] = []  # (rank, record) of readable documents in this batch
    rejected: list[dict] = []

    def process() -> None:
        kept, keys = [], []
        results = apply_batch(step_fns, [rec.text or "" for _, rec in pending])
        for (rank, rec), (text, step, reason, pii) in zip(pending, results, strict=True):
            if reason is not None:
                reasons[reason] += 1
                rejected.append(rejected_row(spec, rec.id, text, rec.line, step or "", reason, max_chars))
                continue
            key = text if key_of is None else key_of(rec.text or "")
            keys.append(key)
            kept.append(
                {
                    "rank": rank,
                    "id": rec.id or doc_id(spec.source, spec.path, rec.line),
                    "text": text,
                    "bytes": len(text.encode("utf-8")),
                    "date": rec.date,
                    "pii": json.dumps(dict(sorted(pii.items())), separators=(",", ":")),
                    "line": rec.line,
                    "ktext": None if key == text else key,
                }
            )
        flush(kept, keys, rejected)
        pending.clear()
        rejected.clear()

    batch_bytes = 0
    try:
        for pos, rec in enumerate(read_shard(spec, fields)):
            docs_in += 1
            bytes_in += rec.nbytes
            if rec.reason is not None:
                reasons[rec.reason] += 1
                rejected.append(rejected_row(spec, rec.id, rec.text, rec.line, "read", rec.reason, max_chars))
            else:
                pending.append((base_rank + pos, rec))
                batch_bytes += rec.nbytes
            if len(pending) + len(rejected) >= batch_docs or batch_bytes >= BATCH_BYTES:
                process()
                batch_bytes = 0
        process()
    except BadFileError as e:
        for w in (docs_w, rej_w, meta_w):
            if w is not None:
                w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        summary = _summary(spec, bad_file={"file": e.path, "reason": e.detail})
        if params.on_bad_file == "skip":
            tmp.mkdir(parents=True)
            (tmp / "summary.json").write_text(json.dumps(summary))
            _publish(tmp, dest)
        return summary
    docs_w.close()
    rej_w.close()
    if meta_w is not None:
        meta_w.close()
    summary = _summary(
        spec,
        docs_in=docs_in,
        bytes_in=bytes_in,
        rejected=dict(reasons),
        passed=docs_in - sum(reasons.values()),
        fields=fields.to_dict() if fields is not None else None,
    )
    (tmp / "summary.json").write_text(json.dumps(summary))
    _publish(tmp, dest)
    return summary


def process_batch(
    batch: dict[str, np.ndarray], steps: dict[str, list[dict]], params: ShardParams, work: str
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` body: each row's ``spec`` (ShardSpec JSON) through :func:`process_shard`;
    ``steps`` maps a source index (as a string) to its :func:`steps_json` list."""
    out = []
    for s in batch["spec"]:
        spec = ShardSpec(**json.loads(s))
        summary = process_shard(spec, steps[str(spec.source_idx)], params, shard_dir(work, spec.shard))
        out.append(json.dumps(summary))
    return {"summary": np.array(out, dtype=object)}
