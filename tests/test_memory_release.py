"""pipeline.memory: freed heap really goes back to the OS; the UDF wrapper keeps name and result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from dapt.pipeline import memory

# A heap that glibc keeps after the program frees it: 150 MB of 4 KB strings (above pymalloc's 512 B,
# below malloc's mmap threshold, so they come from the heap), all freed except one allocated last,
# which pins the top of the heap so that free() alone cannot shrink it.
_PROBE = r"""
import json, sys, psutil
from dapt.pipeline import memory

def anon():
    mi = psutil.Process().memory_info()
    return (mi.rss - mi.shared) / 1e6

base = anon()
blocks = [b"x" * 4000 + i.to_bytes(4, "little") for i in range(37_500)]
pin = b"y" * 4000 + b"pin"
held = anon()
del blocks
freed = anon()
if sys.argv[1] == "release":
    memory.release_freed_memory()
after = anon()
print(json.dumps({"base": base, "held": held, "freed": freed, "after": after, "pin": len(pin)}))
"""


def _probe(mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's; elsewhere release_freed_memory only collects garbage",
)
def test_release_returns_freed_heap_to_the_os():
    kept = _probe("keep")
    released = _probe("release")
    for r in (kept, released):
        assert r["held"] - r["base"] > 120  # the strings were really resident
    # Without a trim the freed strings stay resident (the pinned top chunk blocks free()'s own trim) ...
    assert kept["after"] - kept["base"] > 100, kept
    # ... with one, almost all of them go back.
    assert released["after"] - released["base"] < 30, released


def test_releasing_keeps_name_result_and_errors(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(memory, "_last_release", float("-inf"))

    def band_group(batch, k=1):
        if batch is None:
            raise ValueError("bad batch")
        return {"n": batch + k}

    wrapped = memory.releasing(band_group, min_interval=3600)
    assert wrapped.__name__ == "band_group"  # Ray Data's task title
    assert wrapped(1, k=2) == {"n": 3}
    assert calls == [1]
    assert wrapped(2) == {"n": 3}
    assert calls == [1]  # throttled: at most one release per min_interval in a process
    monkeypatch.setattr(memory, "_last_release", float("-inf"))
    with pytest.raises(ValueError, match="bad batch"):
        wrapped(None)
    assert calls == [1, 1]  # released after a failing call too
    monkeypatch.setenv("DAPT_RELEASE_MEMORY", "0")
    monkeypatch.setattr(memory, "_last_release", float("-inf"))
    wrapped(3)
    assert calls == [1, 1]  # turned off


def test_release_runs_in_this_process():
    memory.release_freed_memory()  # must not raise whatever the platform
    assert os.getpid()  # and leaves the process usable
