"""The clean stage's on-disk contract: table schemas, the rank layout and the work-dir paths.

Every phase writes or reads these files, often in another process or on another node, so their
layout lives in one module that imports nothing of the stage: phase A (``shards``), the dedup
shuffles (``dedup``) and phase D (``finalize``) all depend on it, and it depends on none of them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

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
DOCS_SCHEMA = pa.schema(
    [
        ("rank", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("bytes", pa.int64()),
        ("date", pa.string()),
        ("pii", pa.string()),
        ("line", pa.int64()),
        ("ktext", pa.string()),
    ]
)
"""Documents that passed the steps, waiting for dedup (work_dir only). ``ktext`` is the document's key
text (``dedup.keytext``) where it differs from ``text`` and null where it is the same (the usual case):
near-duplicate verification compares key texts, as the MinHash signatures do."""

WORK_FORMAT = 2
"""Version of the work-dir layout (shard files, meta columns, summaries). A work dir of another version
is rebuilt: the stage fingerprint follows config and inputs, not code, so it cannot tell. 2: key-text
hashes (``khi``/``klo``) and ``ktext``, file summaries (``file``, ``fields``, ``bad_file``)."""

SHARD_BITS = 32
"""A document's rank is ``shard << SHARD_BITS | position in shard`` (see ``readers``)."""
BATCH_BYTES = 32 << 20
"""A phase-A batch also closes at this many input bytes (bounded memory)."""


def shard_dir(work: Path | str, shard: int) -> Path:
    """``work_dir/shards/<n>/``: a finished shard's docs, rejected rows, meta and summary."""
    return Path(work) / "shards" / f"{shard:06d}"


def decisions_path(work: Path | str, shard: int) -> Path:
    """``work_dir/dedup/<n>.parquet``: the dedup decisions of one shard's documents."""
    return Path(work) / "dedup" / f"{shard:06d}.parquet"
