"""The clean stage end to end on a real local Ray over a corpus with planted problems.

The corpus (about 300 documents, 4 sources in 3 formats, one 5 MB document) plants malformed
lines, invalid bytes, empty documents, exact and near duplicates (within and across sources),
every PII kind and numeric finance tables, and records the ground truth; the tests compare the
stage's Parquet outputs and manifest against it.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_clean_data import finance_table, near_duplicate, prose

from dapt.corpora.clean.minhash import jaccard
from dapt.corpora.clean.steps import find_pii
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError
from dapt.pipeline.stages import run_stage

PII = {
    "email": "jane.roe@example.org",
    "phone": "(212) 555-0143",
    "ipv4": "10.20.30.40",
    "ipv6": "2001:db8:85a3::8a2e:370:7334",
    "card": "4539 1488 0343 6467",
    "ssn": "123-45-6789",
    "iban": "GB82 WEST 1234 5698 7654 32",
}


def build_corpus(root: Path) -> dict:
    """Write the planted corpus under ``root``; return the ground truth."""
    rng = random.Random(7)
    truth: dict = {"unique": set(), "exact": [], "near": [], "tables": set(), "malformed": {}, "docs_in": {}}
    root.mkdir(parents=True, exist_ok=True)

    # fin: domain JSONL with ids and dates, split into byte ranges (shard_mb is tiny in the config)
    fin: list[dict] = []
    for i in range(60):
        fin.append({"id": f"fin-{i}", "date": f"2024-01-{1 + i % 28:02d}", "text": prose(rng)})
    for i in range(8):
        fin.append({"id": f"tab-{i}", "text": finance_table(rng)})
        truth["tables"].add(f"tab-{i}")
    for k, v in PII.items():
        t = prose(rng, paragraphs=2)
        fin.append({"id": f"pii-{k}", "text": t.replace(". ", f". Contact {v} today. ", 1)})
    truth["unique"].update(d["id"] for d in fin)
    for i in range(5):  # exact copies, later in the file
        fin.append({"id": f"fin-exact-{i}", "text": fin[i]["text"]})
        truth["exact"].append((f"fin-{i}", f"fin-exact-{i}"))
    for i in range(10, 16):  # near copies with a few words changed
        fin.append({"id": f"fin-near-{i}", "text": near_duplicate(fin[i]["text"], rng)})
        truth["near"].append((f"fin-{i}", f"fin-near-{i}"))
    lines = [json.dumps(d).encode() for d in fin]
    bad = [
        b"{not json at all",
        b'{"id": "bad-utf8", "text": "caf\xe9 au lait \xff"}',
        json.dumps({"id": "no-text", "body": "x"}).encode(),
        json.dumps({"id": "num-text", "text": 42}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        b"[1, 2, 3]",
    ]
    # malformed records interleaved at known lines
    out: list[bytes] = []
    bad_at = {5: bad[0], 20: bad[1], 33: bad[2], 47: bad[3], 61: bad[4], 70: bad[5]}
    it = iter(lines)
    line_no = 0
    while True:
        line_no += 1
        if line_no in bad_at:
            out.append(bad_at[line_no])
            continue
        nxt = next(it, None)
        if nxt is None:
            break
        out.append(nxt)
    (root / "fin.jsonl").write_bytes(b"\n".join(out) + b"\n\n")
    truth["malformed"] = {
        5: "malformed:json",
        20: "malformed:utf8",
        33: "malformed:missing_text",
        47: "malformed:text_type",
        70: "malformed:not_object",
    }
    truth["docs_in"]["fin"] = len(out)
    truth["fin_lines"] = {json.loads(b)["id"]: n + 1 for n, b in enumerate(out) if b in lines}

    # web: general JSONL.gz; near copies of fin documents (cross-source) and junk the web rules drop
    web = [{"text": prose(rng)} for _ in range(50)]
    web_ids = list(range(50))
    web.append({"text": near_duplicate(fin[20]["text"], rng)})
    truth["near_cross"] = [("fin-20", ("web", 51))]
    web.append({"text": "Lorem ipsum dolor sit amet. " + prose(rng)})
    web.append({"text": "Le conseil a approuvé les comptes annuels de la société et le dividende. " * 8})
    web.append({"text": "var x = {a: 1};\n" + prose(rng)})
    web.append({"text": fin[30]["text"]})  # exact duplicate across sources
    truth["exact_cross"] = [("fin-30", ("web", 55))]
    with gzip.open(root / "web.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in web:
            f.write(json.dumps(d) + "\n")
    truth["docs_in"]["web"] = len(web)
    truth["web_unique_lines"] = [i + 1 for i in web_ids]

    # news: general Parquet with two row groups and a null text
    news = [prose(rng) for _ in range(30)]
    news.append(None)
    news.append(news[3])  # exact duplicate within the source
    pq.write_table(
        pa.table({"text": news, "date": ["2023-05-01"] * len(news)}), root / "news.parquet", row_group_size=16
    )
    truth["docs_in"]["news"] = len(news)

    # big: domain txt files (one document each), one of 5 MB, with its own step list
    (root / "big").mkdir(exist_ok=True)
    vocab = prose(random.Random(99), paragraphs=1, sentences=40).split(" ")
    brng = random.Random(5)
    parts, size = [], 0
    while size < 5_000_000:
        s = " ".join(brng.sample(vocab, 40)) + "."
        parts.append(s)
        size += len(s) + 1
    words = parts
    (root / "big" / "a_big.txt").write_text(" ".join(words), encoding="utf-8")
    (root / "big" / "b_small.txt").write_text(prose(rng), encoding="utf-8")
    (root / "big" / "c_bad.txt").write_bytes(b"broken \xc3\x28 bytes in a text file")
    truth["docs_in"]["big"] = 3
    return truth


def write_config(tmp: Path, corpus: Path | str, run_dir: Path, extra: str = "") -> Path:
    """``corpus`` may be a ``file://`` URI prefix: the sources are then read through pipeline.remote."""
    cfg = tmp / "clean.yaml"
    cfg.write_text(
        f"""name: cleantest
run_dir: {run_dir}
sources:
  - {{name: fin, kind: domain, paths: ["{corpus}/fin.jsonl"], id_field: id, date_field: date}}
  - {{name: web, kind: general, paths: ["{corpus}/web.jsonl.gz"]}}
  - {{name: news, kind: general, paths: ["{corpus}/news.parquet"], date_field: date}}
  - name: big
    kind: domain
    paths: ["{corpus}/big/*.txt"]
    txt_mode: file
    steps:
      - {{name: normalize}}
      - {{name: gopher_quality, params: {{max_words: 2000000, min_words: 20}}}}
      - {{name: pii}}
model: {{from_config: {{}}}}
ray: {{num_cpus: 2, object_store_memory_gb: 1}}
clean:
  shard_mb: 0.03
  batch_docs: 40
{extra}
""",
        encoding="utf-8",
    )
    return cfg


