"""The ``clean`` stage: read, normalise, filter, redact PII and deduplicate, as Ray Data jobs.

Four phases, each a Ray Data job, so the same code runs on a laptop and on a cluster (where
``run_dir`` must be on a filesystem every node sees):

A. **Shards** (``map_batches`` over shard specs): stream each shard's records through its source's
   steps and write, under ``work_dir/shards/<n>/``, the surviving documents, the rejected ones and a
   compact ``meta`` table (rank, 128-bit exact hash, LSH band keys). A shard folder appears by an
   atomic rename only when complete, so a killed run resumes with the shards it finished.
B. **Dedup** (shuffles on meta only, never on text): exact duplicates by a ``groupby`` on hash
   buckets; near-duplicate candidates by a ``groupby`` on band-key buckets; candidate pairs
   verified by true shingle Jaccard in two ``groupby`` passes keyed by the shard of each side;
   connected components of exact + near edges by alternating large-star / small-star shuffles
   (Kiveris et al. 2014), so no machine holds the graph. Every decision keeps the lowest rank.
C. **Decisions** grouped by shard into ``work_dir/dedup/<n>.parquet``.
D. **Outputs** (``map_batches`` over shards): ``kept/<source>/part-<n>.parquet`` and
   ``rejected/<source>/part-<n>[-dup].parquet`` in ``out_dir``; the manifest's counts are summed
   from what was written, so docs in == kept + rejected is checked, not assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.corpora.clean.config import CleanConfig, StepSpec, default_profile, validate_steps
from dapt.corpora.clean.readers import (
    ShardSpec,
    count_newlines,
    parquet_row_offsets,
    plan_file,
    read_shard,
)
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.ray_runtime import init_ray  # sets Ray's environment before anything imports ray

KEPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("bytes", pa.int64()),
        ("date", pa.string()),
        ("pii", pa.string()),
        ("cluster_id", pa.string()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("cluster_id", pa.string()),
    ]
)
# Documents that passed the steps, waiting for dedup (work_dir only).
_DOCS_SCHEMA = pa.schema(
    [
        ("rank", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("bytes", pa.int64()),
        ("date", pa.string()),
        ("pii", pa.string()),
        ("line", pa.int64()),
    ]
)
_STATE = "state.json"
_SHARD_BITS = 32
_BATCH_BYTES = 32 << 20  # a batch also closes at this many input bytes (bounded memory)
_C1 = np.uint64(0x9E3779B97F4A7C15)


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


def _steps_json(validated: list[tuple[str, Any]]) -> list[dict]:
    return [{"name": n, "params": p.model_dump(mode="json")} for n, p in validated]


def _steps_from_json(items: list[dict]) -> list[tuple[str, Any]]:
    return validate_steps([StepSpec(**d) for d in items], "steps")


# ------------------------------------------------------------------------------------------------
# planning


def plan_shards(cfg: Any) -> list[ShardSpec]:
    """Shards in a fixed order. Line numbers of later JSONL/txt ranges come from newline counts
    computed in parallel Ray tasks (only for files large enough to be split)."""
    import ray

    shard_bytes = max(1, int(cfg.clean.shard_mb * (1 << 20)))
    pending: list[tuple[dict, tuple[str, int, int] | None]] = []
    for si, src in enumerate(cfg.sources):
        files = src.files()
        if not files:
            raise InputError(f"sources.{si}.paths: no file matches {src.paths}")
        for f in files:
            path = str(f)
            ranges = plan_file(path, src.format, shard_bytes)
            rows0 = parquet_row_offsets(path, ranges) if src.format == "parquet" else None
            for k, (start, end) in enumerate(ranges):
                base = dict(
                    source_idx=si,
                    source=src.name,
                    kind=src.kind,
                    path=path,
                    fmt=src.format,
                    start=start,
                    end=end,
                    line0=rows0[k] if rows0 else 1,
                    txt_mode=src.txt_mode,
                    text_field=src.text_field,
                    id_field=src.id_field,
                    date_field=src.date_field,
                )
                count = (path, ranges[k - 1][0], start) if (rows0 is None and k > 0) else None
                pending.append((base, count))
    counter = ray.remote(count_newlines)
    refs = {i: counter.remote(*c) for i, (_, c) in enumerate(pending) if c is not None}
    counts = dict(zip(refs, ray.get(list(refs.values())), strict=True)) if refs else {}
    specs: list[ShardSpec] = []
    line0: dict[str, int] = {}
    for i, (base, c) in enumerate(pending):
        if c is not None:
            line0[base["path"]] += counts[i]
            base["line0"] = line0[base["path"]]
        elif base["fmt"] != "parquet":
            line0[base["path"]] = 1
        specs.append(ShardSpec(shard=i, **base))
    return specs


# ------------------------------------------------------------------------------------------------
# phase A: one shard through the steps


def _rejected_row(
    spec: ShardSpec, rid: str | None, text: str | None, line: int, step: str, reason: str, max_chars: int
) -> dict:
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


def process_shard(spec: ShardSpec, steps_json: list[dict], cc: dict, shard_dir: Path) -> dict:
    """Read, clean and hash one shard; write it atomically to ``shard_dir``. Returns its summary."""
    import xxhash

    from dapt.corpora.clean.minhash import MinHasher, band_keys
    from dapt.corpora.clean.readers import doc_id
    from dapt.corpora.clean.steps import apply_batch, build_steps

    steps = build_steps(_steps_from_json(steps_json))
    nd = cc["near_dedup"]
    hasher = MinHasher(nd["num_perm"], nd["ngram"], seed=0) if nd["enabled"] else None
    max_chars = cc["rejected_text_chars"]
    batch_docs = cc["batch_docs"]
    # A private temporary folder per attempt: a retried or speculative attempt of the same shard
    # (or a straggler from a killed driver) never writes into another attempt's files.
    tmp = shard_dir.with_name(f".{shard_dir.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    docs_w = pq.ParquetWriter(tmp / "docs.parquet", _DOCS_SCHEMA)
    rej_w = pq.ParquetWriter(tmp / "rejected.parquet", REJECTED_SCHEMA)
    meta_w: pq.ParquetWriter | None = None
    docs_in = bytes_in = 0
    reasons: Counter = Counter()
    base_rank = spec.shard << _SHARD_BITS

    def flush(kept: list[dict], rejected: list[dict]) -> None:
        nonlocal meta_w
        if rejected:
            rej_w.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA))
        if not kept:
            return
        docs_w.write_table(pa.Table.from_pylist(kept, schema=_DOCS_SCHEMA))
        texts = [d["text"] for d in kept]
        hi = np.empty(len(kept), np.uint64)
        lo = np.empty(len(kept), np.uint64)
        for i, t in enumerate(texts):
            h = xxhash.xxh3_128_intdigest(t.encode("utf-8"))
            hi[i] = h >> 64
            lo[i] = h & 0xFFFFFFFFFFFFFFFF
        cols: dict[str, Any] = {
            "rank": pa.array([d["rank"] for d in kept], pa.int64()),
            "xhi": pa.array(hi),
            "xlo": pa.array(lo),
            "source_idx": pa.array(np.full(len(kept), spec.source_idx, np.int32)),
        }
        if hasher is not None:
            sigs = hasher.signatures(texts)
            cols["has_sig"] = pa.array(MinHasher.has_shingles(sigs))
            keys = band_keys(sigs, nd["bands"], nd["rows"])
            for b in range(nd["bands"]):
                cols[f"b{b}"] = pa.array(keys[:, b])
        table = pa.table(cols)
        if meta_w is None:
            meta_w = pq.ParquetWriter(tmp / "meta.parquet", table.schema)
        meta_w.write_table(table)

    pending: list[tuple[int, Any]] = []  # (rank, record) of readable documents in this batch
    rejected: list[dict] = []

    def process() -> None:
        kept = []
        results = apply_batch(steps, [rec.text or "" for _, rec in pending])
        for (rank, rec), (text, step, reason, pii) in zip(pending, results, strict=True):
            if reason is not None:
                reasons[reason] += 1
                rejected.append(_rejected_row(spec, rec.id, text, rec.line, step or "", reason, max_chars))
                continue
            kept.append(
                {
                    "rank": rank,
                    "id": rec.id or doc_id(spec.source, spec.path, rec.line),
                    "text": text,
                    "bytes": len(text.encode("utf-8")),
                    "date": rec.date,
                    "pii": json.dumps(dict(sorted(pii.items())), separators=(",", ":")),
                    "line": rec.line,
                }
            )
        flush(kept, rejected)
        pending.clear()
        rejected.clear()

    batch_bytes = 0
    for pos, rec in enumerate(read_shard(spec)):
        docs_in += 1
        bytes_in += rec.nbytes
        if rec.reason is not None:
            reasons[rec.reason] += 1
            rejected.append(_rejected_row(spec, rec.id, rec.text, rec.line, "read", rec.reason, max_chars))
        else:
            pending.append((base_rank + pos, rec))
            batch_bytes += rec.nbytes
        if len(pending) + len(rejected) >= batch_docs or batch_bytes >= _BATCH_BYTES:
            process()
            batch_bytes = 0
    process()
    docs_w.close()
    rej_w.close()
    if meta_w is not None:
        meta_w.close()
    summary = {
        "shard": spec.shard,
        "source": spec.source,
        "docs_in": docs_in,
        "bytes_in": bytes_in,
        "rejected": dict(reasons),
        "passed": docs_in - sum(reasons.values()),
    }
    (tmp / "summary.json").write_text(json.dumps(summary))
    try:
        os.rename(tmp, shard_dir)  # the shard exists only once complete
    except OSError:
        if not (shard_dir / "summary.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another attempt finished first: same content
    return summary


def _phase_a_batch(batch: dict[str, np.ndarray], steps: dict, cc: dict, work: str) -> dict[str, np.ndarray]:
    out = []
    for s in batch["spec"]:
        spec = ShardSpec(**json.loads(s))
        summary = process_shard(
            spec, steps[str(spec.source_idx)], cc, Path(work) / "shards" / f"{spec.shard:06d}"
        )
        out.append(json.dumps(summary))
    return {"summary": np.array(out, dtype=object)}


# ------------------------------------------------------------------------------------------------
# phase B: dedup shuffles (meta only)


def _mix(x: np.ndarray) -> np.ndarray:
    from dapt.corpora.clean.minhash import _mix64

    return _mix64(x.astype(np.uint64))


def _bucket(x: np.ndarray, buckets: int) -> np.ndarray:
    return (_mix(x) % np.uint64(buckets)).astype(np.int64)


def _empty_edges() -> dict[str, np.ndarray]:
    return {"u": np.zeros(0, np.int64), "v": np.zeros(0, np.int64)}


def _exact_group(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Within a hash bucket: every document whose 128-bit hash repeats points at the lowest rank."""
    hi, lo, rank = batch["xhi"], batch["xlo"], batch["rank"]
    if rank.size < 2:
        return _empty_edges()
    order = np.lexsort((rank, lo, hi))
    hi, lo, rank = hi[order], lo[order], rank[order]
    same = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    if not same.any():
        return _empty_edges()
    run_start = np.r_[0, np.flatnonzero(~same) + 1]
    run_id = np.cumsum(np.r_[True, ~same]) - 1
    keeper = rank[run_start][run_id]
    dup = rank != keeper
    return {"u": rank[dup], "v": keeper[dup]}


