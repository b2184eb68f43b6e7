"""Streaming readers for JSONL (.gz/.zst), Parquet and plain text, split into shards.

A *shard* is the unit of parallel work and of resumption: one file, or one byte range of a large
uncompressed JSONL or ``txt_mode: blocks`` file, or a run of whole frames of a multi-frame
``.jsonl.zst``, or a run of Parquet row groups. A range owns the records that start in it (for text
blocks: whose first line does), so however a file is split, its records, their line numbers (and so
their ids, ``doc_id``) and their order are those of reading it whole. Shards are numbered in a fixed order
(``plan``: sources in dedup-preference order, sorted files, ranges in file order), and a document's
``rank`` is ``shard << 32 | position in shard``: the deterministic tie-break every dedup decision uses.
Opening files and decompressing them is ``files``' job.

Readers never raise on bad records: invalid JSON, invalid UTF-8, a non-object line, or a missing
or non-string text field become :class:`Record` objects with ``reason='malformed:<what>'`` and
their file and line, so docs in = kept + rejected holds for any input. A problem with the *file*
(it cannot be opened, its gzip/zstd stream is truncated or corrupt, a Parquet footer or page is
broken) is not a record's fault: it raises :class:`BadFileError`, one line naming the file and how far
reading got (line and byte offset, or Parquet row group and rows), which the stage turns into a clean
failure or, with ``clean.on_bad_file: skip``, a skipped file listed in the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import xxhash

from dapt.corpora.clean.files import (  # re-exported: the readers' public surface
    READ_ERRORS,
    BadFileError,
    compression,
    count_newlines,
    detail_of,
    file_size,
    one_line,
    open_binary,
    open_raw,
    open_zstd_range,
    parquet_columns,
    parquet_file,
    read_whole,
    stream_error,
    where_in_stream,
    zstd_before,
    zstd_groups,
)
from dapt.pipeline.errors import InputError

__all__ = [
    "BadFileError",
    "FieldStats",
    "Record",
    "ShardSpec",
    "compression",
    "count_newlines",
    "doc_id",
    "file_size",
    "one_line",
    "open_binary",
    "open_raw",
    "parquet_columns",
    "parquet_file",
    "parquet_row_offsets",
    "plan_file",
    "range_starts",
    "read_jsonl",
    "read_parquet",
    "read_shard",
    "read_txt",
]

_KEY_SAMPLE = 100
"""Objects lacking a configured field whose keys are sampled for the error message."""


@dataclass
class FieldStats:
    """What the JSON objects of a shard held, so the stage can tell a wrong ``text_field`` / ``id_field``
    (no object of a whole file has it: a config error) from some malformed records."""

    objects: int = 0
    with_text: int = 0
    """Objects that have the ``text_field`` key (whatever its value)."""
    with_id: int = 0
    """Objects that have the ``id_field`` key (counted only when ``id_field`` is set)."""
    keys: Counter = field(default_factory=Counter)
    """Keys of the first objects that lack a configured field (what the file has instead)."""
    sampled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "with_text": self.with_text,
            "with_id": self.with_id,
            "keys": dict(self.keys),
        }


@dataclass
class Record:
    """One input document (or one malformed record)."""

    line: int
    """1-based line (JSONL, txt blocks: first line of the block; Parquet: row number; txt file: 1)."""
    text: str | None
    id: str | None
    date: str | None
    nbytes: int
    """UTF-8 bytes of the input text (of the raw record for a malformed one)."""
    reason: str | None = None
    """``malformed:<what>`` for a record that could not be read; None for a document."""


@dataclass(frozen=True)
class ShardSpec:
    """Where a shard's records come from; JSON-able via ``vars`` for Ray Data items."""

    shard: int
    source_idx: int
    source: str
    kind: str
    path: str
    fmt: str
    start: int = 0
    """Byte offset (JSONL ranges) or first row group (Parquet)."""
    end: int = -1
    """Byte offset / row group end, exclusive; -1 for the whole file."""
    line0: int = 1
    """1 + newlines before ``start`` (JSONL/txt ranges), or the first row number (Parquet)."""
    txt_mode: str = "file"
    text_field: str = "text"
    id_field: str | None = None
    date_field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def doc_id(source: str, path: str, line: int) -> str:
    """Stable id of a document without an id field: hash of source, file and line."""
    return xxhash.xxh3_128_hexdigest(f"{source}\0{path}\0{line}".encode("utf-8", "surrogatepass"))


