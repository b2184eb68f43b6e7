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
from collections.abc import Iterator
from dataclasses import dataclass
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

    ``offset`` is the compressed offset the raw stream is positioned at (a frame start). With
    ``stop_at`` (the compressed offset of a later frame: the next shard's first one) it records
    ``stop_pos``, how many decompressed bytes came before that frame, the moment decompression reaches
    it: a range reader keeps reading past its frames to finish its last line, and needs to know where
    its own data ended to tell a line it owns from the next shard's.
    """

    def __init__(self, raw: Any, offset: int = 0, stop_at: int | None = None) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW)
        self._obj: Any = None  # the decompressor of the frame in progress, None between frames
        self._buf = memoryview(b"")
        self._pending = b""  # compressed bytes read but not yet decompressed
        self._cpos = offset  # compressed offset of ``_pending``'s first byte
        self._dpos = 0  # decompressed bytes produced so far
        self._stop_at = stop_at
        self.stop_pos: int | None = None

    def readable(self) -> bool:
        return True

    @property
    def in_frame(self) -> bool:
        return self._obj is not None

    def _step(self) -> bytes:
        """Decompress ``_pending`` up to the end of the current frame at most.

        One frame at a time, so a reader decompresses only as far as it reads: a shard that reads on
        into the next shard's first frame to finish its last line does not decode (nor fail on) the
        frames after it, and a corrupt frame is reported at the line where it starts."""
        if self._obj is None:  # a frame starts at ``_cpos``
            if self._cpos == self._stop_at and self.stop_pos is None:
                self.stop_pos = self._dpos
            self._obj = self._dctx.decompressobj()
        chunk = self._pending
        piece = self._obj.decompress(chunk)
        self._dpos += len(piece)
        if self._obj.eof:  # frame complete: the rest of the chunk starts the next one
            self._pending = self._obj.unused_data
            self._cpos += len(chunk) - len(self._pending)
            self._obj = None
            if self._cpos == self._stop_at and self.stop_pos is None:
                self.stop_pos = self._dpos
        else:
            self._cpos += len(chunk)
            self._pending = b""
        return piece

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decompress the next compressed bytes (any cut: frames may start and end inside ``chunk``)."""
        self._pending += chunk
        out = []
        while self._pending:
            out.append(self._step())
        return out

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            if not self._pending:
                self._pending = self._raw.read(_ZSTD_CHUNK)
                if not self._pending:
                    if self._obj is not None:
                        raise EOFError("the file ends inside a zstd frame")
                    return 0
            self._buf = memoryview(self._step())
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


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # 0xFD2FB528, little-endian
_SKIPPABLE = 0x184D2A50  # skippable frames: 0x184D2A50..0x184D2A5F (a seekable-zstd seek table is one)


@dataclass(frozen=True)
class ZstdFrame:
    offset: int
    """Compressed offset of the frame's magic number."""
    size: int
    """Compressed bytes of the whole frame (header, blocks, checksum)."""
    content: int
    """Decompressed bytes the header declares, or -1 when the writer did not say (streaming writers)."""
    data: bool
    """False for a skippable frame (no content; a shard never starts at one)."""


def zstd_frames(path: str, stop: int = -1) -> list[ZstdFrame] | None:
    """The frames of a ``.zst`` file, found from frame and block headers only (no decompression).

    A frame is a header, blocks that each start with a 3-byte header giving their type and size, and an
    optional 4-byte checksum, so stepping from header to header visits ``len / 128 KiB`` places in a
    file rather than reading it (python-zstandard 0.25 parses frame headers, ``frame_header_size`` /
    ``get_frame_parameters``, but has no frame walker). Local files are read unbuffered (a seek and a
    3-byte read per block); a URI through the 1 MiB-buffered remote reader, which amounts to one
    sequential download rather than a ranged request per block.

    With ``stop`` >= 0 only the frames that start before ``stop`` are walked. Returns None when the
    bytes are not a well-formed run of frames (a corrupt header, a file that ends
    inside a frame): the file is then read as one streamed shard and the reader reports the problem
    with the line and decompressed byte it reached, as for any broken stream.
    """
    frames: list[ZstdFrame] = []
    try:
        size = file_size(path)
        f = open_raw(path) if remote.is_remote(path) else open(path, "rb", buffering=0)  # noqa: SIM115
    except BadFileError:
        return None
    with f:
        pos = 0
        while pos < size and (stop < 0 or pos < stop):
            f.seek(pos)
            head = f.read(18)  # the longest frame header
            if len(head) < 8:
                return None
            magic = int.from_bytes(head[:4], "little")
            if magic & 0xFFFFFFF0 == _SKIPPABLE:
                n = 8 + int.from_bytes(head[4:8], "little")
                frames.append(ZstdFrame(pos, n, 0, False))
                pos += n
                continue
            if head[:4] != _ZSTD_MAGIC:
                return None
            try:
                hsize = zstandard.frame_header_size(head)
                params = zstandard.get_frame_parameters(head)
            except zstandard.ZstdError:
                return None
            q = pos + hsize
            while True:
                f.seek(q)
                bh = f.read(3)
                if len(bh) < 3:
                    return None
                v = int.from_bytes(bh, "little")
                last, btype, bsize = v & 1, (v >> 1) & 3, v >> 3
                if btype == 3:  # reserved: not a zstd block
                    return None
                q += 3 + (1 if btype == 1 else bsize)  # RLE blocks store one byte
                if last:
                    break
            q += 4 if params.has_checksum else 0
            if q > size:
                return None
            content = params.content_size  # ZSTD_CONTENTSIZE_UNKNOWN / _ERROR come back as 2**64 - 1 / - 2
            frames.append(ZstdFrame(pos, q - pos, content if content < 1 << 63 else -1, True))
            pos = q
    return frames


def zstd_groups(path: str, shard_bytes: int) -> list[tuple[int, int]]:
    """Compressed byte ranges ``[start, end)`` of runs of whole frames, about ``shard_bytes`` of
    decompressed data each (compressed bytes where a frame does not declare its size): a multi-frame
    file is split like an uncompressed one. A single frame (what ``zstd`` writes by default) or an
    unreadable frame index is one shard, ``[(0, -1)]``."""
    frames = zstd_frames(path)
    if not frames:
        return [(0, -1)]
    out: list[tuple[int, int]] = []
    start, acc = 0, 0
    for fr in frames:
        if fr.data and acc >= shard_bytes:
            out.append((start, fr.offset))
            start, acc = fr.offset, 0
        acc += fr.content if fr.content >= 0 else fr.size
    out.append((start, -1))
    return out


def open_zstd_range(path: str, start: int, end: int) -> tuple[io.BufferedIOBase, _ZstdFrames]:
    """A buffered stream of the decompressed frames from compressed offset ``start`` to the end of the
    file, and its frame reader, whose ``stop_pos`` says where the frames before ``end`` ended."""
    raw = open_raw(path)
    try:
        raw.seek(start)
    except OSError as e:
        raw.close()
        raise BadFileError(path, detail_of(path, e, "cannot seek")) from None
    frames = _ZstdFrames(raw, offset=start, stop_at=end if end >= 0 else None)
    return io.BufferedReader(frames, buffer_size=1 << 20), frames  # type: ignore[return-value]


def _zstd_chunks(path: str, start: int, end: int) -> Iterator[bytes]:
    """Decompressed chunks of the whole frames in compressed ``[start, end)``; raises READ_ERRORS."""
    with open_raw(path) as raw:
        raw.seek(start)
        dz = _ZstdFrames(raw, offset=start)
        left = end - start
        while left > 0:
            chunk = raw.read(min(left, _ZSTD_CHUNK))
            if not chunk:
                raise EOFError("the file ends inside a zstd frame")
            left -= len(chunk)
            yield from dz.feed(chunk)
        if dz.in_frame:
            raise EOFError("the frames end inside a zstd frame")


def zstd_before(path: str, start: int) -> tuple[bytes, int | None]:
    """The last decompressed byte before the frame at compressed offset ``start`` (b"" at the file
    start) and the decompressed offset of ``start`` (None when a frame before it does not declare its
    size).

    A frame boundary can fall inside a line; the reader of the frames from ``start`` on owns only the
    lines that *start* there, so it must know whether the data before ended with a newline. Found by
    decompressing the nearest non-empty frame before ``start``: one frame per shard, at zstd's
    ~1 GB/s next to the cleaning steps' ~1 MB/s (docs/cleaning.md, Throughput)."""
    frames = zstd_frames(path, stop=start) or []
    before = [fr for fr in frames if fr.offset < start]
    base = sum(fr.content for fr in before) if all(fr.content >= 0 for fr in before) else None
    for fr in reversed(before):
        if not fr.data or fr.content == 0:
            continue
        last = b""
        try:
            for chunk in _zstd_chunks(path, fr.offset, fr.offset + fr.size):
                if chunk:
                    last = chunk[-1:]
        except READ_ERRORS as e:
            raise stream_error(path, f"the zstd frame at compressed byte {fr.offset}", e) from None
        if last:
            return last, base
    return b"", base


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
    """Newlines in ``[start, end)`` of an uncompressed file, or in the decompressed data of the zstd
    frames in compressed ``[start, end)`` (used to number the lines of later ranges)."""
    n = 0
    if compression(path) == "zst":
        try:
            for chunk in _zstd_chunks(path, start, end):
                n += chunk.count(b"\n")
        except READ_ERRORS as e:
            where = f"the zstd frames at compressed bytes {start}-{end}"
            raise stream_error(path, where, e) from None
        return n
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