def _explode_bands(
    batch: dict[str, np.ndarray], bands: int, scope: str, buckets: int
) -> dict[str, np.ndarray]:
    """One row per (document, band): key, rank, exact hash; documents without shingles are left out."""
    ok = batch["has_sig"].astype(bool)
    rank = batch["rank"][ok]
    xhi = batch["xhi"][ok]
    keys = np.stack([batch[f"b{b}"][ok] for b in range(bands)], axis=1).astype(np.uint64)
    if scope == "source":
        keys = keys ^ (batch["source_idx"][ok].astype(np.uint64)[:, None] + np.uint64(1)) * _C1
    key = keys.reshape(-1)
    return {
        "key": key.view(np.int64),
        "rank": np.repeat(rank, bands),
        "xhi": np.repeat(xhi, bands),
        "bucket": _bucket(key, buckets),
    }


def _band_group(batch: dict[str, np.ndarray], max_pairs: int, collapse_exact: bool) -> dict[str, np.ndarray]:
    """Candidate pairs (a < b) among documents that share a band key.

    Identical texts are collapsed to their lowest rank first (the exact pass links them), so a
    boilerplate document repeated a million times does not make a million-squared pair list.
    """
    key, rank, xhi = batch["key"], batch["rank"], batch["xhi"]
    if key.size < 2:
        return _empty_edges()
    order = np.lexsort((rank, xhi, key))
    key, rank, xhi = key[order], rank[order], xhi[order]
    if collapse_exact:
        first = np.r_[True, (key[1:] != key[:-1]) | (xhi[1:] != xhi[:-1])]
        key, rank = key[first], rank[first]
    brk = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    sizes = np.diff(brk)
    us, vs = [], []
    for i in np.flatnonzero(sizes > 1):
        members = rank[brk[i] : brk[i + 1]]  # sorted ascending
        k = members.size
        if k <= max_pairs:
            a, b = np.triu_indices(k, 1)
            us.append(members[a])
            vs.append(members[b])
        else:
            us.append(np.full(k - 1, members[0]))
            vs.append(members[1:])
    if not us:
        return _empty_edges()
    return {"u": np.concatenate(us), "v": np.concatenate(vs)}


