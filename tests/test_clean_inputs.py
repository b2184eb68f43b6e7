"""Broken input files and wrong field names, through the real clean stage on a real local Ray.

A file that cannot be read as a whole (truncated gzip or zstd, a Parquet file without its footer, a
Parquet page that fails its checksum) ends the stage with one line naming the file and how far reading
got, and publishes nothing; with ``clean.on_bad_file: skip`` the file is left out whole and listed in
the manifest. A file in which no record has the configured ``text_field`` is a config error naming
the file, the key and what the file has instead. The console shows that one line and no Ray noise.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import random
import subprocess
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from test_clean_data import prose

from dapt.corpora.clean.console import ray_data_logs
from dapt.corpora.clean.readers import BadFileError, ShardSpec, read_shard
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.stages import run_stage

ROOT = Path(__file__).resolve().parent.parent
GZ_EOF = "Compressed file ended before the end-of-stream marker was reached"
NO_FOOTER = (
    "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."
)
BAD_CRC = "could not verify page integrity, CRC checksum verification failed for page_ordinal 0"


def _jsonl(docs: list[dict]) -> bytes:
    return "".join(json.dumps(d) + "\n" for d in docs).encode()


def truncated_gzip(path: Path, docs: list[dict]) -> tuple[int, int]:
    """Write the first half of ``docs``' gzip stream; return (line, byte) where reading must stop:
    the first line not complete in what zlib can decode, and the byte it starts at."""
    data = gzip.compress(_jsonl(docs))
    cut = data[: len(data) // 2]
    path.write_bytes(cut)
    decodable = zlib.decompressobj(wbits=31).decompress(cut)
    return decodable.count(b"\n") + 1, decodable.rfind(b"\n") + 1


def corrupt_parquet(path: Path, texts: list[str], group: int = 1, rows: int = 16) -> None:
    """A Parquet file (page checksums on, no compression) with bytes flipped inside the text column's
    page of row group ``group``: its footer is fine, reading that group fails."""
    pq.write_table(
        pa.table({"text": texts, "id": [f"p{i}" for i in range(len(texts))]}),
        path,
        row_group_size=rows,
        compression="none",
        use_dictionary=False,
        write_page_checksum=True,
    )
    col = pq.ParquetFile(path).metadata.row_group(group).column(0)
    mid = col.data_page_offset + col.total_compressed_size // 2
    b = bytearray(path.read_bytes())
    b[mid : mid + 16] = b"\xff" * 16
    path.write_bytes(bytes(b))


def write_config(tmp: Path, sources: str, extra: str = "") -> Path:
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"""name: inputs
run_dir: {tmp / "run"}
sources:
{sources}
model: {{from_config: {{}}}}
ray: {{num_cpus: 2, object_store_memory_gb: 1}}
clean:
  shuffle_partitions: 2
  buckets: 8
{extra}
""",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    rng = random.Random(5)
    fin = [{"id": f"fin-{i}", "text": prose(rng)} for i in range(8)]
    (root / "fin.jsonl").write_bytes(_jsonl(fin))
    web = [{"text": prose(rng)} for _ in range(200)]
    with gzip.open(root / "web-ok.jsonl.gz", "wb") as f:
        f.write(_jsonl(web[:6]))
    line, byte = truncated_gzip(root / "web-cut.jsonl.gz", web)
    news = [prose(rng) for _ in range(6)]
    pq.write_table(pa.table({"text": news}), root / "news-ok.parquet")
    corrupt_parquet(root / "news-page.parquet", [prose(rng) for _ in range(48)])
    whole = (root / "news-ok.parquet").read_bytes()
    (root / "news-cut.parquet").write_bytes(whole[: len(whole) // 2])
    return {"root": root, "gz_line": line, "gz_byte": byte, "fin": fin, "news": news}


def _fin(root: Path) -> str:
    return f'  - {{name: fin, kind: domain, paths: ["{root}/fin.jsonl"], id_field: id}}'


def gz_error(data: dict) -> str:
    return (
        f"{data['root']}/web-cut.jsonl.gz: corrupt or truncated gzip data at line {data['gz_line']} "
        f"(decompressed byte {data['gz_byte']}): {GZ_EOF}"
    )


# ---------------------------------------------------------------------------------------------- readers


def test_readers_name_the_file_and_how_far_they_got(data, tmp_path):
    """Without Ray: the reader's BadFileError is the one line the stage prints. A truncated zstd file
    raises too (python-zstandard's stream reader alone would end silently)."""
    root = data["root"]
    spec = ShardSpec(0, 0, "web", "general", str(root / "web-cut.jsonl.gz"), "jsonl")
    got = []
    with pytest.raises(BadFileError) as e:
        got.extend(read_shard(spec))
    assert str(e.value) == gz_error(data)
    assert len(got) == data["gz_line"] - 1  # every complete line before the cut, none after
    rng = random.Random(1)
    body = _jsonl([{"text": " ".join(str(rng.random()) for _ in range(40))} for _ in range(300)])
    z = zstandard.ZstdCompressor().compress(body)
    zpath = tmp_path / "cut.jsonl.zst"
    zpath.write_bytes(z[: len(z) // 2])
    decoded = zstandard.ZstdDecompressor().decompressobj().decompress(z[: len(z) // 2])
    line, byte = decoded.count(b"\n") + 1, decoded.rfind(b"\n") + 1
    with pytest.raises(BadFileError) as e:
        list(read_shard(ShardSpec(0, 0, "s", "domain", str(zpath), "jsonl")))
    assert str(e.value) == (
        f"{zpath}: corrupt or truncated zstd data at line {line} (decompressed byte {byte}): "
        "the file ends inside a zstd frame"
    )
    page = ShardSpec(0, 0, "news", "general", str(root / "news-page.parquet"), "parquet")
    with pytest.raises(BadFileError) as e:
        list(read_shard(page))
    assert (
        str(e.value) == f"{root}/news-page.parquet: cannot read Parquet row group 1 (rows 17-32): {BAD_CRC}"
    )


def test_reader_error_from_a_ray_task_is_unwrapped_to_its_one_line(tmp_path, ray_local):
    """What ``plan_shards`` does with a ``ray.get`` that failed in a reader (the newline counts of a
    large file): Ray's ``RayTaskError`` prints the worker traceback; the error behind it is the one line."""
    import ray

    from dapt.corpora.clean.plan import dapt_error_of
    from dapt.corpora.clean.readers import count_newlines

    missing = str(tmp_path / "gone.jsonl")
    with pytest.raises(Exception) as e:
        ray.get(ray.remote(count_newlines).remote(missing, 0, 10))
    assert "\n" in str(e.value)  # the RayTaskError text is the multi-line traceback
    err = dapt_error_of(e.value)
    assert type(err) is BadFileError and err.path == missing
    assert str(err) == f"{missing}: cannot open: [Errno 2] No such file or directory: '{missing}'"
    assert dapt_error_of(RuntimeError("not ours")) is None


# ---------------------------------------------------------------------------------------------- fail


def test_truncated_gzip_fails_the_stage_with_one_line_and_publishes_nothing(data, tmp_path, ray_local):
    root = data["root"]
    sources = _fin(root) + f'\n  - {{name: web, kind: general, paths: ["{root}/web-*.jsonl.gz"]}}'
    cfg = load_config(write_config(tmp_path, sources))
    with pytest.raises(InputError) as e:
        run_stage(cfg, "clean", echo=None)
    assert type(e.value) is BadFileError  # the reader's own error, raised in the driver: not a RayTaskError
    assert str(e.value) == gz_error(data)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "clean").exists()


def test_bad_parquet_fails_naming_file_and_row_group(data, tmp_path, ray_local):
    root = data["root"]
    for name, line in (
        ("news-cut.parquet", f"{root}/news-cut.parquet: cannot read Parquet: {NO_FOOTER}"),
        (
            "news-page.parquet",
            f"{root}/news-page.parquet: cannot read Parquet row group 1 (rows 17-32): {BAD_CRC}",
        ),
    ):
        sources = _fin(root) + f'\n  - {{name: news, kind: general, paths: ["{root}/{name}"]}}'
        cfg = load_config(write_config(tmp_path, sources))
        with pytest.raises(BadFileError) as e:
            run_stage(cfg, "clean", echo=None)
        assert str(e.value) == line
        assert not (tmp_path / "run" / "clean").exists()


# ---------------------------------------------------------------------------------------------- skip


def test_skip_mode_lists_bad_files_and_counts_reconcile(data, tmp_path, ray_local, capsys):
    """Three broken files skipped whole (the corrupt-page Parquet is split into three shards by
    ``shard_mb``: its readable row groups are left out too), the good files cleaned as usual."""
    root = data["root"]
    sources = "\n".join(
        [
            _fin(root),
            f'  - {{name: web, kind: general, paths: ["{root}/web-*.jsonl.gz"]}}',
            f'  - {{name: news, kind: general, paths: ["{root}/news-*.parquet"]}}',
        ]
    )
    cfg = load_config(write_config(tmp_path, sources, "  on_bad_file: skip\n  shard_mb: 0.01"))
    m = run_stage(cfg, "clean", echo=None)
    assert m["skipped_files"] == [
        {"source": "news", "file": f"{root}/news-cut.parquet", "reason": f"cannot read Parquet: {NO_FOOTER}"},
        {"source": "web", "file": f"{root}/web-cut.jsonl.gz", "reason": gz_error(data).split(": ", 1)[1]},
        {
            "source": "news",
            "file": f"{root}/news-page.parquet",
            "reason": f"cannot read Parquet row group 1 (rows 17-32): {BAD_CRC}",
        },
    ]
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("clean: warning:")]
    assert warned == [
        f"clean: warning: skipped {sk['file']} (clean.on_bad_file: skip): {sk['reason']}"
        for sk in m["skipped_files"]
    ]
    s = m["sources"]
    assert (s["fin"]["files"], s["web"]["files"], s["news"]["files"]) == (1, 1, 1)
    assert (s["fin"]["skipped_files"], s["web"]["skipped_files"], s["news"]["skipped_files"]) == (0, 1, 2)
    assert m["totals"]["skipped_files"] == 3
    assert (s["fin"]["docs_in"], s["web"]["docs_in"], s["news"]["docs_in"]) == (8, 6, 6)
    for e in s.values():
        assert e["docs_in"] == e["kept"] + sum(e["rejected"].values())
    out = tmp_path / "run" / "clean"
    files = set()
    for f in (out / "rejected").rglob("*.parquet"):
        files.update(pq.read_table(f, columns=["file"]).column("file").to_pylist())
    assert not files & {sk["file"] for sk in m["skipped_files"]}
    news = pa.concat_tables([pq.read_table(f) for f in (out / "kept" / "news").glob("*.parquet")])
    assert sorted(news.column("text").to_pylist()) == sorted(data["news"])  # only news-ok.parquet


# ---------------------------------------------------------------------------------------------- fields


def test_file_without_the_text_field_is_a_config_error(data, tmp_path, ray_local):
    root = tmp_path / "data"
    root.mkdir()
    rng = random.Random(2)
    pq.write_table(pa.table({"body": [prose(rng)], "id": ["a"]}), root / "x.parquet")
    (root / "x.jsonl").write_bytes(_jsonl([{"body": prose(rng), "id": i} for i in range(5)] + [{"id": 9}]))
    (root / "ok.jsonl").write_bytes(_jsonl([{"text": prose(rng), "id": i} for i in range(3)]))
    cases = [
        (
            f'  - {{name: p, kind: domain, paths: ["{root}/ok.jsonl"]}}\n'
            f'  - {{name: q, kind: general, paths: ["{root}/x.parquet"]}}',
            f"{root}/x.parquet: no column 'text' (sources.1.text_field); columns: body, id",
        ),
        (
            f'  - {{name: j, kind: domain, paths: ["{root}/x.jsonl"]}}',
            f"{root}/x.jsonl: no record has key 'text' (sources.0.text_field); keys: id, body",
        ),
        (
            f'  - {{name: j, kind: domain, paths: ["{root}/ok.jsonl"], id_field: uid}}',
            f"{root}/ok.jsonl: no record has key 'uid' (sources.0.id_field); keys: id, text",
        ),
    ]
    for sources, line in cases:
        cfg = load_config(write_config(tmp_path, sources))
        with pytest.raises(ConfigError) as e:
            run_stage(cfg, "clean", echo=None)
        assert str(e.value) == line
        assert not (tmp_path / "run" / "clean").exists()


# ---------------------------------------------------------------------------------------------- console


def test_ray_data_detail_goes_to_the_stage_log_and_real_warnings_to_the_console(tmp_path, monkeypatch):
    """During the stage Ray Data's INFO lines and its "Progress bars disabled" notice stay off the
    console and go to the stage log; a real warning from Ray Data still reaches the console; nothing
    outlives the stage."""
    import ray.data  # noqa: F401 - configures the ``ray.data`` logger

    console = io.StringIO()  # in place of the stderr Ray Data's console handler captured when made
    (handler,) = [h for h in logging.getLogger("ray.data").handlers if h.name == "console"]
    monkeypatch.setattr(handler, "stream", console)
    stage_log = logging.getLogger("dapt.test_clean_console")
    log_file = logging.FileHandler(tmp_path / "stage.log", encoding="utf-8")
    stage_log.addHandler(log_file)
    notices = logging.getLogger("ray.data._internal.progress")
    executor = logging.getLogger("ray.data._internal.execution.streaming_executor")
    try:
        with ray_data_logs(stage_log):
            notices.warning("Progress bars disabled. To enable, set ...")
            executor.info("Dataset dataset_1 execution finished in 0.10 seconds")
            executor.warning("Ray's object store is configured to use only 1% of available memory")
        notices.warning("after the stage")
    finally:
        stage_log.removeHandler(log_file)
        log_file.close()
    err = console.getvalue()
    assert "Progress bars disabled" not in err and "execution finished" not in err
    assert "object store is configured" in err and "after the stage" in err
    log = (tmp_path / "stage.log").read_text()
    for line in ("Progress bars disabled", "execution finished", "object store is configured"):
        assert line in log
    assert "after the stage" not in log


def test_dapt_clean_prints_one_error_line_and_no_ray_noise(data, tmp_path):
    """``dapt clean`` on a truncated gzip: exit 2, one ``dapt: error:`` line (the reader's), no
    traceback, no RayTaskError, no progress-bar notice and no Ray Data job lines on the console; they
    are in the stage log."""
    root = data["root"]
    sources = _fin(root) + f'\n  - {{name: web, kind: general, paths: ["{root}/web-*.jsonl.gz"]}}'
    cfg = write_config(tmp_path, sources)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/dapt"), "clean", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 2, console
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("dapt")] == [
        f"dapt: error: {gz_error(data)}"
    ]
    for noise in ("Traceback", "RayTaskError", "UserCodeException", "Progress bars", "execution f"):
        assert noise not in console, noise
    assert not (tmp_path / "run" / "clean").exists()
    assert "Progress bars disabled" in (tmp_path / "run" / "logs" / "clean.log").read_text()
