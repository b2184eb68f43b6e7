"""Give freed memory back to the operating system at the end of a Ray task.

Why: a Ray worker process lives for the whole job and runs many tasks of different kinds one after
another (a shard's read-and-filter, a shuffle's sort, a verification group, a shard's write). What a
task frees stays mapped in the process: glibc's malloc keeps freed chunks in its arenas, and Arrow's
mimalloc/jemalloc pool keeps freed pages for reuse. The worker's resident memory is then the
high-water mark of everything it ever ran rather than what the current task needs, and the memory a
node must have grows with how many tasks each worker has run, i.e. with the corpus (measured in
docs/scale.md: clean's largest worker 0.55 GB anonymous at 2 GB of input, 0.73 GB at 4 GB, while each
task's own working set did not grow).

:func:`releasing` wraps a Ray Data UDF so that, after it returns, the process collects garbage cycles
and returns free pages (``malloc_trim(0)`` on glibc, ``release_unused()`` on Arrow's pool). A trim
walks the heap, so it is throttled to at most one per ``min_interval`` seconds per process: per-group
UDFs can be called thousands of times a second. Elsewhere (macOS, musl) the libc part is a no-op.
``DAPT_RELEASE_MEMORY=0`` in the workers' environment turns it off (to compare, or should a trim ever
cost more than it saves on some platform).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_last_release = float("-inf")  # the first call in a process releases
_libc: Any = None


def _malloc_trim() -> Callable[[int], int] | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    return getattr(_libc, "malloc_trim", None) if _libc else None


def release_freed_memory() -> None:
    """Collect garbage cycles, then hand free heap pages and Arrow's unused pool pages back to the OS.
    Only memory already freed is returned; nothing live is touched."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):  # pyarrow absent, or older than release_unused (9.0)
        pass


def releasing(fn: F, min_interval: float = 1.0) -> F:
    """``fn`` followed by :func:`release_freed_memory`, at most once per ``min_interval`` seconds in
    this process. Keeps ``fn``'s name, which Ray Data shows as the task title (``MapBatches(name)``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _last_release
        try:
            return fn(*args, **kwargs)
        finally:
            now = time.monotonic()
            if now - _last_release >= min_interval and os.environ.get("DAPT_RELEASE_MEMORY", "1") != "0":
                release_freed_memory()
                _last_release = time.monotonic()

    return wrapper  # type: ignore[return-value]