def _shard_texts(work: str, shard: int, ranks: np.ndarray) -> dict[int, str]:
    """Texts of the given ranks of one shard, streamed in batches (never the whole shard at once)."""
    out: dict[int, str] = {}
    pf = pq.ParquetFile(Path(work) / "shards" / f"{shard:06d}" / "docs.parquet")
    for batch in pf.iter_batches(batch_size=2048, columns=["rank", "text"]):
        r = batch.column(0).to_numpy()
        idx = np.flatnonzero(np.isin(r, ranks))
        if idx.size:
            texts = batch.column(1).take(pa.array(idx)).to_pylist()
            out.update(zip(r[idx].tolist(), texts, strict=True))
    return out


def _verify_a(batch: dict[str, np.ndarray], work: str, ngram: int) -> dict[str, np.ndarray]:
    """Group = one shard of the pairs' first side: attach the shingle array of ``a``."""
    from dapt.corpora.clean.minhash import shingle_array

    u, v = batch["u"], batch["v"]
    if u.size == 0:
        return {"u": u, "v": v, "sh": np.zeros(0, object), "sb": np.zeros(0, np.int64)}
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)
    u, v = pairs[:, 0], pairs[:, 1]
    texts = _shard_texts(work, int(u[0] >> _SHARD_BITS), np.unique(u))
    cache = {r: shingle_array(t, ngram).tobytes() for r, t in texts.items()}
    sh = np.array([cache[int(r)] for r in u], dtype=object)
    return {"u": u, "v": v, "sh": sh, "sb": v >> _SHARD_BITS}


