"""Atomic file writes and fingerprints: the small pieces every stage's "nothing is lost" rests on."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON: equal configs give equal hashes whatever the key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_fingerprint(path: str | os.PathLike, content_limit: int = 1 << 20) -> dict[str, Any]:
    """Path, size and mtime; plus a content hash for small files (cheap, and survives `touch`).

    Large corpora are fingerprinted by size+mtime only: hashing terabytes on every `dapt status` is
    not acceptable, and a changed file almost always changes one of the two.
    """
    from dapt.pipeline import remote

    if remote.is_remote(str(path)):  # object storage: size and mtime, never a download
        size, mtime_ns = remote.stat(str(path))
        return {"path": str(path), "size": size, "mtime_ns": mtime_ns}
    p = Path(path)
    st = p.stat()
    fp: dict[str, Any] = {"path": str(p), "size": st.st_size}
    if st.st_size <= content_limit:
        fp["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    else:
        fp["mtime_ns"] = st.st_mtime_ns
    return fp


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    return [file_fingerprint(p) for p in sorted(str(p) for p in paths)]


def dir_size(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (model files are GBs)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_output(stage_folder: str | os.PathLike, p: str | None) -> Path | None:
    """A path from a manifest's ``outputs``: relative to that stage's folder unless absolute."""
    if not p:
        return None
    q = Path(p)
    return q if q.is_absolute() else Path(stage_folder) / q


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (no second copy of a multi-GB weight file), copying across devices.

    Through a temporary name and ``os.replace``: ``dst`` appears whole or not at all, and a retried
    attempt replaces what an earlier one left (a Ray task killed after it linked its file used to fail
    on retry: ``os.link`` raised FileExistsError and the copy fallback SameFileError)."""
    import shutil

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.txt")


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    """A local folder that carries a tokenizer, or a hub id (assumed to carry its own)."""
    p = Path(path)
    if not p.is_dir():
        return not p.is_absolute() and not p.exists()
    return any((p / f).exists() for f in TOKENIZER_FILES)