def range_starts(path: str, size: int, shard_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of about ``shard_bytes`` each; a range owns the lines that start in it."""
    if size <= shard_bytes:
        return [(0, -1)]
    out = []
    s = 0
    while s < size:
        e = min(size, s + shard_bytes)
        out.append((s, e if e < size else -1))
        s = e
    return out


def _meta(obj: dict, field: str | None) -> str | None:
    if field is None:
        return None
    v = obj.get(field)
    return None if v is None else str(v)


def _lines(spec: ShardSpec, peek: bool = False) -> Iterator[tuple[int, int, bytes, bool]]:
    """(line number, byte offset, raw line without the newline, past_end) from the first line that
    starts in the shard to the end of the file; ``past_end`` marks a line that starts after the shard's
    data (the next shard owns it). The caller stops where its rule says: JSONL at the first line past
    the end, text blocks once the block in progress is finished. Without ``peek`` the first line past
    the end is not read at all (JSONL: a record never needs the line after it).

    Offsets are in the file, or in the decompressed data of a compressed one (from the first frame of a
    zstd shard when a frame before it does not declare its size). Every line yielded is complete: a
    stream that breaks off raises BadFileError naming the line being read and its byte offset, and
    the partial line is not yielded."""
    pos = 0
    base = 0
    line = spec.line0
    zst_range = compression(spec.path) == "zst" and (spec.start > 0 or spec.end >= 0)
    frames = None
    known: int | None = 0
    try:
        if zst_range:
            last, known = zstd_before(spec.path, spec.start) if spec.start > 0 else (b"", 0)
            base = known or 0
            f, frames = open_zstd_range(spec.path, spec.start, spec.end)
        else:
            f = open_binary(spec.path)
        with f:
            end = spec.end
            if zst_range:
                end = -1  # learnt from ``frames.stop_pos`` once decompression reaches the next shard
                if last not in (b"", b"\n"):  # the frames before ended mid-line: skip its tail
                    skipped = f.readline()
                    pos = len(skipped)
                    if skipped:
                        line += 1
            elif spec.start > 0:
                f.seek(spec.start - 1)
                skipped = f.readline()  # the tail of a line owned by the previous range (or just b"\n")
                pos = spec.start - 1 + len(skipped)
                if len(skipped) > 1:
                    line += 1  # the skipped tail's newline lies at or after ``start``: not counted in line0
            while True:
                if frames is not None and frames.stop_pos is not None:
                    end = frames.stop_pos
                past = end >= 0 and pos >= end
                if past and not peek:
                    return  # not even read: in a zstd file the next shard's frame is not decoded
                raw = f.readline()
                if not raw:
                    return
                if frames is not None and frames.stop_pos is not None:  # reading may have reached it
                    end = frames.stop_pos
                    past = pos >= end
                    if past and not peek:
                        return
                start = pos
                pos += len(raw)
                yield line, base + start, raw.rstrip(b"\r\n"), past
                line += 1
    except READ_ERRORS as e:
        if zst_range and known is None:
            where = f"line {line} (decompressed byte {pos} from the frame at compressed byte {spec.start})"
        else:
            where = where_in_stream(spec.path, line, base + pos)
        raise stream_error(spec.path, where, e) from None


def _iter_lines(spec: ShardSpec) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for the lines this shard owns: those that start in it."""
    for line, _, raw, _ in _lines(spec):
        yield line, raw


def read_jsonl(spec: ShardSpec, stats: FieldStats | None = None) -> Iterator[Record]:
    """The records of a JSONL shard; ``stats`` (if given) counts which objects have the fields."""
    for line, raw in _iter_lines(spec):
        if not raw.strip():
            continue  # a blank line is not a record
        n = len(raw)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Record(line, raw.decode("utf-8", "replace"), None, None, n, "malformed:utf8")
            continue
        try:
            obj = json.loads(s)
        except ValueError:
            yield Record(line, s, None, None, n, "malformed:json")
            continue
        if not isinstance(obj, dict):
            yield Record(line, s, None, None, n, "malformed:not_object")
            continue
        if stats is not None:
            _count_fields(stats, obj, spec)
        text = obj.get(spec.text_field)
        if text is None:
            yield Record(line, s, None, None, n, "malformed:missing_text")
            continue
        if not isinstance(text, str):
            yield Record(line, s, None, None, n, "malformed:text_type")
            continue
        try:
            nb = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
            yield Record(line, s, None, None, n, "malformed:utf8")
            continue
        rid = _meta(obj, spec.id_field)
        if spec.id_field is not None and rid is None:
            yield Record(line, s, None, None, n, "malformed:missing_id")
            continue
        yield Record(line, text, rid, _meta(obj, spec.date_field), nb)


def _count_fields(stats: FieldStats, obj: dict, spec: ShardSpec) -> None:
    stats.objects += 1
    has_text = spec.text_field in obj
    has_id = spec.id_field is not None and spec.id_field in obj
    stats.with_text += has_text
    stats.with_id += has_id
    lacks = not has_text or (spec.id_field is not None and not has_id)
    if lacks and stats.sampled < _KEY_SAMPLE:
        stats.sampled += 1
        stats.keys.update(str(k) for k in obj)


def read_txt(spec: ShardSpec) -> Iterator[Record]:
    """``txt_mode: file``: the whole file is one document, so it is read whole (the document is the
    unit every step works on). ``blocks``: one document per blank-line-separated block, streamed; a
    byte-range shard owns the blocks whose first line starts in it, finishing its last one past its
    end, so a split file yields exactly the documents (same first lines, same text) of a whole read."""
    if spec.txt_mode == "file":
        raw = read_whole(spec.path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Record(1, raw.decode("utf-8", "replace"), None, None, len(raw), "malformed:utf8")
            return
        yield Record(1, text, None, None, len(raw))
        return
    block: list[bytes] = []
    first = 0
    # a range that starts inside a block (the line before its first line is not blank) leaves it to
    # the range the block started in, and begins with the next block
    skipping = spec.start > 0 and not _prev_line_blank(spec)
    for line, _, raw, past in _lines(spec, peek=True):
        blank = not raw.strip()
        if skipping:
            if past:
                return  # the whole range lies inside an earlier range's block
            skipping = not blank
            continue
        if blank:
            if block:
                yield _block(first, block)
                block = []
            if past:
                return
            continue
        if not block:
            if past:
                return  # this block starts in the next range
            first = line
        block.append(raw)
    if block:
        yield _block(first, block)


def _prev_line_blank(spec: ShardSpec) -> bool:
    """Whether the line before the first line that starts at or after ``spec.start`` (an uncompressed
    file) is blank, i.e. whether that first line can start a block. Reads backwards from ``start``
    only as far as the previous line's first non-whitespace byte or its start."""
    try:
        with open_raw(spec.path) as f:
            f.seek(spec.start - 1)
            tail = f.readline()  # from start - 1 to the end of the line it is in
            if tail.rstrip(b"\r\n").strip():
                return False
            pos = spec.start - 1  # bytes before ``pos`` belong to the same line until a newline
            while pos > 0:
                step = min(pos, 4096)
                f.seek(pos - step)
                chunk = f.read(step)
                nl = chunk.rfind(b"\n")
                if chunk[nl + 1 :].strip():
                    return False
                if nl >= 0:
                    return True
                pos -= step
            return True
    except READ_ERRORS as e:
        raise stream_error(spec.path, f"byte {spec.start}", e) from None


def _block(first: int, lines: list[bytes]) -> Record:
    raw = b"\n".join(lines)
    try:
        return Record(first, raw.decode("utf-8"), None, None, len(raw))
    except UnicodeDecodeError:
        return Record(first, raw.decode("utf-8", "replace"), None, None, len(raw), "malformed:utf8")


def _row_group_batches(
    spec: ShardSpec, pf: Any, group: int, first_row: int, cols: list[str], batch_rows: int
) -> Iterator[tuple[int, dict]]:
    """(rows, columns as lists) per batch of one row group; a broken page (decompression, checksum,
    invalid UTF-8 in a string column) is a BadFileError naming the row group and its rows."""
    import pyarrow as pa

    it = pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=cols or None)
    while True:
        try:
            batch = next(it, None)
            if batch is None:
                return
            d = batch.to_pydict() if cols else {}
        except (OSError, ValueError, pa.ArrowException) as e:  # ArrowInvalid, UnicodeDecodeError, ...
            last = first_row + pf.metadata.row_group(group).num_rows - 1
            raise BadFileError(
                spec.path,
                f"cannot read Parquet row group {group} (rows {first_row}-{last}): {detail_of(spec.path, e)}",
            ) from None
        yield batch.num_rows, d


def read_parquet(spec: ShardSpec, batch_rows: int = 4096) -> Iterator[Record]:
    pf = parquet_file(spec.path)
    names = set(pf.schema_arrow.names)
    cols = [c for c in (spec.text_field, spec.id_field, spec.date_field) if c and c in names]
    groups = list(range(pf.num_row_groups))
    if spec.end >= 0:
        groups = groups[spec.start : spec.end]
    row = spec.line0
    for g in groups:
        for n, d in _row_group_batches(spec, pf, g, row, cols, batch_rows):
            texts = d.get(spec.text_field, [None] * n)
            ids = d.get(spec.id_field) if spec.id_field else None
            dates = d.get(spec.date_field) if spec.date_field else None
            for i in range(n):
                t = texts[i]
                if t is None or not isinstance(t, str):
                    what = "missing_text" if t is None else "text_type"
                    yield Record(row, None if t is None else str(t), None, None, 0, f"malformed:{what}")
                else:
                    rid = None if ids is None or ids[i] is None else str(ids[i])
                    if spec.id_field is not None and rid is None:
                        yield Record(
                            row, t, None, None, len(t.encode("utf-8", "replace")), "malformed:missing_id"
                        )
                    else:
                        date = None if dates is None or dates[i] is None else str(dates[i])
                        yield Record(row, t, rid, date, len(t.encode("utf-8", "surrogatepass")))
                row += 1


def read_shard(spec: ShardSpec, stats: FieldStats | None = None) -> Iterator[Record]:
    """The records of one shard, in file order. Raises BadFileError when the file itself is broken;
    ``stats`` (JSONL only) counts which objects have the configured fields."""
    if spec.fmt == "jsonl":
        return read_jsonl(spec, stats)
    if spec.fmt == "txt":
        return read_txt(spec)
    if spec.fmt == "parquet":
        return read_parquet(spec)
    raise InputError(f"{spec.path}: unknown format {spec.fmt!r}")


def plan_file(path: str, fmt: str, shard_bytes: int, txt_mode: str = "file") -> list[tuple[int, int]]:
    """How to split one file into shards: byte ranges (JSONL, ``txt_mode: blocks``), runs of zstd
    frames (multi-frame ``.jsonl.zst``), row-group runs (Parquet) or whole.

    Whole, streamed: ``.gz`` (deflate cannot be entered mid-stream without an index), a single-frame
    ``.zst``, ``txt_mode: file`` (one document), and compressed text blocks (a block boundary in
    decompressed data would need the frame before decompressed just to find it; not done yet)."""
    size = file_size(path)
    comp = compression(path)
    lines = fmt == "jsonl" or (fmt == "txt" and txt_mode == "blocks")
    if lines and comp is None:
        return range_starts(path, size, shard_bytes)
    if fmt == "jsonl" and comp == "zst":
        return zstd_groups(path, shard_bytes)
    if fmt == "parquet":
        md = parquet_file(path).metadata
        out: list[tuple[int, int]] = []
        start, acc = 0, 0
        for g in range(md.num_row_groups):
            acc += md.row_group(g).total_byte_size
            if acc >= shard_bytes:
                out.append((start, g + 1))
                start, acc = g + 1, 0
        if start < md.num_row_groups or not out:
            out.append((start, md.num_row_groups))
        return out
    return [(0, -1)]


def parquet_row_offsets(path: str, ranges: list[tuple[int, int]]) -> list[int]:
    """First row number (1-based) of each row-group run."""
    md = parquet_file(path).metadata
    rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    return [1 + sum(rows[:s]) for s, _ in ranges]
