"""The mix stage end to end, through the real runner, Ray tasks, sentencepiece and MinHash.

Upstream stages are materialised exactly as the runner leaves a finished stage (parquet files, a
manifest with a fingerprint and outputs, the ``_DONE`` marker), so nothing of the mix stage is faked.
Realised domain shares are re-measured independently of the packer's own bookkeeping: the packed
stream is rebuilt from the token store's rows, cut at EOS, decoded with sentencepiece, and each document is
attributed by the ``(domain)``/``(general)`` marker that ``make_docs`` puts in its first words.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import make_docs
from store_fixtures import reference_pack_prep

from dapt.corpora.clean.minhash import jaccard
from dapt.corpora.mix.store import TokenStore
from dapt.corpora.split.select import split_key
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError
from dapt.pipeline.stages import run_stage

SEQ_LEN = 63  # blocks of 64 tokens


def write_clean(run_dir: Path, docs: dict[str, tuple[str, list[str], list[str | None] | None]]) -> None:
    """A finished clean stage: kept/<source>/part-0.parquet with the contract's columns."""
    clean = run_dir / "clean"
    for name, (kind, texts, dates) in docs.items():
        folder = clean / "kept" / name
        folder.mkdir(parents=True, exist_ok=True)
        n = len(texts)
        table = pa.table(
            {
                "id": [f"{name}-{i}" for i in range(n)],
                "source": [name] * n,
                "kind": [kind] * n,
                "text": texts,
                "bytes": [len(t.encode()) for t in texts],
                "date": pa.array(dates if dates is not None else [None] * n, pa.string()),
                "pii": [0] * n,
                "cluster_id": list(range(n)),
            }
        )
        pq.write_table(table, folder / "part-00000.parquet")
    (clean / "manifest.json").write_text(json.dumps({"fingerprint": "clean-x", "outputs": {"kept": "kept"}}))
    (clean / "_DONE").write_text("clean-x\n")


def write_tokenizer(run_dir: Path, tok_dir: Path) -> None:
    d = run_dir / "tokenizer"
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(
        json.dumps({"fingerprint": "tok-y", "outputs": {"tokenizer": str(tok_dir)}})
    )
    (d / "_DONE").write_text("tok-y\n")


