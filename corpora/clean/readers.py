"""Streaming readers for JSONL (.gz/.zst), Parquet and plain text, split into shards.

A *shard* is the unit of parallel work and of resumption: one file, or one byte range of a large
uncompressed JSONL file, or a run of Parquet row groups. Shards are numbered in a fixed order
(source order in the config, sorted files, ranges in file order), and a document's ``rank`` is
``shard << 32 | position in shard``: the deterministic tie-break every dedup decision uses.

Readers never raise on bad records: invalid JSON, invalid UTF-8, a non-object line, or a missing
or non-string text field become :class:`Record` objects with ``reason='malformed:<what>'`` and
their file and line, so docs in = kept + rejected holds for any input.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from dapt.pipeline import remote
from dapt.pipeline.errors import InputError

_ZSTD_WINDOW = 1 << 31


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


def compression(path: str) -> str | None:
    if path.endswith(".gz"):
        return "gz"
    if path.endswith(".zst"):
        return "zst"
    return None


def open_raw(path: str) -> Any:
    """A seekable binary file: local, or an object-storage / ``file://`` URI (``pipeline.remote``)."""
    if remote.is_remote(path):  # buffered: pyarrow's NativeFile has no readline
        return io.BufferedReader(remote.open_input(path), buffer_size=1 << 20)
    try:
        return open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e}") from None


def file_size(path: str) -> int:
    if remote.is_remote(path):
        return remote.stat(path)[0]
    try:
        return os.path.getsize(path)
    except OSError as e:
        raise InputError(f"{path}: cannot stat: {e}") from None


def open_binary(path: str) -> io.BufferedIOBase:
    """A buffered binary stream over the decompressed bytes of ``path`` (streaming, O(1) memory)."""
    comp = compression(path)
    raw = open_raw(path)
    try:
        if comp == "gz":
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            gz.myfileobj = raw  # closed with the GzipFile, as gzip.open(path) does for its own file
            return gz  # type: ignore[return-value]
        if comp == "zst":
            import zstandard

            dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW)
            return io.BufferedReader(dctx.stream_reader(raw, closefd=True), buffer_size=1 << 20)  # type: ignore[arg-type]
        return raw
    except OSError as e:
        raw.close()
        raise InputError(f"{path}: cannot open: {e}") from None


def parquet_file(path: str) -> Any:
    """``pyarrow.parquet.ParquetFile`` of a local file or a URI; any failure is one clear input error."""
    import pyarrow.parquet as pq

    try:
        if remote.is_remote(path):
            fs, inner = remote.resolve(path)
            return pq.ParquetFile(inner, filesystem=fs)
        return pq.ParquetFile(path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: cannot read Parquet: {e}") from None


def doc_id(source: str, path: str, line: int) -> str:
    """Stable id of a document without an id field: hash of source, file and line."""
    return xxhash.xxh3_128_hexdigest(f"{source}\0{path}\0{line}".encode("utf-8", "surrogatepass"))


def count_newlines(path: str, start: int, end: int) -> int:
    """Newlines in ``[start, end)`` of an uncompressed file (used to number lines of later ranges)."""
    n = 0
    with open_raw(path) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            buf = f.read(min(left, 1 << 24))
            if not buf:
                break
            n += buf.count(b"\n")
            left -= len(buf)
    return n


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


def _iter_lines(spec: ShardSpec) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line without the newline) for the lines this shard owns."""
    with open_binary(spec.path) as f:
        pos = 0
        line = spec.line0
        if spec.start > 0:
            f.seek(spec.start - 1)
            skipped = f.readline()  # the tail of a line owned by the previous range (or just b"\n")
            pos = spec.start - 1 + len(skipped)
            if len(skipped) > 1:
                line += 1  # the skipped tail's newline lies at or after ``start``: not counted in line0
        end = spec.end
        for raw in f:
            if end >= 0 and pos >= end:
                break
            pos += len(raw)
            yield line, raw.rstrip(b"\r\n")
            line += 1


def read_jsonl(spec: ShardSpec) -> Iterator[Record]:
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


def read_txt(spec: ShardSpec) -> Iterator[Record]:
    if spec.txt_mode == "file":
        with open_binary(spec.path) as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Record(1, raw.decode("utf-8", "replace"), None, None, len(raw), "malformed:utf8")
            return
        yield Record(1, text, None, None, len(raw))
        return
    block: list[bytes] = []
    first = 0
    for line, raw in _iter_lines(spec):
        if raw.strip():
            if not block:
                first = line
            block.append(raw)
            continue
        if block:
            yield _block(first, block)
            block = []
    if block:
        yield _block(first, block)


def _block(first: int, lines: list[bytes]) -> Record:
    raw = b"\n".join(lines)
    try:
        return Record(first, raw.decode("utf-8"), None, None, len(raw))
    except UnicodeDecodeError:
        return Record(first, raw.decode("utf-8", "replace"), None, None, len(raw), "malformed:utf8")


def read_parquet(spec: ShardSpec, batch_rows: int = 4096) -> Iterator[Record]:
    pf = parquet_file(spec.path)
    names = set(pf.schema_arrow.names)
    cols = [c for c in (spec.text_field, spec.id_field, spec.date_field) if c and c in names]
    groups = list(range(pf.num_row_groups))
    if spec.end >= 0:
        groups = groups[spec.start : spec.end]
    row = spec.line0
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols or None):
        n = batch.num_rows
        d = batch.to_pydict() if cols else {}
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


def read_shard(spec: ShardSpec) -> Iterator[Record]:
    """The records of one shard, in file order."""
    if spec.fmt == "jsonl":
        return read_jsonl(spec)
    if spec.fmt == "txt":
        return read_txt(spec)
    if spec.fmt == "parquet":
        return read_parquet(spec)
    raise InputError(f"{spec.path}: unknown format {spec.fmt!r}")


def plan_file(path: str, fmt: str, shard_bytes: int) -> list[tuple[int, int]]:
    """How to split one file into shards: byte ranges (JSONL), row-group runs (Parquet) or whole."""
    size = file_size(path)
    if fmt == "jsonl" and compression(path) is None:
        return range_starts(path, size, shard_bytes)
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