def read_dir(d: Path) -> pa.Table:
    files = sorted(d.rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("clean")
    truth = build_corpus(tmp / "corpus")
    cfg_path = write_config(tmp, tmp / "corpus", tmp / "run")
    cfg = load_config(cfg_path)
    manifest = run_stage(cfg, "clean", echo=None)
    out = tmp / "run" / "clean"
    return {
        "tmp": tmp,
        "truth": truth,
        "cfg": cfg,
        "manifest": manifest,
        "out": out,
        "kept": read_dir(out / "kept"),
        "rejected": read_dir(out / "rejected"),
    }


def test_counts_reconcile_with_files_and_truth(cleaned):
    m, kept, rej, truth = cleaned["manifest"], cleaned["kept"], cleaned["rejected"], cleaned["truth"]
    assert m["outputs"] == {"kept": "kept", "rejected": "rejected"}
    for name, s in m["sources"].items():
        assert s["docs_in"] == truth["docs_in"][name], name
        assert s["docs_in"] == s["kept"] + sum(s["rejected"].values()), name
        assert s["kept"] == sum(1 for x in kept.column("source").to_pylist() if x == name)
        nrej = sum(1 for x in rej.column("source").to_pylist() if x == name)
        assert nrej == sum(s["rejected"].values())
        kb = sum(
            b
            for b, src in zip(
                kept.column("bytes").to_pylist(), kept.column("source").to_pylist(), strict=True
            )
            if src == name
        )
        assert s["kept_bytes"] == kb
    assert m["totals"]["docs_in"] == m["totals"]["kept"] + m["totals"]["rejected"]
    assert kept.schema.names == ["id", "source", "kind", "text", "bytes", "date", "pii", "cluster_id"]
    assert rej.schema.names[:8] == ["id", "source", "kind", "text", "file", "line", "step", "reason"]
    texts = kept.column("text").to_pylist()
    assert kept.column("bytes").to_pylist() == [len(t.encode()) for t in texts]
    assert len(set(kept.column("id").to_pylist())) == kept.num_rows


def test_malformed_records_rejected_with_file_and_line(cleaned):
    rej, truth = cleaned["rejected"], cleaned["truth"]
    rows = [r for r in rej.to_pylist() if r["source"] == "fin" and r["reason"].startswith("malformed")]
    got = {r["line"]: r["reason"] for r in rows}
    assert got == truth["malformed"]
    assert all(r["file"].endswith("fin.jsonl") and r["step"] == "read" for r in rows)
    big = [r for r in rej.to_pylist() if r["source"] == "big"]
    assert [(Path(r["file"]).name, r["reason"]) for r in big] == [("c_bad.txt", "malformed:utf8")]
    empty = next(r for r in rej.to_pylist() if r["id"] == "empty")
    assert (empty["line"], empty["reason"]) == (61, "length:min_chars")
    news = [r for r in rej.to_pylist() if r["source"] == "news" and r["reason"].startswith("malformed")]
    assert [(r["line"], r["reason"]) for r in news] == [(31, "malformed:missing_text")]


def test_exact_and_near_duplicates_removed_keeping_first(cleaned):
    kept, rej, truth = cleaned["kept"], cleaned["rejected"], cleaned["truth"]
    kept_ids = set(kept.column("id").to_pylist())
    reasons = {r["id"]: r["reason"] for r in rej.to_pylist()}
    for first, dup in truth["exact"]:
        assert first in kept_ids and reasons.get(dup) == "duplicate:exact"
    for first, dup in truth["near"]:
        assert first in kept_ids and reasons.get(dup) == "duplicate:near", dup
    # cross-source: the web copies point to the fin documents' clusters
    web_rej = [r for r in rej.to_pylist() if r["source"] == "web"]
    by_line = {r["line"]: r for r in web_rej}
    assert by_line[51]["reason"] == "duplicate:near:fin"  # the reason names the source that kept it
    assert by_line[55]["reason"] == "duplicate:exact:fin"
    clusters = dict(zip(kept.column("id").to_pylist(), kept.column("cluster_id").to_pylist(), strict=True))
    assert by_line[51]["cluster_id"] == clusters["fin-20"] is not None
    assert by_line[55]["cluster_id"] == clusters["fin-30"] is not None
    news_rej = [r for r in rej.to_pylist() if r["source"] == "news" and r["reason"] == "duplicate:exact"]
    assert [r["line"] for r in news_rej] == [32]
    m = cleaned["manifest"]
    assert m["sources"]["fin"]["duplicate_clusters"] == len(truth["exact"]) + len(truth["near"]) + 2
    assert m["sources"]["news"]["duplicate_clusters"] == 1


def test_no_unique_document_removed_and_tables_survive(cleaned):
    kept, truth = cleaned["kept"], cleaned["truth"]
    kept_ids = set(kept.column("id").to_pylist())
    assert truth["unique"] <= kept_ids, sorted(truth["unique"] - kept_ids)
    assert truth["tables"] <= kept_ids
    table = next(
        t
        for i, t in zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(), strict=True)
        if i == "tab-0"
    )
    assert "|" in table and "%" in table
    web = [r for r in kept.to_pylist() if r["source"] == "web"]
    assert len(web) == 50  # the 50 unique web documents; the junk and the copies went
    assert {r["source"] for r in kept.to_pylist()} == {"fin", "web", "news", "big"}
    big = [r for r in kept.to_pylist() if r["source"] == "big"]
    assert max(r["bytes"] for r in big) >= 5_000_000