def make_run(
    tmp: Path,
    tok_dir: Path,
    docs: dict[str, tuple[str, list[str], list[str | None] | None]],
    mix: dict,
    name: str = "r",
) -> Path:
    """Config + finished upstream stages in ``tmp``; returns the config path."""
    run_dir = tmp / "run"
    srcdir = tmp / "src"
    srcdir.mkdir(parents=True, exist_ok=True)
    sources = []
    for sname, (kind, texts, _) in docs.items():
        p = srcdir / f"{sname}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:2]))
        sources.append({"name": sname, "kind": kind, "paths": [str(p)]})
    write_clean(run_dir, docs)
    write_tokenizer(run_dir, tok_dir)
    mix = dict(mix)
    cfg = {
        "name": name,
        "run_dir": str(run_dir),
        "sources": sources,
        "model": {"from_config": {}},
        "split": mix.pop("split", {}),
        "mix": {"seq_len": SEQ_LEN, **mix},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_mix(cfg_path: Path, overrides: list[str] | None = None) -> dict:
    """The real split stage (held-out documents), then the mix."""
    cfg = load_config(cfg_path, overrides)
    run_stage(cfg, "split", echo=None)
    return run_stage(cfg, "mix", echo=None)


def stream_documents(run_dir: Path, sp_model_path: Path) -> list[tuple[str, int]]:
    """(decoded text, token count incl. EOS) of every document piece, in packing (stream) order."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    mix = run_dir / "mix"
    manifest = json.loads((mix / "manifest.json").read_text())
    store = TokenStore(mix / "train")
    stream = store.blocks(np.argsort(store.arrays["block_stream"])).ravel()
    eos = manifest["eos_id"]
    ends = np.flatnonzero(stream == eos)
    assert ends.size and ends[-1] == stream.size - 1, "the stream must end with an EOS"
    out, start = [], 0
    for e in ends:
        piece = stream[start:e].tolist()
        out.append((sp.decode(piece), e + 1 - start))
        start = e + 1
    return out


def measured_domain_fraction(pieces: list[tuple[str, int]]) -> tuple[float, int]:
    """Domain share of tokens by document marker; also the tokens of pieces with no marker."""
    dom = gen = unknown = 0
    for text, n in pieces:
        if "(domain)" in text:
            dom += n
        elif "(general)" in text:
            gen += n
        else:
            unknown += n
    return dom / (dom + gen + unknown), unknown


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[str, list[str], None]]:
    """Two domain and one general source; fin_b is small, to exercise weights and caps."""
    return {
        "fin_a": ("domain", make_docs("domain", 60, seed=1), None),
        "fin_b": ("domain", make_docs("domain", 15, seed=2), None),
        "web": ("general", make_docs("general", 80, seed=3), None),
    }


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, corpus, sp_tokenizer_dir, ray_local) -> Path:
    """One run folder reused by the fraction tests, so the prepared documents are cached once."""
    tmp = tmp_path_factory.mktemp("mixrun")
    return make_run(tmp, sp_tokenizer_dir, corpus, {"total_tokens": 12000, "seed": 7})


@pytest.mark.parametrize("fraction", [0.2, 0.51, 0.8])
def test_achieved_fraction_matches_target(shared_run, sp_model_path, fraction):
    m = run_mix(shared_run, [f"mix.domain_fraction={fraction}"])
    mix = m["mix"]
    assert mix["target_domain_fraction"] == fraction
    assert abs(mix["achieved_domain_fraction"] - fraction) < 0.005
    # Budgets are token-exact: the realised share is within one token of the target.
    assert abs(mix["achieved_domain_fraction"] * m["total_tokens"] - fraction * m["total_tokens"]) <= 1
    assert m["total_tokens"] == m["n_blocks"] * (SEQ_LEN + 1)
    assert abs(m["total_tokens"] - 12000) <= (SEQ_LEN + 1) / 2
    run_dir = Path(load_config(shared_run).run_path)
    store = TokenStore(run_dir / "mix" / "train")
    assert store.dtype == np.uint16 and (len(store), store.block_len) == (m["n_blocks"], SEQ_LEN + 1)
    # Independent measurement: decode the packed stream and attribute documents by their text.
    pieces = stream_documents(run_dir, sp_model_path)
    measured, unknown = measured_domain_fraction(pieces)
    assert unknown < 3 * 12  # only truncated last pieces (at most one per source) can lose their marker
    assert abs(measured - fraction) < 0.005
    per = mix["per_source"]
    assert sum(s["tokens_used"] for s in per.values()) == m["total_tokens"]
    # The block-level bookkeeping agrees with the manifest.
    bdt = sum(store.domain_tokens(r) for r in range(len(store)))
    assert bdt == round(mix["achieved_domain_fraction"] * m["total_tokens"])
    # Equal weights inside the domain side unless fin_b hits its epoch cap.
    fa, fb = per["fin_a"], per["fin_b"]
    assert fb["epochs"] <= 4.0 + 1e-9
    if fb["epochs"] < 4.0 - 1e-6:
        assert abs(fa["tokens_used"] - fb["tokens_used"]) <= 1
    else:
        assert fa["tokens_used"] > fb["tokens_used"]
    rows = {r["quantity"]: r for r in mix["table"]}
    assert rows["domain fraction"]["target"] == fraction


def test_doc_boundaries_and_heldout_files(shared_run):
    m = run_mix(shared_run, ["mix.domain_fraction=0.51"])
    run_dir = Path(load_config(shared_run).run_path)
    train = run_dir / "mix" / "train"
    store = TokenStore(train)
    eos = m["eos_id"]
    assert len(store) == m["n_blocks"]
    for r in range(m["n_blocks"]):
        row = store.block(r)
        st = store.doc_starts(r)
        # A document starts right after every EOS inside the row.
        after_eos = np.flatnonzero(row[:-1] == eos) + 1
        assert set(after_eos.tolist()) <= set(st.tolist())
        assert all(p == 0 or row[p - 1] == eos for p in st.tolist())
    # Held-out files (the split stage's) in the contract's format, one object per line.
    split_manifest = json.loads((run_dir / "split" / "manifest.json").read_text())
    for src in ("fin_a", "fin_b", "web"):
        for split in ("validation", "test"):
            lines = (run_dir / "split" / "heldout" / src / f"{split}.jsonl").read_text().splitlines()
            assert len(lines) == split_manifest["heldout"][src][split] >= 1
            rec = json.loads(lines[0])
            assert set(rec) == {"id", "source", "kind", "text"} and rec["source"] == src
    # The mix manifest names the split's held-out folder (train's forgetting monitor reads it there).
    assert m["outputs"] == {"train_tokens": "train/index.json", "heldout": "../split/heldout"}
    assert (run_dir / "mix" / m["outputs"]["heldout"]).resolve() == (run_dir / "split" / "heldout").resolve()
    assert split_manifest["outputs"] == {"heldout": "heldout", "heldout_ids": "heldout_ids.txt"}


def test_infeasible_fraction_states_the_feasible_maximum(shared_run):
    with pytest.raises(ConfigError) as ei:
        run_mix(shared_run, ["mix.domain_fraction=0.9", "mix.total_tokens=60000", "mix.max_epochs=2"])
    msg = str(ei.value)
    assert "infeasible" in msg and "largest feasible domain_fraction" in msg
    f_max = float(re.search(r"largest feasible domain_fraction at [\d,]+ tokens is ([\d.]+)", msg).group(1))
    total_max = int(
        re.search(r"largest feasible total_tokens at domain_fraction 0.9 is ([\d,]+)", msg)
        .group(1)
        .replace(",", "")
    )
    # The stated values are right: the domain supply at 2 epochs bounds both.
    ok = run_mix(shared_run, ["mix.domain_fraction=0.51"])
    dom_tokens = sum(s["tokens_available"] for s in ok["mix"]["per_source"].values() if s["kind"] == "domain")
    n_total = round(60000 / (SEQ_LEN + 1)) * (SEQ_LEN + 1)
    assert f_max == pytest.approx(2 * dom_tokens / n_total, abs=1e-4)
    assert total_max <= 2 * dom_tokens / 0.9 < total_max + (SEQ_LEN + 1) / 0.9 + 1
    # Asking for exactly the stated maximum works, and allow_shortfall gets there by itself.
    m = run_mix(
        shared_run,
        ["mix.domain_fraction=0.9", f"mix.total_tokens={total_max}", "mix.max_epochs=2"],
    )
    assert m["total_tokens"] == total_max
    m2 = run_mix(
        shared_run,
        ["mix.domain_fraction=0.9", "mix.total_tokens=60000", "mix.max_epochs=2", "mix.allow_shortfall=true"],
    )
    assert m2["total_tokens"] == total_max and m2["mix"]["shortfall"] is True
    assert abs(m2["mix"]["achieved_domain_fraction"] - 0.9) < 0.005


def test_replay_is_the_general_share(shared_run):
    m = run_mix(shared_run, ["mix.replay=0.3"])
    assert m["mix"]["target_domain_fraction"] == pytest.approx(0.7)
    assert abs(m["mix"]["achieved_domain_fraction"] - 0.7) < 0.005
    with pytest.raises(ConfigError, match="not both"):
        load_config(shared_run, ["mix.replay=0.3", "mix.domain_fraction=0.7"])


def _digests(run_dir: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in (run_dir / "mix", run_dir / "split")
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.suffix in (".bin", ".jsonl") or p.name == "index.json")
    }


def _assert_equals_the_reference_packer(run_dir: Path) -> None:
    """Golden comparison on the real stage: the packer the store replaced (tests/reference_pack.py),
    run over this mix's own prep cache (many shards), gives the same rows, starts and domain tokens."""
    m = json.loads((run_dir / "mix" / "manifest.json").read_text())
    (prep,) = [p for p in (run_dir / ".work" / "mix").glob("prep-*") if (p / "_DONE").exists()]
    info = json.loads((prep / "prep.json").read_text())
    assert info["store"]["parts"] > 3
    budgets = {n: (s["kind"], s["tokens_budget"]) for n, s in m["mix"]["per_source"].items()}
    ref = reference_pack_prep(
        prep,
        run_dir / "ref",
        budgets,
        m["block_len"],
        m["mix"]["seed"],
        m["eos_id"],
        m["n_blocks"],
        np.dtype(info["store"]["dtype"]),
    )
    store = TokenStore(run_dir / "mix" / "train")
    starts = np.split(ref["doc_starts"], ref["doc_offsets"][1:-1])
    for r in range(len(store)):
        assert np.array_equal(store.block(r), ref["tokens"][r]), r
        assert store.doc_starts(r).tolist() == starts[r].tolist(), r
        assert store.domain_tokens(r) == int(ref["block_domain_tokens"][r]), r


def _rows(run_dir: Path) -> list[bytes]:
    store = TokenStore(run_dir / "mix" / "train")
    return [store.block(r).tobytes() for r in range(len(store))]


def test_same_seed_gives_byte_identical_shards(tmp_path, corpus, sp_tokenizer_dir, ray_local):
    """Same inputs and seed: the same bytes whatever the batching; a different task split lays the
    token shards out differently (one shard per task) but gives the same training rows."""
    mix = {"domain_fraction": 0.51, "total_tokens": 6000, "seed": 3, "encode_batch_size": 16}
    a = make_run(tmp_path / "a", sp_tokenizer_dir, corpus, mix)
    b = make_run(tmp_path / "b", sp_tokenizer_dir, corpus, {**mix, "encode_batch_size": 7})
    c = make_run(tmp_path / "c", sp_tokenizer_dir, corpus, {**mix, "docs_per_task": 9})
    run_mix(a)
    mb = run_mix(b)  # separate prep pass, different batching: same bytes
    assert mb["timings"]["prep_reused"] is False
    da, db = _digests(tmp_path / "a" / "run"), _digests(tmp_path / "b" / "run")
    assert da and da == db
    run_mix(c)
    assert len(list((tmp_path / "c" / "run" / "mix" / "train" / "tokens").glob("*.bin"))) > len(
        list((tmp_path / "a" / "run" / "mix" / "train" / "tokens").glob("*.bin"))
    )
    assert _rows(tmp_path / "c" / "run") == _rows(tmp_path / "a" / "run")
    _assert_equals_the_reference_packer(tmp_path / "c" / "run")
    run_mix(b, ["mix.seed=4"])
    dc = _digests(tmp_path / "b" / "run")
    assert dc["train/block_stream.bin"] != da["train/block_stream.bin"]
    assert dc["train/instance_doc.bin"] != da["train/instance_doc.bin"]
    assert dc["heldout/fin_a/test.jsonl"] == da["heldout/fin_a/test.jsonl"]  # held-out sets ignore the seed


def _words_edit(text: str, k: int) -> str:
    """A near-duplicate: the last word of every ``k``-th sentence replaced."""
    parts = text.split(". ")
    return ". ".join(p + " indeed" if i % k == 0 else p for i, p in enumerate(parts))


def test_no_heldout_document_or_near_duplicate_in_training(
    tmp_path, sp_tokenizer_dir, sp_model_path, ray_local
):
    base = make_docs("domain", 40, seed=11)
    general = make_docs("general", 40, seed=12)
    # Every domain document has a near-duplicate twin in the same source and an exact copy in the general
    # source, so whichever of them the hash holds out, its twins must leave training.
    fin = base + [_words_edit(t, 3) for t in base]
    web = general + base[:20]
    docs = {"fin": ("domain", fin, None), "web": ("general", web, None)}
    cfg = make_run(
        tmp_path,
        sp_tokenizer_dir,
        docs,
        {"domain_fraction": 0.5, "max_epochs": 2, "split": {"validation_docs": 6, "test_docs": 6}},
    )
    m = run_mix(cfg)
    held = []
    for src in ("fin", "web"):
        for split in ("validation", "test"):
            p = tmp_path / "run" / "split" / "heldout" / src / f"{split}.jsonl"
            held += [json.loads(x)["text"] for x in p.read_text().splitlines()]
    assert len(held) == 24
    assert m["counts"]["near_dup_dropped"] >= 6  # at least the twins of the fin held-out docs
    pieces = stream_documents(tmp_path / "run", sp_model_path)
    for text, _ in pieces:
        for h in held:
            assert jaccard(text, h) < 0.5, f"held-out text leaked into training: {text[:80]!r}"
    for h in held:
        assert all(h not in text for text, _ in pieces)


def test_planted_benchmark_overlaps_are_removed(tmp_path, sp_tokenizer_dir, sp_model_path, ray_local):
    bench = [
        "Which of the following best describes the effect of an increase in the federal funds rate on "
        "the price of long dated government bonds held by commercial banks",
        "A firm issues convertible preferred stock with a conversion ratio of four shares and the common "
        "stock trades at a premium to the conversion value of the security",
    ]
    bench_file = tmp_path / "bench.jsonl"
    bench_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in bench))
    fin = make_docs("domain", 50, seed=21)
    planted = {3, 17, 29, 41}
    for i in planted:
        # A 13-word window of a benchmark item, with different case and punctuation.
        words = bench[i % 2].split()[5:19]
        fin[i] = fin[i] + " " + " ".join(words).upper() + "!"
    docs = {"fin": ("domain", fin, None), "web": ("general", make_docs("general", 50, seed=22), None)}
    cfg = make_run(
        tmp_path,
        sp_tokenizer_dir,
        docs,
        {"domain_fraction": 0.5, "decontamination": {"extra_files": [str(bench_file)]}},
    )
    m = run_mix(cfg)
    held_ids = set()
    for split in ("validation", "test"):
        p = tmp_path / "run" / "split" / "heldout" / "fin" / f"{split}.jsonl"
        held_ids |= {json.loads(x)["id"] for x in p.read_text().splitlines()}
    expected = len([i for i in planted if f"fin-{i}" not in held_ids])
    assert m["decontamination"] == {"bench.jsonl": expected}
    assert m["counts"]["contaminated_dropped"] == expected
    pieces = stream_documents(tmp_path / "run", sp_model_path)
    for text, _ in pieces:
        assert "FEDERAL FUNDS" not in text.upper() and "CONVERSION RATIO" not in text.upper()


