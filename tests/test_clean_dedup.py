"""Cross-source dedup on a real local Ray: copies whose cleaning diverged are still caught, and the
preferred copy (``clean.dedup_prefer``, by default the domain one) is the one kept.

The planted case is the one profiles create: the same document in a general and in a domain source,
with lines that only the general profile removes (C4 drops lines without terminal punctuation), so the
two cleaned texts differ. An exact copy and a near copy (a few words changed) are planted; for the
near copy the test checks its own premise: the key texts are near-duplicates, the cleaned texts are
not (Jaccard < 0.8), which is what the old keys of the cleaned text missed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_clean_data import near_duplicate, prose, sentence

from dapt.corpora.clean.config import CleanConfig, default_profile, validate_steps
from dapt.corpora.clean.dedup import partitions_for, shuffle_sizing, verify_partitions
from dapt.corpora.clean.dedup.keytext import KeyText
from dapt.corpora.clean.minhash import jaccard
from dapt.corpora.clean.steps import apply_steps, build_steps
from dapt.pipeline.config import load_config
from dapt.pipeline.stages import run_stage


def _with_headings(rng: random.Random, per_paragraph: int = 3) -> str:
    """Three prose paragraphs, each led by heading lines without terminal punctuation."""
    out: list[str] = []
    for _ in range(3):
        out += [sentence(rng, 9, 12).rstrip(".!?") for _ in range(per_paragraph)]
        out.append(" ".join(sentence(rng) for _ in range(6)))
    return "\n".join(out)


def _clean(kind: str, text: str) -> str:
    out, _, reason, _ = apply_steps(build_steps(validate_steps(default_profile(kind), kind)), text)
    assert reason is None, (kind, reason)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("xdedup")
    rng = random.Random(11)
    fin = [{"id": f"fin-{i}", "text": _with_headings(rng)} for i in range(10)]
    web = [{"id": f"web-{i}", "text": prose(rng)} for i in range(10)]
    exact = fin[0]["text"]
    near = near_duplicate(fin[1]["text"], rng)
    web.append({"id": "web-copy-exact", "text": exact})
    web.append({"id": "web-copy-near", "text": near})
    # the premise: the profiles clean the copies apart, the key texts stay together
    assert _clean("domain", exact) != _clean("general", exact)
    key = KeyText()
    assert jaccard(key(fin[1]["text"]), key(near)) >= 0.8
    assert jaccard(_clean("domain", fin[1]["text"]), _clean("general", near)) < 0.8
    for name, docs in (("fin", fin), ("web", web)):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
    return {"root": root, "fin": fin}


def _run(
    corpus: dict, tmp: Path, extra: str = "", shuffle: str = "shuffle_partitions: 2, buckets: 8"
) -> tuple[dict, pa.Table, pa.Table]:
    root = corpus["root"]
    cfg = tmp / "c.yaml"
    # the general source comes first in the config: ``first`` would keep its copies
    cfg.write_text(
        f"""name: xdedup
run_dir: {tmp / "run"}
sources:
  - {{name: web, kind: general, paths: ["{root}/web.jsonl"], id_field: id}}
  - {{name: fin, kind: domain, paths: ["{root}/fin.jsonl"], id_field: id}}