def test_web_rules_drop_junk_with_reasons(cleaned):
    rej = cleaned["rejected"]
    web = {r["line"]: r for r in rej.to_pylist() if r["source"] == "web"}
    assert web[52]["reason"] == "c4:lorem_ipsum"
    assert web[53]["reason"].startswith("language:")
    assert web[54]["reason"] == "c4:curly_bracket"


def test_no_pii_left_and_counted(cleaned):
    kept, m = cleaned["kept"], cleaned["manifest"]
    for t in kept.column("text").to_pylist():
        assert find_pii(t) == []
        for v in PII.values():
            assert v not in t
    pii = m["sources"]["fin"]["pii"]
    for k in PII:
        assert pii.get(k, 0) >= 1, k
    row = next(r for r in kept.to_pylist() if r["id"] == "pii-card")
    assert json.loads(row["pii"]) == {"card": 1} and "<CARD>" in row["text"]
    dated = next(r for r in kept.to_pylist() if r["id"] == "fin-1")
    assert dated["date"] == "2024-01-02"


def test_near_duplicate_precision_recall_on_kept(cleaned):
    """No two kept documents are near-duplicates (Jaccard >= 0.8) of each other."""
    kept = cleaned["kept"]
    texts = [
        t
        for t, b in zip(kept.column("text").to_pylist(), kept.column("bytes").to_pylist(), strict=True)
        if b < 100_000
    ]
    from dapt.corpora.clean.minhash import MinHasher, band_keys

    sig = MinHasher(112, 5).signatures(texts)
    keys = band_keys(sig, 28, 4)
    seen: dict = {}
    for i in range(len(texts)):
        for k in keys[i]:
            j = seen.setdefault(int(k), i)
            if j != i:
                assert jaccard(texts[i], texts[j]) < 0.8


