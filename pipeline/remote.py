"""Source files on object storage (``s3://``, ``gs://``) or as ``file://`` URIs.

Why: on a cluster the corpora live in buckets, and requiring every node to mount them (mountpoint-s3,
gcsfuse) is a set-up step users trip over. ``pyarrow.fs`` already ships S3 and GCS clients
(the Parquet reader uses them anyway), so dapt reads such URIs through it, with the usual credentials
of each store (``AWS_*`` variables or instance roles, ``GOOGLE_APPLICATION_CREDENTIALS``, ...).

Only the *reading* of sources goes through here; run folders stay on a (shared) POSIX file system.
Globs on a URI: ``*`` and ``?`` stay within one path segment, ``**`` spans segments (as ``glob`` with
``recursive=True``); listing starts at the longest prefix without a wildcard.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from dapt.pipeline.errors import InputError

# S3 and GCS put the bucket first in the path pyarrow uses, which is what resolve() relies on; HDFS and
# Azure URIs carry a host or account instead and would need their own parsing (not supported yet).
SCHEMES = ("s3", "gs", "gcs", "file")
_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.I)
_WILD = re.compile(r"[*?\[]")


def scheme(path: str) -> str | None:
    m = _URI.match(str(path))
    return m.group(1).lower() if m else None


def is_remote(path: str) -> bool:
    """True for a URI dapt reads through pyarrow.fs (``file://`` included, which tests use)."""
    s = scheme(path)
    return s is not None and s in SCHEMES


@lru_cache(maxsize=32)
def _fs_for(root: str) -> Any:
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(root)
    return fs


def resolve(uri: str) -> tuple[Any, str]:
    """``(filesystem, path inside it)`` for a URI; one client per scheme and bucket, reused."""
    s = scheme(uri)
    if s is None or s not in SCHEMES:
        raise InputError(f"{uri}: not a supported URI (schemes: {', '.join(SCHEMES)})")
    try:
        if s == "file":  # file:///abs/path (parsed here: from_uri would reject glob characters)
            path = uri.split("://", 1)[1]
            if not path.startswith("/"):
                raise ValueError("a file:// URI needs an absolute path (file:///...)")
            return _fs_for("file:///"), path
        rest = uri.split("://", 1)[1]
        bucket = rest.split("/", 1)[0]
        return _fs_for(f"{s}://{bucket}"), rest
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise InputError(f"{uri}: cannot open file system: {e}") from None


def _uri(s: str, path: str) -> str:
    return f"file://{path}" if s == "file" else f"{s}://{path}"


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob (``*``, ``?``, ``[...]``, ``**``) as a regex over ``/``-separated paths."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def expand(pattern: str) -> list[str]:
    """The files (URIs, sorted) a URI glob matches; a URI without wildcards is returned if it is a file."""
    import pyarrow.fs as pafs

    s = scheme(pattern) or ""
    fs, path = resolve(pattern)
    try:
        m = _WILD.search(path)
        if m is None:
            info = fs.get_file_info(path)
            return [_uri(s, path)] if info.type == pafs.FileType.File else []
        base = path[: m.start()].rsplit("/", 1)[0] if "/" in path[: m.start()] else ""
        rx = glob_regex(path)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{pattern}: cannot list: {e}") from None
    return sorted(_uri(s, i.path) for i in infos if i.type == pafs.FileType.File and rx.match(i.path))


def stat(uri: str) -> tuple[int, int | None]:
    """``(size in bytes, mtime in ns or None)`` of a remote file."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{uri}: cannot stat: {e}") from None
    if info.type != pafs.FileType.File:
        raise InputError(f"{uri}: cannot stat: not a file")
    return int(info.size), info.mtime_ns


def open_input(uri: str) -> Any:
    """A seekable binary file over a remote object (``pyarrow.NativeFile``, ranged reads on S3/GCS)."""
    fs, path = resolve(uri)
    try:
        return fs.open_input_file(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{uri}: cannot open: {e}") from None