model: {{from_config: {{}}}}
ray: {{num_cpus: 2, object_store_memory_gb: 1}}
clean: {{{shuffle}{extra}}}
""",
        encoding="utf-8",
    )
    m = run_stage(load_config(cfg), "clean", echo=None)
    out = tmp / "run" / "clean"

    def read(d: Path) -> pa.Table:
        return pa.concat_tables([pq.read_table(f) for f in sorted(d.rglob("*.parquet"))])

    return m, read(out / "kept"), read(out / "rejected")


def test_same_document_in_domain_and_general_source_kept_once_the_domain_copy(corpus, tmp_path, ray_local):
    m, kept, rej = _run(corpus, tmp_path)
    kept_ids = set(kept.column("id").to_pylist())
    assert {d["id"] for d in corpus["fin"]} <= kept_ids  # every domain document, copies included
    assert not {"web-copy-exact", "web-copy-near"} & kept_ids
    reasons = {r["id"]: r for r in rej.to_pylist()}
    assert reasons["web-copy-exact"]["reason"] == "duplicate:exact:fin"  # names the keeper's source
    assert reasons["web-copy-near"]["reason"] == "duplicate:near:fin"
    clusters = dict(zip(kept.column("id").to_pylist(), kept.column("cluster_id").to_pylist(), strict=True))
    assert reasons["web-copy-exact"]["cluster_id"] == clusters["fin-0"] is not None
    assert reasons["web-copy-near"]["cluster_id"] == clusters["fin-1"] is not None
    # the kept copy is the domain profile's cleaning of it: its heading lines are still there
    fin0 = next(r for r in kept.to_pylist() if r["id"] == "fin-0")
    assert fin0["text"] == corpus["fin"][0]["text"]
    assert m["sources"]["web"]["rejected"] == {"duplicate:exact:fin": 1, "duplicate:near:fin": 1}
    assert m["sources"]["fin"]["rejected"] == {}
    for s in m["sources"].values():
        assert s["docs_in"] == s["kept"] + sum(s["rejected"].values())


def test_dedup_prefer_first_keeps_the_copy_first_in_config_order(corpus, tmp_path, ray_local):
    m, kept, rej = _run(corpus, tmp_path, ", dedup_prefer: first")
    kept_ids = set(kept.column("id").to_pylist())
    assert {"web-copy-exact", "web-copy-near"} <= kept_ids
    assert not {"fin-0", "fin-1"} & kept_ids
    reasons = {r["id"]: r["reason"] for r in rej.to_pylist()}
    assert (reasons["fin-0"], reasons["fin-1"]) == ("duplicate:exact:web", "duplicate:near:web")
    assert m["sources"]["fin"]["rejected"] == {"duplicate:exact:web": 1, "duplicate:near:web": 1}


def test_decisions_do_not_depend_on_the_shuffle_sizing(corpus, tmp_path, ray_local):
    """shuffle_partitions and buckets are not fingerprinted because they cannot change a decision: the
    same kept rows, cluster ids and rejections with 2 x 8, 3 x 5 and auto (which the manifest records)."""

    def outcome(tag: str, shuffle: str):
        (tmp_path / tag).mkdir()
        m, kept, rej = _run(corpus, tmp_path / tag, shuffle=shuffle)
        keep = sorted(zip(kept.column("id").to_pylist(), kept.column("cluster_id").to_pylist(), strict=True))
        drop = sorted(zip(rej.column("id").to_pylist(), rej.column("reason").to_pylist(), strict=True))
        return m, keep, drop

    _m, keep, drop = outcome("a", "shuffle_partitions: 2, buckets: 8")
    assert outcome("b", "shuffle_partitions: 3, buckets: 5")[1:] == (keep, drop)
    m, *rest = outcome("c", "shuffle_partitions: auto")
    assert tuple(rest) == (keep, drop)
    sizing = m["dedup"]["shuffle"]
    assert sizing["from"] == {"partitions": "auto", "buckets": "auto"}
    assert sizing["partitions"] == 4 and sizing["cluster_cpus"] == 2  # a small corpus: two per CPU
    assert sizing["verify_partitions"] == sizing["exact_partitions"] == 4
    assert sizing["components_partitions"] == 4
    assert sizing["buckets"] == 64


def test_each_shuffle_is_split_by_its_own_rows():
    """auto: the band shuffle (16 rows a document) sets ``partitions``; the exact-hash and components
    shuffles are split by their own rows, so a small shuffle is not cut into many tiny objects; a
    configured count applies to every shuffle."""
    cc = CleanConfig()
    sizing = shuffle_sizing(cc, docs=1_800_000, cpus=2)
    assert sizing["partitions"] == 15 and sizing["largest_shuffle_rows"] == 28_800_000
    assert partitions_for(cc, sizing, 1_800_000) == 4  # never below two per CPU
    assert partitions_for(cc, sizing, 50_000_000) == 25
    assert verify_partitions(cc, sizing, 1_000) == 4
    fixed = CleanConfig(shuffle_partitions=3)
    fixed_sizing = shuffle_sizing(fixed, docs=1_800_000, cpus=2)
    assert fixed_sizing["partitions"] == partitions_for(fixed, fixed_sizing, 50_000_000) == 3


def test_every_dedup_shuffle_has_at_most_the_configured_partitions(corpus, tmp_path, ray_local, monkeypatch):
    """Under the pull-based sort shuffle Ray Data ignores ``groupby(num_partitions=)`` and a sort keeps
    its input's block count (one block per shard here); dedup repartitions before each shuffle, so no
    shuffle's output (each ends in a ``materialize``) has more blocks than configured, however many
    shards (a sort may make fewer: equal boundaries from a small sample merge). Before, the sizing in the
    manifest was not what ran, and the objects per shuffle grew with the square of the shard count."""
    import ray.data

    blocks: list[int] = []
    materialize = ray.data.Dataset.materialize

    def counted(self, *a, **k):
        out = materialize(self, *a, **k)
        blocks.append(out.num_blocks())
        return out

    monkeypatch.setattr(ray.data.Dataset, "materialize", counted)
    m, _kept, _rej = _run(corpus, tmp_path, shuffle="shuffle_partitions: 2, buckets: 8, shard_mb: 0.004")
    assert m["dedup"]["shuffle"]["partitions"] == 2 and m["dedup"]["cc_rounds"] >= 2
    assert len(list((tmp_path / "run" / ".work" / "clean" / "shards").glob("*/meta.parquet"))) > 4
    # exact, bands, verification, the edges, two star passes a round, the decisions
    assert len(blocks) == 5 + 2 * m["dedup"]["cc_rounds"]
    assert max(blocks) <= 2, blocks


def test_ray_data_groupby_ignores_num_partitions_under_the_sort_shuffle(ray_local):
    """The Ray Data behaviour the repartition above works around (Ray 2.60): if this starts failing, a
    Ray upgrade honours ``num_partitions`` and the note in ``dedup`` is out of date."""
    import ray.data

    from dapt.corpora.clean.stage import _ray_data_setup

    _ray_data_setup()

    def grouped(ds):
        return ds.map_groups(lambda b: b, batch_format="numpy").materialize().num_blocks()

    ds = ray.data.range(1200, override_num_blocks=12).map_batches(
        lambda b: {"k": b["id"] % 600, "id": b["id"]}, batch_format="numpy"
    )
    assert grouped(ds.groupby("k", num_partitions=3)) == 12
    assert grouped(ds.repartition(3).groupby("k")) == 3
