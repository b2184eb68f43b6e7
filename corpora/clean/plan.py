"""The clean stage's plan: its shards in their fixed order, and the checks that concern whole files.

A shard is the unit of parallel work and of resumption; its number fixes the rank of its documents
(``shard << 32 | position``) and the lowest rank of a duplicate cluster is the copy that is kept. So
the order shards are numbered in *is* the dedup preference: sources are taken in
``clean.dedup_prefer`` order (by default domain sources first), each in config order, files sorted,
ranges in file order.

Whole-file problems are decided here rather than record by record: a file that cannot be read at all
(``BadFileError``) fails the stage or, with ``clean.on_bad_file: skip``, is left out and listed; a file
in which no record has the configured ``text_field`` / ``id_field`` is a config error (the key is
wrong), not a file of malformed documents. Parquet files are checked from their footer before any
work; JSONL files once all their shards are read (:class:`FieldCheck`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dapt.corpora.clean.readers import (
    BadFileError,
    ShardSpec,
    count_newlines,
    parquet_columns,
    parquet_row_offsets,
    plan_file,
)
from dapt.pipeline.errors import ConfigError, DaptError, InputError

_FIELDS = ("text_field", "id_field")
"""The fields whose absence rejects a record, so a file without them is a config error."""


@dataclass
class Plan:
    shards: list[ShardSpec]
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Files left out while planning (``on_bad_file: skip``): ``{source, file, reason}``."""


def source_order(sources: list[Any], prefer: str) -> list[int]:
    """Source indices in shard-numbering order: ``prefer``'s kind first (``first``: config order)."""
    idx = list(range(len(sources)))
    if prefer == "first":
        return idx
    return sorted(idx, key=lambda i: (sources[i].kind != prefer, i))


def dapt_error_of(e: BaseException) -> DaptError | None:
    """The dapt error behind an exception from ``ray.get``, or None.

    Ray raises a task's exception as a ``RayTaskError`` subclass of the original's class whose text is
    the whole worker traceback; its ``cause`` is the original exception, which prints as one line."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DaptError) and not hasattr(cur, "cause"):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
    return None


def _check_columns(path: str, columns: list[str], src: Any, si: int) -> None:
    for key in _FIELDS:
        name = getattr(src, key)
        if name is not None and name not in columns:
            raise ConfigError(
                f"{path}: no column {name!r} (sources.{si}.{key}); columns: {', '.join(columns) or '(none)'}"
            )


def plan_shards(cfg: Any) -> Plan:
    """Shards in dedup-preference order (module docstring). Line numbers of later JSONL/txt ranges
    come from newline counts computed in parallel Ray tasks (only for files large enough to split)."""
    import ray

    cc = cfg.clean
    skip = cc.on_bad_file == "skip"
    shard_bytes = max(1, int(cc.shard_mb * (1 << 20)))
    pending: list[tuple[dict, tuple[str, int, int] | None]] = []
    skipped: list[dict[str, str]] = []

    def bad(src: Any, e: BadFileError) -> None:
        if not skip:
            raise e
        skipped.append({"source": src.name, "file": e.path, "reason": e.detail})

    for si in source_order(cfg.sources, cc.dedup_prefer):
        src = cfg.sources[si]
        files = src.files()
        if not files:
            raise InputError(f"sources.{si}.paths: no file matches {src.paths}")
        for f in files:
            path = str(f)
            try:
                ranges = plan_file(path, src.format, shard_bytes, src.txt_mode)
                rows0 = None
                if src.format == "parquet":
                    _check_columns(path, parquet_columns(path), src, si)
                    rows0 = parquet_row_offsets(path, ranges)
            except BadFileError as e:
                bad(src, e)
                continue
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
    counts: dict[int, int] = {}
    failed: set[str] = set()
    for i, ref in refs.items():
        try:
            counts[i] = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a RayTaskError wrapping the reader's error
            err = dapt_error_of(e)
            if err is None:
                raise
            if not isinstance(err, BadFileError):
                raise err from None
            path = pending[i][0]["path"]
            if path not in failed:
                failed.add(path)
                bad(next(s for s in cfg.sources if s.name == pending[i][0]["source"]), err)
    specs: list[ShardSpec] = []
    line0: dict[str, int] = {}
    for i, (base, c) in enumerate(pending):
        if base["path"] in failed:
            continue
        if c is not None:
            line0[base["path"]] += counts[i]
            base["line0"] = line0[base["path"]]
        elif base["fmt"] != "parquet":
            line0[base["path"]] = 1
        specs.append(ShardSpec(shard=len(specs), **base))
    return Plan(specs, skipped)


class FieldCheck:
    """Per JSONL file, once every shard of it is read: a file with JSON objects of which none has the
    configured ``text_field`` (or ``id_field``) is a ConfigError naming the file, the key and the keys
    its objects do have. Shards of one file arrive in any order, some from an earlier attempt."""

    def __init__(self, sources: list[Any], shards: list[ShardSpec]) -> None:
        self._sources = sources
        self._expected = Counter(s.path for s in shards if s.fmt == "jsonl")
        self._seen: Counter = Counter()
        self._acc: dict[str, dict[str, Any]] = {}

    def add(self, summary: dict[str, Any]) -> None:
        fields = summary.get("fields")
        path = summary.get("file")
        if fields is None or path not in self._expected:
            return
        acc = self._acc.setdefault(path, {"objects": 0, "with_text": 0, "with_id": 0, "keys": Counter()})
        for k in ("objects", "with_text", "with_id"):
            acc[k] += fields[k]
        acc["keys"].update(fields["keys"])
        self._seen[path] += 1
        if self._seen[path] == self._expected[path]:
            self._check(path, acc, summary["source_idx"])

    def _check(self, path: str, acc: dict[str, Any], si: int) -> None:
        if not acc["objects"]:
            return  # no JSON object at all: the records are malformed, not the config
        src = self._sources[si]
        for key, count in (("text_field", acc["with_text"]), ("id_field", acc["with_id"])):
            name = getattr(src, key)
            if name is not None and count == 0:
                keys = [k for k, _ in sorted(acc["keys"].items(), key=lambda kv: (-kv[1], kv[0]))]
                shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
                raise ConfigError(
                    f"{path}: no record has key {name!r} (sources.{si}.{key}); keys: {shown or '(none)'}"
                )
