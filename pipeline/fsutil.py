"""Atomic file writes and fingerprints: the small pieces every stage's "nothing is lost" rests on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
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


def atomic_write_parquet(path: str | os.PathLike, table: Any) -> None:
    """Write a pyarrow table through a temporary name private to this process, then rename: a retried
    or killed Ray task never leaves a half file, and two attempts never write the same temporary file.
    No fsync: these are work files a rerun recomputes, written on a hot path."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def swap_in_folder(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Publish the finished folder ``tmp`` as ``out`` by renames: a reader of an older ``out`` sees it
    gone only for an instant, and never a half-written one (model imports replace whole folders)."""
    tmp, out = Path(tmp), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON: equal configs give equal hashes whatever the key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass
class InputFacts:
    """What one command learned about its input files: glob listings and per-file fingerprints.

    Why: ``dapt status`` computes every stage's fingerprint, each stage's status also checks its
    upstreams', and a ``dapt clean`` lists the sources three times (config check, fingerprint, the
    stage's own plan). With tens of thousands of source files, or a bucket listing that is one network
    round-trip per page, each repeat costs a full glob plus a stat (and a read, for small files) of every
    file. Within one command the answer cannot usefully change, so it is asked once.
    """

    listings: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)
    stats: dict[tuple[str, str], os.stat_result | None] = field(default_factory=dict)
    fingerprints: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop every fact: called after a stage body ran (it may have taken hours, the user may have
        edited an input meanwhile, and it wrote files), so the next stage sees the file system as it
        is now."""
        self.listings.clear()
        self.stats.clear()
        self.fingerprints.clear()


_FACTS: ContextVar[InputFacts | None] = ContextVar("dapt_input_facts", default=None)


@contextmanager
def input_facts() -> Iterator[InputFacts]:
    """Cache input listings and fingerprints for the duration of one command (the CLI enters it around
    each command, ``run_pipeline`` around its stages). Re-entrant: an inner entry shares the outer facts.

    Outside it nothing is cached, so library callers and long-lived processes (a test session, a
    notebook) always see the file system as it is: a source changed between two commands is seen by
    the second. Inside it, a fact is never older than the start of the command or the end of the last
    stage body the runner ran (``run_stage`` calls ``forget_input_facts`` then), so files a stage
    writes under ``run_dir`` are never judged by a listing taken before it wrote them. A ContextVar,
    not a global: threads a stage starts see no scope and simply do not cache."""
    outer = _FACTS.get()
    if outer is not None:
        yield outer
        return
    facts = InputFacts()
    token = _FACTS.set(facts)
    try:
        yield facts
    finally:
        _FACTS.reset(token)


def forget_input_facts() -> None:
    """Invalidate the current command's cached facts (no-op outside ``input_facts``)."""
    facts = _FACTS.get()
    if facts is not None:
        facts.forget()


def cached_listing(key: tuple[Any, ...], compute: Callable[[], list[str]]) -> list[str]:
    """``compute()`` once per command for ``key`` (a copy is returned: callers may mutate it). The key
    must name everything the listing depends on; relative paths depend on the working folder, so it is
    added here."""
    facts = _FACTS.get()
    if facts is None:
        return compute()
    full = (os.getcwd(), *key)
    hit = facts.listings.get(full)
    if hit is None:
        hit = facts.listings[full] = list(compute())
    return list(hit)


def input_stat(path: str | os.PathLike) -> os.stat_result | None:
    """``os.stat`` of a local input file (symlinks followed), None if it does not exist; once per
    command inside ``input_facts``, so a glob's "is it a file" check and the file's fingerprint share
    one system call."""
    facts = _FACTS.get()
    key = (os.getcwd(), str(path))
    if facts is not None and key in facts.stats:
        return facts.stats[key]
    try:
        st: os.stat_result | None = os.stat(path)
    except (OSError, ValueError):  # what os.path.isfile treats as "not a file"
        st = None
    if facts is not None:
        facts.stats[key] = st
    return st


def is_input_file(path: str | os.PathLike) -> bool:
    """``os.path.isfile`` through ``input_stat``."""
    st = input_stat(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def file_fingerprint(path: str | os.PathLike, content_limit: int = 1 << 20) -> dict[str, Any]:
    """Path, size and mtime; plus a content hash for small files (cheap, and survives `touch`).

    Large corpora are fingerprinted by size+mtime only: hashing terabytes on every `dapt status` is
    not acceptable, and a changed file almost always changes one of the two. Inside ``input_facts``
    each file is stat-ed (and read, if small) once per command.
    """
    facts = _FACTS.get()
    if facts is None:
        return _file_fingerprint(path, content_limit)
    key = (os.getcwd(), str(path), content_limit)
    hit = facts.fingerprints.get(key)
    if hit is None:
        hit = facts.fingerprints[key] = _file_fingerprint(path, content_limit)
    return dict(hit)


def _file_fingerprint(path: str | os.PathLike, content_limit: int) -> dict[str, Any]:
    from dapt.pipeline import remote

    if remote.is_remote(str(path)):  # object storage: size and mtime, never a download
        size, mtime_ns = remote.stat(str(path))
        return {"path": str(path), "size": size, "mtime_ns": mtime_ns}
    p = Path(path)
    st = input_stat(path)  # keyed by the path as listed (Path() would drop a leading ./)
    if st is None:
        st = p.stat()  # raises the error (FileNotFoundError...) a bad input has always raised
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


def safetensors_param_count(model_dir: Path) -> int | None:
    """Parameters in a model folder, from the safetensors headers alone (no torch, no weights read).

    A safetensors file starts with an 8-byte little-endian header length and a JSON header mapping each
    tensor name to its shape, so counting is exact and costs a few KB of I/O even for a 70B model.
    """
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= int(d)
            total += count
    return total
