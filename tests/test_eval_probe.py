"""The downstream probe for masked LMs (eval/probe.py) and its data (eval/probe_data.py): a tiny BERT
learns a separable set, a seed reproduces itself, the comparison rows pair items like the other eval
rows, and the builders write the FPB-schema files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dapt.eval.compare import p_family
from dapt.eval.probe import compare_probe, label_index, macro_f1, probe
from dapt.eval.probe_data import (
    DICTD_DIR,
    build_probe_sets,
    build_tiny_probe_sets,
    definition,
    load_probe_set,
)

TINY = Path(__file__).resolve().parents[1] / "corpora" / "tiny" / "probe"
FPB_FIELDS = {"id", "query", "answer", "text", "choices", "gold"}


@pytest.fixture(scope="module")
def tiny_run(tiny_bert_dir: Path) -> dict:
    train, test, labels = load_probe_set(TINY / "domain")
    import torch

    kw = dict(steps=60, lr=3e-3, batch_size=8, max_length=32, device="cpu")
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = probe(
        str(tiny_bert_dir), str(tiny_bert_dir), train, test, labels, seeds=[0, 1], name="domain", **kw
    )
    again = probe(str(tiny_bert_dir), str(tiny_bert_dir), train, test, labels, seeds=[0], name="domain", **kw)
    rng_kept = torch.equal(rng_before, torch.get_rng_state())
    return {"first": first, "again": again, "test": test, "labels": labels, "rng_kept": rng_kept}


def test_probe_learns_a_separable_set(tiny_run: dict) -> None:
    r = tiny_run["first"]
    assert r["labels"] == ["finance", "commerce", "law"]
    for s in r["per_seed"]:  # chance is 1/3
        assert s["accuracy"] >= 0.75, r["per_seed"]
        assert s["train_loss_last"] < s["train_loss_first"]
    assert r["accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in r["per_seed"]]))


def test_probe_is_deterministic_per_seed_and_seeds_differ(tiny_run: dict) -> None:
    r, again = tiny_run["first"], tiny_run["again"]
    assert again["predictions"][0] == r["predictions"][0]
    assert again["per_seed"][0]["train_loss_last"] == r["per_seed"][0]["train_loss_last"]
    # another seed: another head initialisation and data order
    assert r["per_seed"][0]["train_loss_first"] != r["per_seed"][1]["train_loss_first"]
    assert tiny_run["rng_kept"]  # the caller's torch RNG is not moved by the probe's seeding
    assert set(r["fresh_weights"]) == {
        "bert.pooler.dense.bias",
        "bert.pooler.dense.weight",
        "classifier.bias",
        "classifier.weight",
    }


def test_probe_result_shapes(tiny_run: dict) -> None:
    r, test = tiny_run["first"], tiny_run["test"]
    n = len(test)
    assert r["ids"] == [t["id"] for t in test] and len(r["gold"]) == n
    assert [len(p) for p in r["predictions"]] == [n, n]
    assert len(r["correct"]) == n and all(len(c) == 2 and set(c) <= {0, 1} for c in r["correct"])
    for k, s in enumerate(r["per_seed"]):
        assert s["accuracy"] == pytest.approx(np.mean([c[k] for c in r["correct"]]))
        assert s["macro_f1"] == pytest.approx(macro_f1(r["gold"], r["predictions"][k]))
    json.dumps(r)  # goes into results.json as it is


def test_masked_lm_folder_gives_its_encoder_to_the_classifier(tiny_bert_dir: Path) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    mlm = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)
    clf = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    assert torch.equal(mlm.bert.embeddings.word_embeddings.weight, clf.bert.embeddings.word_embeddings.weight)
    assert torch.equal(
        mlm.bert.encoder.layer[1].output.dense.weight, clf.bert.encoder.layer[1].output.dense.weight
    )


def _result(gold: list[int], predictions: list[list[int]], name: str = "domain") -> dict:
    """A probe() result from given predictions (the fields compare_probe reads)."""
    correct = [[int(p[i] == g) for p in predictions] for i, g in enumerate(gold)]
    accs = [float(np.mean(np.asarray(p) == gold)) for p in predictions]
    f1s = [macro_f1(gold, p) for p in predictions]
    return {
        "name": name,
        "labels": ["a", "b", "c"],
        "settings": {"seeds": list(range(len(predictions)))},
        "ids": [str(i) for i in range(len(gold))],
        "gold": gold,
        "per_seed": [
            {"seed": s, "accuracy": a, "macro_f1": f} for s, (a, f) in enumerate(zip(accs, f1s, strict=True))
        ],
        "predictions": predictions,
        "correct": correct,
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)),
        "macro_f1": float(np.mean(f1s)),
        "macro_f1_std": float(np.std(f1s, ddof=1)),
    }


def _noisy(gold: np.ndarray, p_right: float, rng: np.random.Generator) -> list[int]:
    wrong = (gold + rng.integers(1, 3, len(gold))) % 3
    return np.where(rng.random(len(gold)) < p_right, gold, wrong).tolist()


def test_compare_probe_rows_pair_items() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 200)
    base = _result(gold.tolist(), [_noisy(gold, 0.55, rng) for _ in range(3)])
    adapted = _result(gold.tolist(), [_noisy(gold, 0.8, rng) for _ in range(3)])
    rows = compare_probe(base, adapted, iters=400, alpha=0.05, seed=0)
    assert [r["name"] for r in rows] == ["probe/domain/acc", "probe/domain/macro_f1"]
    for r, key in zip(rows, ("accuracy", "macro_f1"), strict=True):
        assert r["kind"] == "probe" and r["task"] == "domain" and r["n_items"] == 200 and r["n_seeds"] == 3
        assert r["base"] == pytest.approx(base[key]) and r["adapted"] == pytest.approx(adapted[key])
        assert r["delta"] == pytest.approx(r["adapted"] - r["base"]) and r["delta"] > 0.15
        assert r["delta_pct"] == pytest.approx(100 * r["delta"] / r["base"])
        assert r["improved"] and r["ci_low"] > 0 and r["p_value"] < 0.01 and r["significant"]
        assert r["p_family"] == "probe/domain" and r["p_family_size"] == 2 and r["p_adjusted"] >= r["p_value"]
        assert r["base_seed_std"] == base[f"{key}_std"]
    assert p_family(rows[0]) == "probe/domain" and p_family({"kind": "task"}) == "tasks"

    same = compare_probe(base, base, iters=200, alpha=0.05, seed=0)
    for r in same:
        assert r["delta"] == 0 and r["p_value"] == pytest.approx(1.0) and r["significant"] is False

    with pytest.raises(ValueError, match="same test items"):
        compare_probe(
            base, _result(gold.tolist()[:-1], [p[:-1] for p in adapted["predictions"]]), 100, 0.05, 0
        )


def test_compare_probe_on_real_probe_results_of_one_model(tiny_run: dict) -> None:
    rows = compare_probe(tiny_run["again"], tiny_run["again"], iters=200, alpha=0.05, seed=1)
    assert all(r["p_value"] == 1.0 and not r["significant"] for r in rows)


def test_macro_f1_and_labels() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    for _ in range(20):
        g, p = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        assert macro_f1(g, p) == pytest.approx(f1_score(g, p, average="macro"))
    assert macro_f1([0, 0, 1], [0, 0, 1]) == 1.0  # class 2 absent from both: not an F1 of 0
    labels = ["finance", "commerce", "law"]
    assert [label_index(x, labels) for x in ({"label": "law"}, {"label": 1}, {"gold": 0})] == [2, 1, 0]
    with pytest.raises(ValueError, match="not one of"):
        label_index({"label": "tax"}, labels)


def test_definition_cuts_label_usage_marks_and_citations() -> None:
    entry = (
        'Circumduct \\Cir`cum*duct"\\, v. t.\n'
        "   1. To lead about; to lead astray. [R.]\n      [1913 Webster]\n\n"
        "   2. (Law) To contravene; to nullify; as, to circumduct acts of\n"
        "      judicature. [Obs.] --Ayliffe.\n      [1913 Webster]\n"
    )
    assert definition(entry, "Law") == "To contravene; to nullify; as, to circumduct acts of judicature"
    assert definition(entry, "Com.") == ""


def test_committed_tiny_sets_are_the_generated_ones(tmp_path: Path) -> None:
    meta = build_tiny_probe_sets(tmp_path)
    for f in sorted(p.relative_to(TINY) for p in TINY.rglob("*") if p.is_file()):
        assert (tmp_path / f).read_bytes() == (TINY / f).read_bytes(), f
    assert sum(p.stat().st_size for p in TINY.rglob("*") if p.is_file()) < 50_000
    for which in ("domain", "general"):
        train, test, labels = load_probe_set(TINY / which)
        assert labels == meta["sets"][which]["labels"] and len(train) == 36 and len(test) == 24
        assert all(FPB_FIELDS | {"label"} <= set(r) for r in train + test)
        assert all(r["choices"][r["gold"]] == r["answer"] == r["label"] for r in train + test)


@pytest.mark.skipif(not (DICTD_DIR / "gcide.dict.dz").exists(), reason="dict-gcide not installed")
def test_gcide_builder_writes_balanced_fpb_schema_sets(tmp_path: Path) -> None:
    sizes = {"n_train": {"domain": 30, "general": 50}, "n_test": {"domain": 15, "general": 25}}
    meta = build_probe_sets(tmp_path / "a", **sizes)
    assert meta["source"]["license"].startswith("GPL-2.0-or-later")
    for which, (n_tr, n_te) in {"domain": (30, 15), "general": (50, 25)}.items():
        train, test, labels = load_probe_set(tmp_path / "a" / which)
        k = len(labels)
        assert meta["sets"][which]["counts"] == {
            "train": dict.fromkeys(labels, n_tr // k),
            "test": dict.fromkeys(labels, n_te // k),
        }
        for r in train + test:
            assert FPB_FIELDS | {"label", "where"} <= set(r) and r["choices"][r["gold"]] == r["label"]
            assert "(" + r["label"][:3].title() not in r["text"] and len(r["text"].split()) >= 4
        # senses of one entry stay on one side; no definition twice
        assert not {r["where"] for r in train} & {r["where"] for r in test}
        assert len({r["text"] for r in train + test}) == len(train) + len(test)
    build_probe_sets(tmp_path / "b", **sizes)
    for f in ("domain/train.jsonl", "domain/test.jsonl", "general/test.jsonl", "probe.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