def _verify_b(batch: dict[str, np.ndarray], work: str, ngram: int, threshold: float) -> dict[str, np.ndarray]:
    """Group = one shard of the pairs' second side: true Jaccard against ``b``; keep >= threshold."""
    from dapt.corpora.clean.minhash import jaccard_arrays, shingle_array

    u, v, sh = batch["u"], batch["v"], batch["sh"]
    if u.size == 0:
        return _empty_edges()
    texts = _shard_texts(work, int(v[0] >> _SHARD_BITS), np.unique(v))
    cache = {r: shingle_array(t, ngram) for r, t in texts.items()}
    keep = np.array(
        [
            jaccard_arrays(np.frombuffer(s, np.uint64), cache[int(b)]) >= threshold
            for s, b in zip(sh, v, strict=True)
        ],
        dtype=bool,
    )
    return {"u": u[keep], "v": v[keep]}


def _both_directions(batch: dict[str, np.ndarray], buckets: int) -> dict[str, np.ndarray]:
    u = np.concatenate([batch["u"], batch["v"]])
    v = np.concatenate([batch["v"], batch["u"]])
    return {"u": u, "v": v, "bucket": _bucket(u, buckets)}


def _star_group(batch: dict[str, np.ndarray], large: bool) -> dict[str, np.ndarray]:
    """One large-star or small-star step for every node ``u`` in the group (edges both directions).

    large-star: each neighbour ``v > u`` is linked to ``m = min(N(u) + u)``.
    small-star: ``u`` and each neighbour ``v < u`` are linked to ``m = min({v < u} + u)``.
    Output edges are (bigger, smaller), deduplicated within the group, with a checksum column.
    """
    u, v = batch["u"], batch["v"]
    if u.size == 0:
        return {"u": u, "v": v, "h": np.zeros(0, np.int64)}
    e = np.unique(np.stack([u, v], axis=1), axis=0)  # sorted by u, then v
    u, v = e[:, 0], e[:, 1]
    if not large:
        small = v < u
        u, v = u[small], v[small]
        # every node keeps a self entry so it is linked to its minimum smaller neighbour
        nodes = np.unique(e[:, 0])
        u = np.concatenate([u, nodes])
        v = np.concatenate([v, nodes])
        o = np.lexsort((v, u))
        u, v = u[o], v[o]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    m = np.minimum.reduceat(v, starts)
    m_of = np.repeat(m, np.diff(np.r_[starts, u.size]))
    m_of = np.minimum(m_of, u)
    if large:
        sel = v > u
    else:
        sel = v != m_of
    a, b = v[sel], m_of[sel]
    if a.size:
        out = np.unique(np.stack([a, b], axis=1), axis=0)
        a, b = out[:, 0], out[:, 1]
    h = (_mix(a.astype(np.uint64) * _C1 + b.astype(np.uint64)) >> np.uint64(34)).astype(np.int64)
    return {"u": a, "v": b, "h": h}