def test_date_split_holds_out_later_documents(tmp_path, sp_tokenizer_dir, ray_local):
    fin = make_docs("domain", 30, seed=31)
    dates = [f"2022-{(i % 12) + 1:02d}-15" for i in range(20)] + [
        f"2023-0{(i % 9) + 1}-01" for i in range(10)
    ]
    docs = {
        "fin": ("domain", fin, dates),
        "web": ("general", make_docs("general", 30, seed=32), None),
    }
    cfg = make_run(
        tmp_path,
        sp_tokenizer_dir,
        docs,
        {"domain_fraction": 0.6, "split": {"by": "date", "after": "2022-12-31", "validation_docs": 2}},
    )
    m = run_mix(cfg)
    held = json.loads((tmp_path / "run" / "split" / "manifest.json").read_text())["heldout"]
    assert held["fin"] == {"validation": 2, "test": 10}
    assert held["web"] == {"validation": 2, "test": 0}  # undated: never test
    test_ids = [
        json.loads(x)["id"]
        for x in (tmp_path / "run" / "split" / "heldout" / "fin" / "test.jsonl").read_text().splitlines()
    ]
    assert sorted(test_ids) == sorted(f"fin-{i}" for i in range(20, 30))
    assert m["mix"]["per_source"]["fin"]["docs"] == 30 - 12

    # A test set capped below the documents after the cut: a sample of them (the smallest split keys)
    # is test, and none of the others is trained on either: the rule, not the list, keeps them out.
    m = run_mix(cfg, ["split.max_docs=4"])
    split = json.loads((tmp_path / "run" / "split" / "manifest.json").read_text())
    assert split["heldout"]["fin"] == {"validation": 2, "test": 4}
    stats = split["heldout_stats"]["fin"]
    assert stats["dated_after"] == 10 and stats["dated_after_not_in_test"] == 6
    sampled = [
        json.loads(x)["id"]
        for x in (tmp_path / "run" / "split" / "heldout" / "fin" / "test.jsonl").read_text().splitlines()
    ]
    by_key = sorted(test_ids, key=lambda i: (split_key(fin[int(i.split("-")[1])]), i))
    assert sampled == by_key[:4]
    assert m["mix"]["per_source"]["fin"]["docs"] == 30 - 12