def test_rerun_is_up_to_date(cleaned):
    done = cleaned["out"] / "_DONE"
    before = done.stat().st_mtime_ns
    m = run_stage(cleaned["cfg"], "clean", echo=None)
    assert m["fingerprint"] == cleaned["manifest"]["fingerprint"]
    assert done.stat().st_mtime_ns == before


def _sorted_rows(t: pa.Table) -> list:
    return sorted(json.dumps(r, sort_keys=True) for r in t.to_pylist())


def test_killed_and_restarted_gives_same_output(cleaned, tmp_path):
    cfg = load_config(write_config(tmp_path, cleaned["tmp"] / "corpus", tmp_path / "run"))
    with pytest.raises(RuntimeError, match="injected failure"):
        run_stage(cfg, "clean", echo=None, extra={"fail_after_shards": 2})
    assert not (tmp_path / "run" / "clean").exists()
    shards = list((tmp_path / "run" / ".work" / "clean" / "shards").iterdir())
    assert len([s for s in shards if not s.name.startswith(".")]) >= 2
    m = run_stage(cfg, "clean", echo=None)
    out = tmp_path / "run" / "clean"
    assert m["sources"] == cleaned["manifest"]["sources"]
    assert _sorted_rows(read_dir(out / "kept")) == _sorted_rows(cleaned["kept"])
    assert _sorted_rows(read_dir(out / "rejected")) == _sorted_rows(cleaned["rejected"])
    # file for file, the same partition of documents
    a = sorted(p.relative_to(out) for p in (out / "kept").rglob("*.parquet"))
    b = sorted(p.relative_to(cleaned["out"]) for p in (cleaned["out"] / "kept").rglob("*.parquet"))
    assert a == b