def _labels_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Final star edges (v -> m): label rows for v and for the centre m itself."""
    u, v = batch["u"], batch["v"]
    node = np.concatenate([u, v])
    label = np.concatenate([v, v])
    return {"node": node, "label": label, "exact": np.zeros(node.size, np.int8), "shard": node >> _SHARD_BITS}


def _exact_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    u = batch["u"]
    return {
        "node": u,
        "label": np.full(u.size, -1, np.int64),
        "exact": np.ones(u.size, np.int8),
        "shard": u >> _SHARD_BITS,
    }


def _write_decisions(batch: dict[str, np.ndarray], work: str) -> dict[str, np.ndarray]:
    """Group = one shard: per document rank, its cluster label and whether it goes (exact/near)."""
    node, label, exact = batch["node"], batch["label"], batch["exact"]
    if node.size == 0:
        return {"shard": np.zeros(0, np.int64), "n": np.zeros(0, np.int64)}
    shard = int(node[0] >> _SHARD_BITS)
    order = np.argsort(node, kind="stable")
    node, label, exact = node[order], label[order], exact[order]
    starts = np.flatnonzero(np.r_[True, node[1:] != node[:-1]])
    n = node[starts]
    lab = np.maximum.reduceat(label, starts)
    ex = np.maximum.reduceat(exact, starts).astype(bool)
    status = np.where(n == lab, "keeper", np.where(ex, "exact", "near"))
    t = pa.table({"rank": n, "label": lab, "status": status.astype(str)})
    d = Path(work) / "dedup"
    d.mkdir(exist_ok=True)
    tmp = d / f".{shard:06d}.parquet.tmp"
    pq.write_table(t, tmp)
    os.replace(tmp, d / f"{shard:06d}.parquet")
    return {"shard": np.array([shard]), "n": np.array([n.size])}


def _dedup(ctx: Any, shards: list[ShardSpec], work: Path) -> dict[str, Any]:
    """Phase B+C. Returns dedup statistics for the manifest."""
    import ray.data

    cc: CleanConfig = ctx.cfg.clean
    nd = cc.near_dedup
    P, B = cc.shuffle_partitions, cc.buckets
    log = ctx.log
    dd = work / "dedup"
    if dd.exists():
        shutil.rmtree(dd)
    dd.mkdir()
    metas = [str(work / "shards" / f"{s.shard:06d}" / "meta.parquet") for s in shards]
    metas = [m for m in metas if Path(m).exists()]
    stats: dict[str, Any] = {"exact_edges": 0, "candidate_pairs": 0, "near_edges": 0, "cc_rounds": 0}
    if not metas:
        return stats
    t0 = time.perf_counter()
    edge_sets = []
    exact_ds = None
    if cc.exact_dedup:
        exact_ds = (
            ray.data.read_parquet(metas, columns=["rank", "xhi", "xlo"])
            .map_batches(lambda b: {**b, "bucket": _bucket(b["xhi"], B)}, batch_format="numpy")
            .groupby("bucket", num_partitions=P)
            .map_groups(_exact_group, batch_format="numpy")
            .materialize()
        )
        stats["exact_edges"] = exact_ds.count()
        if stats["exact_edges"]:
            edge_sets.append(exact_ds)
        log.info(
            "exact dedup: %d duplicate documents (%.1fs)", stats["exact_edges"], time.perf_counter() - t0
        )
    if nd.enabled:
        t1 = time.perf_counter()
        cols = ["rank", "xhi", "source_idx", "has_sig"] + [f"b{b}" for b in range(nd.bands)]
        cand = (
            ray.data.read_parquet(metas, columns=cols)
            .map_batches(
                _explode_bands,
                fn_kwargs={"bands": nd.bands, "scope": nd.scope, "buckets": B},
                batch_format="numpy",
            )
            .groupby("bucket", num_partitions=P)
            .map_groups(
                _band_group,
                fn_kwargs={"max_pairs": nd.max_bucket_pairs, "collapse_exact": cc.exact_dedup},
                batch_format="numpy",
            )
            .materialize()
        )
        stats["candidate_pairs"] = cand.count()
        if stats["candidate_pairs"] and not nd.verify:
            near = cand  # every LSH candidate pair is an edge
            stats["near_edges"] = stats["candidate_pairs"]
            edge_sets.append(near)
        elif stats["candidate_pairs"]:
            near = (
                cand.map_batches(lambda b: {**b, "sa": b["u"] >> _SHARD_BITS}, batch_format="numpy")
                .groupby("sa", num_partitions=P)
                .map_groups(_verify_a, fn_kwargs={"work": str(work), "ngram": nd.ngram}, batch_format="numpy")
                .groupby("sb", num_partitions=P)
                .map_groups(
                    _verify_b,
                    fn_kwargs={"work": str(work), "ngram": nd.ngram, "threshold": nd.threshold},
                    batch_format="numpy",
                )
                .materialize()
            )
            stats["near_edges"] = near.count()
            if stats["near_edges"]:
                edge_sets.append(near)
        log.info(
            "near dedup: %d candidate pairs, %d verified (%.1fs)",
            stats["candidate_pairs"],
            stats["near_edges"],
            time.perf_counter() - t1,
        )
    if not edge_sets:
        return stats
    # Connected components: alternate large-star and small-star until the edge set is stable.
    t2 = time.perf_counter()
    edges = edge_sets[0] if len(edge_sets) == 1 else edge_sets[0].union(*edge_sets[1:])
    edges = edges.select_columns(["u", "v"]).materialize()
    prev = None
    for rnd in range(cc.max_cc_rounds):
        for large in (True, False):
            edges = (
                edges.map_batches(_both_directions, fn_kwargs={"buckets": B}, batch_format="numpy")
                .groupby("bucket", num_partitions=P)
                .map_groups(_star_group, fn_kwargs={"large": large}, batch_format="numpy")
                .materialize()
            )
        n = edges.count()
        check = (n, edges.sum("h") if n else 0)
        stats["cc_rounds"] = rnd + 1
        if check == prev:
            break
        prev = check
    else:
        raise RuntimeError(f"connected components did not converge in {cc.max_cc_rounds} rounds")
    log.info("connected components: %d rounds (%.1fs)", stats["cc_rounds"], time.perf_counter() - t2)
    rows = edges.map_batches(_labels_rows, batch_format="numpy")
    if exact_ds is not None and stats["exact_edges"]:
        rows = rows.union(exact_ds.map_batches(_exact_rows, batch_format="numpy"))
    rows.groupby("shard", num_partitions=P).map_groups(
        _write_decisions, fn_kwargs={"work": str(work)}, batch_format="numpy"
    ).materialize()
    return stats


# ------------------------------------------------------------------------------------------------
# phase D: outputs


def finalize_shard(spec: ShardSpec, work: Path, out: Path, max_chars: int, batch_rows: int = 2048) -> dict:
    """Write one shard's kept and rejected Parquet files, streaming its documents in batches (memory
    stays bounded even for a shard that is one huge compressed file); return what was written."""
    sd = work / "shards" / f"{spec.shard:06d}"
    dec_rank = np.zeros(0, np.int64)
    dec_status = np.zeros(0, object)
    dec_label = np.zeros(0, np.int64)
    dec = work / "dedup" / f"{spec.shard:06d}.parquet"
    if dec.exists():
        d = pq.read_table(dec)  # one row per document in a duplicate cluster: small
        dec_rank = d.column("rank").to_numpy()
        dec_status = d.column("status").to_numpy(zero_copy_only=False)
        dec_label = d.column("label").to_numpy()
    kd = Path(out) / "kept" / spec.source
    rd = Path(out) / "rejected" / spec.source
    kd.mkdir(parents=True, exist_ok=True)
    rd.mkdir(parents=True, exist_ok=True)
    kept_w = pq.ParquetWriter(kd / f"part-{spec.shard:06d}.parquet", KEPT_SCHEMA)
    dup_w: pq.ParquetWriter | None = None
    rej_counts: Counter = Counter()
    pii: Counter = Counter()
    kept_n = kept_bytes = clusters = 0
    for batch in pq.ParquetFile(sd / "docs.parquet").iter_batches(batch_size=batch_rows):
        docs = pa.Table.from_batches([batch])
        n = docs.num_rows
        rank = docs.column("rank").to_numpy()
        status = np.full(n, "keep", dtype=object)
        label = np.full(n, -1, dtype=np.int64)
        if dec_rank.size:
            pos = np.searchsorted(dec_rank, rank)
            pos = np.minimum(pos, dec_rank.size - 1)
            hit = dec_rank[pos] == rank
            status[hit] = dec_status[pos[hit]]
            label[hit] = dec_label[pos[hit]]
        cluster = np.array([None if lb < 0 else f"{lb:016x}" for lb in label], dtype=object)
        keep = (status == "keep") | (status == "keeper")
        clusters += int((status == "keeper").sum())
        kidx = pa.array(np.flatnonzero(keep))
        kept = pa.table(
            {
                "id": docs.column("id").take(kidx),
                "source": pa.array([spec.source] * len(kidx), pa.string()),
                "kind": pa.array([spec.kind] * len(kidx), pa.string()),
                "text": docs.column("text").take(kidx),
                "bytes": docs.column("bytes").take(kidx),
                "date": docs.column("date").take(kidx),
                "pii": docs.column("pii").take(kidx),
                "cluster_id": pa.array(cluster[keep].tolist(), pa.string()),
            },
            schema=KEPT_SCHEMA,
        )
        kept_w.write_table(kept)
        kept_n += kept.num_rows
        kept_bytes += int(pc.sum(kept.column("bytes")).as_py() or 0)
        for s in kept.column("pii").to_pylist():
            if s != "{}":
                pii.update(json.loads(s))
        didx = np.flatnonzero(~keep)
        if didx.size:
            st = status[didx]
            texts = docs.column("text").take(pa.array(didx)).to_pylist()
            dup = pa.table(
                {
                    "id": docs.column("id").take(pa.array(didx)),
                    "source": pa.array([spec.source] * didx.size, pa.string()),
                    "kind": pa.array([spec.kind] * didx.size, pa.string()),
                    "text": pa.array([t[:max_chars] if max_chars else None for t in texts], pa.string()),
                    "file": pa.array([spec.path] * didx.size, pa.string()),
                    "line": docs.column("line").take(pa.array(didx)),
                    "step": pa.array([f"dedup_{s}" for s in st], pa.string()),
                    "reason": pa.array([f"duplicate:{s}" for s in st], pa.string()),
                    "cluster_id": pa.array(cluster[didx].tolist(), pa.string()),
                },
                schema=REJECTED_SCHEMA,
            )
            if dup_w is None:
                dup_w = pq.ParquetWriter(rd / f"part-{spec.shard:06d}-dup.parquet", REJECTED_SCHEMA)
            dup_w.write_table(dup)
            rej_counts.update(dup.column("reason").to_pylist())
    kept_w.close()
    if dup_w is not None:
        dup_w.close()
    rej_src = sd / "rejected.parquet"
    rej_dst = rd / f"part-{spec.shard:06d}.parquet"
    try:
        os.link(rej_src, rej_dst)
    except OSError:
        shutil.copyfile(rej_src, rej_dst)
    rej_counts.update(pq.read_table(rej_src, columns=["reason"]).column("reason").to_pylist())
    return {
        "shard": spec.shard,
        "source": spec.source,
        "kept": kept_n,
        "kept_bytes": kept_bytes,
        "rejected": dict(rej_counts),
        "clusters": clusters,
        "pii": dict(pii),
    }


def _phase_d_batch(
    batch: dict[str, np.ndarray], work: str, out: str, max_chars: int
) -> dict[str, np.ndarray]:
    res = [
        json.dumps(finalize_shard(ShardSpec(**json.loads(s)), Path(work), Path(out), max_chars))
        for s in batch["spec"]
    ]
    return {"summary": np.array(res, dtype=object)}


# ------------------------------------------------------------------------------------------------
# the stage


def _prepare_work(ctx: Any) -> Path:
    """Reuse ``work_dir`` only if it was made for this exact fingerprint (config + inputs)."""
    from dapt.pipeline.stages import compute_fingerprint

    fp, _ = compute_fingerprint(ctx.cfg, ctx.spec)
    work = Path(ctx.work_dir)
    state = work / _STATE
    if state.exists():
        try:
            same = json.loads(state.read_text()).get("fingerprint") == fp
        except ValueError:
            same = False
        if same and not ctx.force:
            for stale in (work / "shards").glob(".*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            return work
    for child in work.iterdir() if work.exists() else []:
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / "shards").mkdir()
    state.write_text(json.dumps({"fingerprint": fp}))
    return work


def _ray_data_setup() -> None:
    from ray.data.context import DataContext, ShuffleStrategy

    dctx = DataContext.get_current()
    dctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    dctx.enable_progress_bars = False
    dctx.print_on_execution_start = False


def run(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see module docstring)."""
    import ray.data

    cfg = ctx.cfg
    cc: CleanConfig = cfg.clean
    validated = resolve_steps(cfg)
    work = _prepare_work(ctx)
    ray_info = init_ray(cfg.ray)
    _ray_data_setup()
    log = ctx.log
    t0 = time.perf_counter()
    shards = plan_shards(cfg)
    log.info("%d shards from %d sources", len(shards), len(cfg.sources))

    # Phase A: shards not finished by an earlier attempt.
    todo = [s for s in shards if not (work / "shards" / f"{s.shard:06d}").exists()]
    steps = {str(i): _steps_json(v) for i, v in enumerate(validated)}
    cc_json = cc.model_dump(mode="json")
    fail_after = ctx.extra.get("fail_after_shards")
    if todo:
        ds = ray.data.from_items(
            [{"spec": json.dumps(s.to_dict())} for s in todo], override_num_blocks=len(todo)
        )
        ds = ds.map_batches(
            _phase_a_batch,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"steps": steps, "cc": cc_json, "work": str(work)},
        )
        for done, _ in enumerate(ds.iter_rows(), start=1):
            if fail_after is not None and done >= fail_after:
                raise RuntimeError(f"injected failure after {done} shards (test hook)")
    t_a = time.perf_counter()
    log.info(
        "phase A: %d shards processed (%d reused) in %.1fs", len(todo), len(shards) - len(todo), t_a - t0
    )
    summaries = [
        json.loads((work / "shards" / f"{s.shard:06d}" / "summary.json").read_text()) for s in shards
    ]

    dstats = _dedup(ctx, shards, work)
    t_b = time.perf_counter()

    out = Path(ctx.out_dir)
    ds = ray.data.from_items(
        [{"spec": json.dumps(s.to_dict())} for s in shards], override_num_blocks=len(shards)
    )
    finals = [
        json.loads(r["summary"])
        for r in ds.map_batches(
            _phase_d_batch,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"work": str(work), "out": str(out), "max_chars": cc.rejected_text_chars},
        ).iter_rows()
    ]
    t_d = time.perf_counter()
    return _manifest(
        cfg,
        summaries,
        finals,
        dstats,
        ray_info,
        {"read_filter": t_a - t0, "dedup": t_b - t_a, "write": t_d - t_b},
    )


