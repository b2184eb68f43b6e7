"""Sources named by URI (pipeline.remote over pyarrow.fs): globbing, stat, and readers that give the same
records as for the local path, byte ranges and compression included. ``file://`` URIs exercise the code
path ``s3://`` and ``gs://`` take (pyarrow.fs listing and ranged reads) without a network."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.corpora.clean.readers import ShardSpec, count_newlines, file_size, plan_file, read_shard
from dapt.pipeline import remote
from dapt.pipeline.config import SourceConfig
from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import file_fingerprint


def test_glob_regex_segments():
    rx = remote.glob_regex("bucket/data/*.jsonl")
    assert rx.match("bucket/data/a.jsonl") and not rx.match("bucket/data/sub/a.jsonl")
    deep = remote.glob_regex("bucket/**/*.parquet")
    assert deep.match("bucket/x.parquet") and deep.match("bucket/a/b/x.parquet")
    assert not deep.match("bucket/a/x.parquet.tmp")
    assert remote.glob_regex("b/part-?.txt").match("b/part-1.txt")
    assert not remote.glob_regex("b/part-?.txt").match("b/part-10.txt")
    assert remote.glob_regex("b/[!x]*.gz").match("b/a.gz") and not remote.glob_regex("b/[!x]*.gz").match(
        "b/x.gz"
    )


def test_scheme_detection():
    assert remote.is_remote("s3://b/k") and remote.is_remote("gs://b/k") and remote.is_remote("file:///x")
    assert not remote.is_remote("/data/x.jsonl") and not remote.is_remote("ftp://host/x")
    with pytest.raises(InputError, match="absolute path"):
        remote.resolve("file://relative/x")


def test_expand_and_stat(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    for name in ("a/1.jsonl", "a/2.jsonl", "a/deep/3.jsonl", "a/notes.txt"):
        (tmp_path / name).write_text('{"text": "x"}\n', encoding="utf-8")
    base = f"file://{tmp_path}"
    assert remote.expand(f"{base}/a/*.jsonl") == [f"{base}/a/1.jsonl", f"{base}/a/2.jsonl"]
    assert remote.expand(f"{base}/a/**/*.jsonl") == [
        f"{base}/a/1.jsonl",
        f"{base}/a/2.jsonl",
        f"{base}/a/deep/3.jsonl",
    ]
    assert remote.expand(f"{base}/a/notes.txt") == [f"{base}/a/notes.txt"]
    assert remote.expand(f"{base}/a/missing.jsonl") == [] and remote.expand(f"{base}/nowhere/*.jsonl") == []
    size, mtime = remote.stat(f"{base}/a/1.jsonl")
    assert size == 14 and mtime
    fp = file_fingerprint(f"{base}/a/1.jsonl")
    assert fp == {"path": f"{base}/a/1.jsonl", "size": 14, "mtime_ns": mtime}
    with pytest.raises(InputError, match="missing.jsonl: cannot stat"):
        remote.stat(f"{base}/a/missing.jsonl")
    src = SourceConfig(name="s", kind="domain", paths=[f"{base}/a/*.jsonl", f"{base}/a/1.jsonl"])
    assert src.files() == [f"{base}/a/1.jsonl", f"{base}/a/2.jsonl"]  # sorted, no duplicates
    with pytest.raises(InputError, match="hdfs://nn:8020/x/a.jsonl: URI scheme not supported"):
        SourceConfig(name="h", kind="domain", paths=["hdfs://nn:8020/x/a.jsonl"]).files()


def _records(path: str, fmt: str, shard_bytes: int) -> list[tuple[int, str | None, str | None]]:
    """All records of a file read shard by shard, as plan_shards would split it."""
    out = []
    ranges = plan_file(path, fmt, shard_bytes)
    line0 = 1
    for k, (start, end) in enumerate(ranges):
        if fmt == "jsonl" and k > 0:
            line0 += count_newlines(path, ranges[k - 1][0], start)
        spec = ShardSpec(
            shard=k,
            source_idx=0,
            source="s",
            kind="domain",
            path=path,
            fmt=fmt,
            start=start,
            end=end,
            line0=line0 if fmt != "parquet" else 1,
            txt_mode="blocks",
        )
        out.extend((r.line, r.text, r.reason) for r in read_shard(spec))
    return out


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "txt", "parquet"])
def test_readers_give_the_same_records_for_uri_and_path(tmp_path, kind):
    lines = [json.dumps({"text": f"document {i} " + "word " * (i % 7)}) for i in range(200)]
    lines.insert(50, "{not json")
    body = ("\n".join(lines) + "\n").encode()
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        path.write_bytes(body)
    elif kind == "jsonl.gz":
        path.write_bytes(gzip.compress(body))
    elif kind == "jsonl.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(body))
    elif kind == "txt":
        path.write_text("\n\n".join(f"block {i}\nsecond line" for i in range(100)), encoding="utf-8")
    else:
        pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), path, row_group_size=10)
    fmt = kind.split(".")[0]
    shard_bytes = 500 if kind in ("jsonl", "parquet") else 1 << 20  # several ranges / row-group runs
    local = _records(str(path), fmt, shard_bytes)
    via_uri = _records(f"file://{path}", fmt, shard_bytes)
    assert via_uri == local and len(local) >= 100
    assert file_size(f"file://{path}") == file_size(str(path))
    if kind == "jsonl":
        assert len(plan_file(str(path), fmt, shard_bytes)) > 3  # byte ranges really were used
        assert any(r[2] == "malformed:json" for r in local)


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 endpoint (moto's server on 127.0.0.1): S3 is a service outside this machine, so a
    fake of it stands in, and pyarrow's real S3 client talks to it over HTTP."""
    import os

    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    remote._fs_for.cache_clear()
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        srv.stop()
        remote._fs_for.cache_clear()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_s3_sources_read_like_local_files(s3_server, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="corpus")
    lines = [json.dumps({"text": f"filing {i} " + "revenue " * (i % 5)}) for i in range(120)]
    body = ("\n".join(lines) + "\n").encode()
    local = tmp_path / "filings.jsonl"
    local.write_bytes(body)
    s3.put_object(Bucket="corpus", Key="fin/2024/filings.jsonl", Body=body)
    s3.put_object(Bucket="corpus", Key="fin/2024/filings.jsonl.gz", Body=gzip.compress(body))
    s3.put_object(Bucket="corpus", Key="fin/readme.txt", Body=b"not a corpus file")
    assert remote.expand("s3://corpus/fin/**/*.jsonl") == ["s3://corpus/fin/2024/filings.jsonl"]
    assert remote.expand("s3://corpus/fin/*/*.jsonl*") == [
        "s3://corpus/fin/2024/filings.jsonl",
        "s3://corpus/fin/2024/filings.jsonl.gz",
    ]
    assert remote.stat("s3://corpus/fin/2024/filings.jsonl")[0] == len(body)
    want = _records(str(local), "jsonl", 400)
    assert len(plan_file("s3://corpus/fin/2024/filings.jsonl", "jsonl", 400)) > 3  # ranged reads
    assert _records("s3://corpus/fin/2024/filings.jsonl", "jsonl", 400) == want
    assert _records("s3://corpus/fin/2024/filings.jsonl.gz", "jsonl", 400) == want
    with pytest.raises(InputError, match="missing.jsonl"):
        remote.stat("s3://corpus/fin/missing.jsonl")
