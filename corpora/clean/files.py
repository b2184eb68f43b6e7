"""Opening source files: local paths or URIs, gzip and zstd streams, Parquet footers; and the error
for a file that cannot be read as a whole.

Kept apart from the record readers (``readers``) because it answers a different question: not what a
record means, but whether the bytes can be had at all and, when they cannot, how far reading got. A
broken file raises :class:`BadFileError`, one line naming the file and the line and byte offset (or
Parquet row group and rows) where it broke.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import Any

import zstandard

from dapt.pipeline import remote
from dapt.pipeline.errors import InputError

_ZSTD_WINDOW = 1 << 31
_ZSTD_CHUNK = 1 << 16
"""Compressed bytes fed to the zstd decompressor at a time (bounds the memory of one step)."""
READ_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)
"""What a truncated or corrupt byte stream raises while it is read (gzip: EOFError, BadGzipFile,
zlib.error; zstd: ZstdError or our EOFError; local and remote files: OSError)."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space: errors print as one line."""
    return " ".join(str(text).split())


class BadFileError(InputError):
    """A whole file cannot be read: it cannot be opened, its compressed stream is truncated or corrupt,
    or a Parquet footer or page is broken.

    It keeps the file and what went wrong apart (``path``, ``detail``) because ``clean.on_bad_file:
    skip`` records them separately in the manifest; as an error it prints as ``<file>: <detail>``.
    """

    def __init__(self, path: str, detail: str) -> None:
        self.path = str(path)
        self.detail = one_line(detail)
        super().__init__(f"{self.path}: {self.detail}")

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # pickles with its two arguments
        return (BadFileError, (self.path, self.detail))


def compression(path: str) -> str | None:
    if path.endswith(".gz"):
        return "gz"
    if path.endswith(".zst"):
        return "zst"
    return None


def open_raw(path: str) -> Any:
    """A seekable binary file: local, or an object-storage / ``file://`` URI (``pipeline.remote``)."""
    try:
        if remote.is_remote(path):  # buffered: pyarrow's NativeFile has no readline
            return io.BufferedReader(remote.open_input(path), buffer_size=1 << 20)
        return open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - the caller closes it
    except BadFileError:
        raise
    except (OSError, InputError) as e:
        raise BadFileError(path, detail_of(path, e, "cannot open")) from None


def file_size(path: str) -> int:
    try:
        if remote.is_remote(path):
            return remote.stat(path)[0]
        return os.path.getsize(path)
    except (OSError, InputError) as e:
        raise BadFileError(path, detail_of(path, e, "cannot stat")) from None


def detail_of(path: str, e: BaseException, what: str | None = None) -> str:
    """An error's message without a leading ``<path>: `` (the BadFileError adds the path once), led by
    ``what`` (``cannot open``) unless the message already says what failed (``pipeline.remote``'s do)."""
    msg = one_line(e)
    msg = msg[len(path) + 2 :] if msg.startswith(f"{path}: ") else msg
    return msg if what is None or msg.startswith("cannot ") else f"{what}: {msg}"


class _ZstdFrames(io.RawIOBase):
    """Concatenated zstd frames, decompressed in bounded steps, that raise when the input ends inside
    a frame.

    Why not ``ZstdDecompressor.stream_reader``: with python-zstandard 0.25 it ends silently when its
    input stops mid-frame (half of a 1.3 MB frame read as 0.5 MB of text, no error), which would turn
    a truncated file into fewer documents without a word.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW)
        self._obj: Any = None  # the decompressor of the frame in progress, None between frames
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            chunk = self._raw.read(_ZSTD_CHUNK)
            if not chunk:
                if self._obj is not None:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            out = []
            while chunk:
                if self._obj is None:
                    self._obj = self._dctx.decompressobj()
                out.append(self._obj.decompress(chunk))
                if self._obj.eof:  # frame complete: the rest of the chunk starts the next one
                    chunk = self._obj.unused_data
                    self._obj = None
                else:
                    chunk = b""
            self._buf = memoryview(b"".join(out))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


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
            return io.BufferedReader(_ZstdFrames(raw), buffer_size=1 << 20)  # type: ignore[return-value]
        return raw
    except OSError as e:
        raw.close()
        raise BadFileError(path, detail_of(path, e, "cannot open")) from None


def parquet_file(path: str) -> Any:
    """``pyarrow.parquet.ParquetFile`` of a local file or a URI; any failure is one BadFileError.

    Page checksums are verified where the writer stored them (``write_page_checksum``): a flipped byte
    in a page is then an error rather than a silently wrong document."""
    import pyarrow.parquet as pq

    try:
        if remote.is_remote(path):
            fs, inner = remote.resolve(path)
            return pq.ParquetFile(inner, filesystem=fs, page_checksum_verification=True)
        return pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError, InputError from remote, ...
        raise BadFileError(path, detail_of(path, e, "cannot read Parquet")) from None


def parquet_columns(path: str) -> list[str]:
    """The column names of a Parquet file, in schema order (read from its footer only)."""
    return list(parquet_file(path).schema_arrow.names)


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


def stream_error(path: str, where: str, e: BaseException) -> BadFileError:
    """The BadFileError of a byte stream that failed at ``where`` (e.g. ``line 98 (byte 12345)``)."""
    what = {"gz": "corrupt or truncated gzip data", "zst": "corrupt or truncated zstd data"}
    return BadFileError(path, f"{what.get(compression(path) or '', 'read error')} at {where}: {e}")


def where_in_stream(path: str, line: int, pos: int) -> str:
    """How far a stream got: the line being read and the byte it starts at (in the decompressed data
    for a compressed file, whose compressed offsets say nothing about lines)."""
    return f"line {line} ({'decompressed ' if compression(path) else ''}byte {pos})"


def read_whole(path: str) -> bytes:
    """All (decompressed) bytes of a file; a broken stream is a BadFileError with the byte offset."""
    chunks: list[bytes] = []
    n = 0
    try:
        with open_binary(path) as f:
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
                n += len(chunk)
    except READ_ERRORS as e:
        where = f"{'decompressed ' if compression(path) else ''}byte {n}"
        raise stream_error(path, where, e) from None
    return b"".join(chunks)