def _manifest(
    cfg: Any, summaries: list[dict], finals: list[dict], dstats: dict, ray_info: dict, timings: dict
) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for src in cfg.sources:
        sources[src.name] = {
            "kind": src.kind,
            "docs_in": 0,
            "bytes_in": 0,
            "kept": 0,
            "kept_bytes": 0,
            "rejected": Counter(),
            "duplicate_clusters": 0,
            "pii": Counter(),
        }
    for s in summaries:
        e = sources[s["source"]]
        e["docs_in"] += s["docs_in"]
        e["bytes_in"] += s["bytes_in"]
    for f in finals:
        e = sources[f["source"]]
        e["kept"] += f["kept"]
        e["kept_bytes"] += f["kept_bytes"]
        e["rejected"].update(f["rejected"])
        e["duplicate_clusters"] += f["clusters"]
        e["pii"].update(f["pii"])
    totals: dict[str, Any] = {
        "docs_in": 0,
        "bytes_in": 0,
        "kept": 0,
        "kept_bytes": 0,
        "rejected": 0,
        "duplicate_clusters": 0,
    }
    for name, e in sources.items():
        rejected = sum(e["rejected"].values())
        if e["docs_in"] != e["kept"] + rejected:
            raise RuntimeError(
                f"clean: counts do not reconcile for source {name}: {e['docs_in']} in, "
                f"{e['kept']} kept + {rejected} rejected"
            )
        e["rejected"] = dict(sorted(e["rejected"].items()))
        e["pii"] = dict(sorted(e["pii"].items()))
        for k in ("docs_in", "bytes_in", "kept", "kept_bytes", "duplicate_clusters"):
            totals[k] += e[k]
        totals["rejected"] += rejected
    mb = totals["bytes_in"] / 1e6
    secs = sum(timings.values())
    return {
        "outputs": {"kept": "kept", "rejected": "rejected"},
        "sources": sources,
        "totals": totals,
        "counts": {"docs_in": totals["docs_in"], "kept": totals["kept"], "rejected": totals["rejected"]},
        "dedup": dstats,
        "shards": len(summaries),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "throughput": {
            "mb_per_s": round(mb / secs, 3) if secs else None,
            "docs_per_s": round(totals["docs_in"] / secs, 1) if secs else None,
        },
        "ray": ray_info,
    }
