"""Inputs of any size: text blocks split into byte ranges, multi-frame zstd split at frame boundaries,
gzip streamed. Real files, real readers, the real clean stage on a real local Ray.

What must hold (docs/cleaning.md, Readers): splitting a file into more shards changes no document,
no id, no kept/rejected decision and no order; a compressed file is read lazily, never whole; a
corrupt frame is one line naming the file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from test_clean_data import prose

from dapt.corpora.clean.plan import plan_shards
from dapt.corpora.clean.readers import (
    BadFileError,
    ShardSpec,
    count_newlines,
    plan_file,
    read_shard,
)
from dapt.pipeline.config import load_config
from dapt.pipeline.stages import run_stage


def _read_split(path: Path, fmt: str, shard_bytes: int, mode: str = "blocks") -> tuple[int, list]:
    """(shards, records) of reading ``path`` shard by shard, numbered as ``plan_shards`` does."""
    out, line0, prev = [], 1, 0
    ranges = plan_file(str(path), fmt, shard_bytes, txt_mode=mode)
    for start, end in ranges:
        if start > 0:
            line0 += count_newlines(str(path), prev, start)
            prev = start
        spec = ShardSpec(
            0, 0, "s", "domain", str(path), fmt, start=start, end=end, line0=line0, txt_mode=mode
        )
        out.extend((r.line, r.text, r.reason) for r in read_shard(spec))
    return len(ranges), out


def _frames(body: bytes, rng: random.Random, max_frame: int) -> bytes:
    """``body`` as zstd frames cut at random bytes (mid-line), some without a declared content size
    (a streaming writer's frames), with a skippable frame here and there."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    i = 0
    while i < len(body):
        n = rng.randint(1, max_frame)
        piece, i = body[i : i + n], i + n
        if rng.random() < 0.3:
            w = cctx.stream_writer(out, closefd=False)
            w.write(piece)
            w.flush(zstandard.FLUSH_FRAME)
        else:
            out.write(cctx.compress(piece))
        if rng.random() < 0.05:
            out.write(struct.pack("<II", 0x184D2A50, 3) + b"abc")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- readers


def test_text_blocks_split_anywhere_read_as_whole(tmp_path):
    """Blank lines of spaces, tabs and CRLF, blocks longer than a range, no final newline: every
    split (down to one byte per range) yields the blocks, first lines and texts of a whole read."""
    rng = random.Random(7)
    for trial in range(40):
        parts = []
        for _ in range(150):
            if rng.random() < 0.3:
                parts.append(rng.choice(["\n", " \n", "\t \n", "\r\n", "  \r\n"]))
            else:
                words = " ".join(rng.choice(["a", "bb", "c c", "ddd"]) for _ in range(rng.randint(0, 25)))
                parts.append(words + rng.choice(["\n", "\r\n"]))
        body = "".join(parts)
        p = tmp_path / f"t{trial}.txt"
        p.write_bytes((body.rstrip("\n") if trial % 2 else body).encode())
        n1, whole = _read_split(p, "txt", 1 << 30)
        assert n1 == 1
        for shard_bytes in (1, 3, 17, 100):
            n, got = _read_split(p, "txt", shard_bytes)
            assert got == whole, (trial, shard_bytes)
            assert shard_bytes > 17 or n > 10


def test_zstd_frames_split_anywhere_read_as_whole(tmp_path):
    """Frames cut mid-line, frames without a content size, skippable frames: a shard owns the lines
    that start in its decompressed data, so every grouping of frames reads as the whole file."""
    rng = random.Random(3)
    for trial in range(30):
        lines = [json.dumps({"text": "x" * rng.randint(0, 60)}) for _ in range(200)]
        lines[rng.randrange(200)] = "{broken"
        body = ("\n".join(lines) + ("\n" if trial % 2 else "")).encode()
        p = tmp_path / f"z{trial}.jsonl.zst"
        p.write_bytes(_frames(body, rng, 700))
        assert len(plan_file(str(p), "jsonl", 1 << 30)) == 1
        _, whole = _read_split(p, "jsonl", 1 << 30)
        assert [w[0] for w in whole] == list(range(1, 201))
        for shard_bytes in (1, 300, 2000):
            n, got = _read_split(p, "jsonl", shard_bytes)
            assert got == whole, (trial, shard_bytes)
            assert n > 2


def test_single_frame_zstd_and_gzip_are_one_shard(tmp_path):
    body = b"".join(json.dumps({"text": str(i)}).encode() + b"\n" for i in range(5000))
    (tmp_path / "one.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    (tmp_path / "one.jsonl.gz").write_bytes(gzip.compress(body))
    for name in ("one.jsonl.zst", "one.jsonl.gz"):
        assert plan_file(str(tmp_path / name), "jsonl", 100) == [(0, -1)]
    assert plan_file(str(tmp_path / "one.jsonl.zst"), "txt", 100, txt_mode="blocks") == [(0, -1)]


def _file_position(path: Path) -> int | None:
    """The offset of this process's open descriptor on ``path`` (Linux /proc), or None."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    return int(f.readline().split()[1])
        except OSError:
            continue
    return None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fdinfo"), reason="needs Linux /proc")
def test_compressed_and_text_readers_are_lazy(tmp_path):
    """The first record arrives while the file descriptor has read a small part of the file: gzip,
    zstd and text are streamed, not decompressed or read whole first (a whole read would leave the
    descriptor at the end of the file)."""
    rng = random.Random(1)
    body = b"".join(
        json.dumps({"text": rng.randbytes(60).hex()}).encode() + b"\n" for _ in range(80_000)
    )  # ~10 MB of poorly compressible text
    files = {
        "big.jsonl.gz": gzip.compress(body, compresslevel=1),
        "big.jsonl.zst": zstandard.ZstdCompressor(level=1).compress(body),
        "big.txt": body.replace(b"\n", b"\n\n"),  # a block per line
    }
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        fmt, mode = ("txt", "blocks") if name.endswith(".txt") else ("jsonl", "file")
        gen = read_shard(ShardSpec(0, 0, "s", "domain", str(p), fmt, txt_mode=mode))
        first = next(gen)
        at = _file_position(p)
        assert first.line == 1 and at is not None, name
        assert at < len(data) // 4, (name, at, len(data))  # read buffers: ~1-2 MiB, not the file
        gen.close()


def test_corrupt_frame_of_a_split_zstd_names_file_line_and_byte(tmp_path):
    """A corrupt frame (checksum mismatch) fails the shard that reads it with the same one line as a
    whole-file read: the file, the line being read, its decompressed byte. A shard whose own frames
    are fine and end before it does not read the broken frame at all."""
    frames = []
    for k in range(4):
        body = "".join(json.dumps({"text": f"{k}-{i} " * 8}) + "\n" for i in range(50)).encode()
        frames.append(zstandard.ZstdCompressor(write_checksum=True).compress(body))
    data = bytearray(b"".join(frames))
    bad = len(frames[0]) + len(frames[1])
    data[bad + len(frames[2]) // 2 : bad + len(frames[2]) // 2 + 8] = b"\0" * 8
    p = tmp_path / "c.jsonl.zst"
    p.write_bytes(bytes(data))
    with pytest.raises(BadFileError) as whole:
        list(read_shard(ShardSpec(0, 0, "s", "domain", str(p), "jsonl")))
    msg = str(whole.value)
    assert msg.startswith(f"{p}: corrupt or truncated zstd data at line 101 (decompressed byte ")
    assert "\n" not in msg and "zstd decompressor error" in msg
    ranges = plan_file(str(p), "jsonl", 1)
    assert [s for s, _ in ranges] == [0, len(frames[0]), bad, bad + len(frames[2])]
    first = ShardSpec(0, 0, "s", "domain", str(p), "jsonl", start=0, end=ranges[0][1])
    assert len(list(read_shard(first))) == 50
    line0 = 1 + count_newlines(str(p), 0, bad)
    third = ShardSpec(0, 0, "s", "domain", str(p), "jsonl", start=bad, end=ranges[2][1], line0=line0)
    with pytest.raises(BadFileError) as e:
        list(read_shard(third))
    assert str(e.value) == msg
    cut = tmp_path / "cut.jsonl.zst"  # truncated: the frame index is not trusted, one streamed shard
    cut.write_bytes(bytes(data[: bad + 10]))
    assert plan_file(str(cut), "jsonl", 1) == [(0, -1)]
    with pytest.raises(BadFileError, match=r"the file ends inside a zstd frame$"):
        list(read_shard(ShardSpec(0, 0, "s", "domain", str(cut), "jsonl")))


# ---------------------------------------------------------------------------------------------- stage


def _corpus(root: Path) -> None:
    """Text blocks, gzip JSONL and multi-frame zstd JSONL with documents that pass, documents the
    steps reject (too short), malformed records and exact duplicates within and across files."""
    rng = random.Random(11)
    root.mkdir()
    docs = [prose(rng, paragraphs=1, sentences=7) for _ in range(150)]
    short = ["too short to keep.", "tiny", "a few words only here."]

    def pick() -> str:
        r = rng.random()
        return rng.choice(short) if r < 0.15 else rng.choice(docs[:20]) if r < 0.3 else rng.choice(docs)

    blocks = "\n".join(pick() + "\n" + rng.choice(["", " \n", "\n"]) for _ in range(160))
    (root / "notes.txt").write_text(blocks, encoding="utf-8")
    rows = [json.dumps({"text": pick()}) for _ in range(160)]
    rows[7] = "{not json"
    (root / "web.jsonl.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    rows = [json.dumps({"text": pick()}) for _ in range(160)]
    rows[40] = '{"body": "no text"}'
    (root / "crawl.jsonl.zst").write_bytes(_frames(("\n".join(rows) + "\n").encode(), rng, 3000))


def _clean(tmp: Path, corpus: Path, shard_mb: float) -> tuple[dict, list, list, dict]:
    cfg_path = tmp / "c.yaml"
    cfg_path.write_text(
        f"""name: large
run_dir: {tmp / "run"}
sources:
  - {{name: notes, kind: domain, paths: ["{corpus}/notes.txt"], txt_mode: blocks}}
  - {{name: web, kind: general, paths: ["{corpus}/web.jsonl.gz"]}}
  - {{name: crawl, kind: general, paths: ["{corpus}/crawl.jsonl.zst"]}}
model: {{from_config: {{}}}}
ray: {{num_cpus: 2, object_store_memory_gb: 1}}
clean:
  shard_mb: {shard_mb}
  shuffle_partitions: 2
  buckets: 8
""",
        encoding="utf-8",
    )
    cfg = load_config(cfg_path)
    shards: dict[str, int] = {}
    for s in plan_shards(cfg).shards:
        shards[s.source] = shards.get(s.source, 0) + 1
    manifest = run_stage(cfg, "clean", echo=None)
    out = tmp / "run" / "clean"

    def rows(kind: str, cols: list[str]) -> list:
        got = []
        for src in ("notes", "web", "crawl"):
            files = sorted((out / kind / src).glob("*.parquet"))  # part-<shard>: file order
            if files:
                t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
                got.extend(zip(*(t.column(c).to_pylist() for c in cols), strict=True))
        return got

    kept = rows("kept", ["id", "text"])
    rejected = sorted(rows("rejected", ["id", "line", "step", "reason"]))  # -dup parts sort apart
    return manifest, kept, rejected, shards


def test_many_shards_give_the_same_clean_output_as_one(tmp_path, ray_local):
    """The golden comparison: the clean stage with tiny shards (text ranges, frame groups) and with
    one shard per file keeps the same ids and texts in the same order and rejects the same ids for
    the same reasons; counts reconcile in both."""
    _corpus(tmp_path / "corpus")
    (tmp_path / "many").mkdir()
    (tmp_path / "one").mkdir()
    m_many, kept_many, rej_many, shards_many = _clean(tmp_path / "many", tmp_path / "corpus", 0.004)
    m_one, kept_one, rej_one, shards_one = _clean(tmp_path / "one", tmp_path / "corpus", 64)
    assert shards_one == {"notes": 1, "web": 1, "crawl": 1}
    assert shards_many["notes"] > 5 and shards_many["crawl"] > 5 and shards_many["web"] == 1
    assert kept_many == kept_one and len(kept_one) > 100
    assert rej_many == rej_one
    reasons = {r[3] for r in rej_one}
    assert {"malformed:json", "malformed:missing_text"} <= reasons
    assert any(r.startswith("duplicate:exact") for r in reasons)
    for m in (m_many, m_one):
        for src, s in m["sources"].items():
            assert s["docs_in"] == s["kept"] + sum(s["rejected"].values()), src
    assert {k: v["docs_in"] for k, v in m_many["sources"].items()} == {
        k: v["docs_in"] for k, v in m_one["sources"].items()
    }