def test_sources_as_uris_give_the_same_output(cleaned, tmp_path):
    """The same corpus named by ``file://`` URIs goes through pipeline.remote (pyarrow.fs: listing,
    ranged reads, gzip, Parquet), the code path of s3:// and gs:// sources, with identical results."""
    uri = "file://" + str(cleaned["tmp"] / "corpus")
    cfg = load_config(write_config(tmp_path, uri, tmp_path / "run"), check_inputs=True)
    files = [f for src in cfg.sources for f in src.files()]
    assert len(files) == 6 and all(f.startswith("file:///") for f in files)
    m = run_stage(cfg, "clean", echo=None)
    assert m["sources"] == cleaned["manifest"]["sources"]
    out = tmp_path / "run" / "clean"
    kept, rejected = read_dir(out / "kept"), read_dir(out / "rejected")
    assert sorted(kept.column("text").to_pylist()) == sorted(cleaned["kept"].column("text").to_pylist())
    assert kept.num_rows == cleaned["kept"].num_rows and rejected.num_rows == cleaned["rejected"].num_rows
    key = [c for c in ("source", "reason", "line") if c in rejected.column_names]
    assert len(key) == 3

    def rows(t: pa.Table) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in t.select(key).to_pylist())

    assert rows(rejected) == rows(cleaned["rejected"])


def test_bad_step_param_is_config_error(cleaned, tmp_path):
    cfg_path = write_config(tmp_path, cleaned["tmp"] / "corpus", tmp_path / "run")
    cfg = load_config(cfg_path, ["sources.3.steps.1.params.max_ratio=0.5"])
    with pytest.raises(ConfigError, match=r"sources\.3\.steps\.1\.params\.max_ratio: unknown key"):
        run_stage(cfg, "clean", echo=None)
    cfg = load_config(cfg_path, ["sources.3.steps.1.params.min_words=-1"])
    with pytest.raises(ConfigError, match=r"sources\.3\.steps\.1\.params\.min_words"):
        run_stage(cfg, "clean", echo=None)
    assert not (tmp_path / "run" / "clean").exists()


@pytest.mark.slow
def test_scope_source_keeps_cross_source_near_duplicates(tmp_path, ray_local):
    rng = random.Random(21)
    a = [prose(rng) for _ in range(12)]
    b = [prose(rng) for _ in range(12)] + [near_duplicate(a[0], rng), a[1], near_duplicate(a[2], rng)]
    for name, docs in (("a", a), ("b", b)):
        with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for t in docs:
                f.write(json.dumps({"text": t}) + "\n")
    results = {}
    for scope in ("source", "global"):
        cfg = tmp_path / f"{scope}.yaml"
        cfg.write_text(
            f"""name: scope-{scope}
run_dir: {tmp_path / scope}
sources:
  - {{name: a, kind: domain, paths: ["{tmp_path}/a.jsonl"]}}
  - {{name: b, kind: general, paths: ["{tmp_path}/b.jsonl"]}}
model: {{from_config: {{}}}}
clean: {{near_dedup: {{scope: {scope}}}}}
""",
            encoding="utf-8",
        )
        m = run_stage(load_config(cfg), "clean", echo=None)
        results[scope] = m["sources"]["b"]["rejected"]
    assert results["source"] == {"duplicate:exact:a": 1}  # exact dedup is always global
    assert results["global"] == {"duplicate:exact:a": 1, "duplicate:near:a": 2}