def _write_local_task(folder: Path, name: str, items: list[dict]) -> None:
    """A minimal lm-eval multiple-choice task reading a local jsonl file (no hub access)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "test.jsonl"}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}],
        "metadata": {"version": 1},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))


@pytest.mark.slow
def test_decontamination_against_configured_eval_tasks(tmp_path, sp_tokenizer_dir, ray_local):
    """``eval.tasks`` are read through the eval stage's own task loader (lm-eval, offline)."""
    question = (
        "An analyst observes that the spread between corporate bonds and treasury notes widened sharply "
        "during the quarter; what does this most likely indicate"
    )
    _write_local_task(
        tmp_path / "tasks" / "mix_probe",
        "mix_probe_task",
        [{"question": question, "choices": ["higher credit risk", "lower credit risk"], "label": 0}],
    )
    fin = make_docs("domain", 40, seed=41)
    fin[5] += " " + question.lower().replace(";", ",")
    fin[9] += " Notes: " + question
    docs = {"fin": ("domain", fin, None), "web": ("general", make_docs("general", 40, seed=42), None)}
    cfg = make_run(tmp_path, sp_tokenizer_dir, docs, {"domain_fraction": 0.5})
    m = run_mix(cfg, ["eval.tasks=[mix_probe_task]", f"eval.task_dirs=[{tmp_path / 'tasks'}]"])
    held = set()
    for split in ("validation", "test"):
        p = tmp_path / "run" / "split" / "heldout" / "fin" / f"{split}.jsonl"
        held |= {json.loads(x)["id"] for x in p.read_text().splitlines()}
    assert m["decontamination"] == {"mix_probe_task": len({"fin-5", "fin-9"} - held)}
    assert m["decontamination_info"]["skipped"] is None
    assert m["decontamination_info"]["unchecked_tasks"] == []
    assert m["decontamination_info"]["texts_used"] == {"mix_probe_task": 1}
