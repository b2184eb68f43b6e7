"""Synthetic finished upstream stages for the report tests, and the tests of how the report reads them.

Each upstream folder is exactly what the runner leaves behind (manifest.json with a fingerprint, the
files its ``outputs`` point at, a ``_DONE`` marker), with the keys the real stages write: the split
stage's held-out counts, the tokenizer's ``base_model`` and ``trained_on``, the mix stage's top-level
``seq_len``, the train stage's facts. The other report test modules import the builders from here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from dapt.pipeline.config import load_config
from dapt.pipeline.fsutil import atomic_write_json
from dapt.pipeline.stages import STAGES, run_stage

UPSTREAM = STAGES["report"].needs
SECTION_IDS = [
    "summary",
    "data",
    "mix",
    "tokenizer",
    "training",
    "benchmarks",
    "quantization",
    "plan",
    "conclusions",
]
HYPER = {
    "lr": 3e-4,
    "min_lr_ratio": 0.1,
    "warmup_steps": 2,
    "micro_batch_size": 4,
    "global_batch_tokens": 2048,
}
HELDOUT = {"fin": {"validation": 20, "test": 40}, "wiki": {"validation": 20, "test": 40}}


def finish(stage_dir: Path, manifest: dict[str, Any]) -> None:
    """What the runner writes for a finished stage: manifest.json (with a fingerprint) and _DONE last."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_dir / "manifest.json", manifest)
    (stage_dir / "_DONE").write_text(manifest["fingerprint"] + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_config(tmp_path: Path, run_dir: Path, report: dict[str, Any] | None = None) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    for name in ("fin", "wiki"):
        (data_dir / f"{name}.jsonl").write_text('{"text": "x"}\n')
    cfg = {
        "name": "report-test",
        "run_dir": str(run_dir),
        "sources": [
            {
                "name": "fin",
                "kind": "domain",
                "paths": [str(data_dir / "fin.jsonl")],
                "license": "GFDL-1.3",
                "provenance": "Debian gnucash-docs",
            },
            {"name": "wiki", "kind": "general", "paths": [str(data_dir / "wiki.jsonl")]},
        ],
        "model": {"from_config": {"vocab_size": 300}},
        "report": report if report is not None else {"license": "apache-2.0", "developed_by": "dapt tests"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def clean_manifest() -> dict[str, Any]:
    return {
        "fingerprint": "clean-fp",
        "seconds": 12.5,
        "started": "2026-11-26T17:00:00+00:00",
        "versions": {"torch": "2.13.0", "python": "3.11.7"},
        "git_revision": "abc123",
        "outputs": {"kept": "kept", "rejected": "rejected"},
        "sources": {
            "fin": {
                "docs_in": 1200,
                "bytes_in": 3_400_000,
                "kept": 1000,
                "kept_bytes": 3_000_000,
                "rejected": {"exact_duplicate": 120, "too_short": 50, "language": 30},
                "duplicate_clusters": 97,
                "pii": {"email": 14, "phone": 3},
            },
            "wiki": {
                "docs_in": 800,
                "bytes_in": 2_000_000,
                "kept": 760,
                "kept_bytes": 1_900_000,
                "rejected": {"exact_duplicate": 10, "too_short": 30},
                "duplicate_clusters": 9,
                "pii": {"email": 2},
            },
        },
        "totals": {"docs_in": 2000, "bytes_in": 5_400_000, "kept": 1760, "kept_bytes": 4_900_000},
    }


def split_manifest() -> dict[str, Any]:
    """The split stage's manifest (corpora/split): held-out counts per source and the sources' kinds."""
    return {
        "fingerprint": "split-fp",
        "outputs": {"heldout": "heldout", "heldout_ids": "heldout_ids.txt"},
        "heldout": HELDOUT,
        "sources": {"fin": "domain", "wiki": "general"},
    }


def _fertility(base: tuple[float, float], extended: tuple[float, float], change: float) -> dict[str, Any]:
    return {
        "base": {"tokens_per_word": base[0], "bytes_per_token": base[1], "token_change_vs_base": 0.0},
        "extended": {
            "tokens_per_word": extended[0],
            "bytes_per_token": extended[1],
            "token_change_vs_base": change,
        },
    }


def tokenizer_manifest(run_dir: Path) -> dict[str, Any]:
    return {
        "fingerprint": "tok-fp",
        "outputs": {"tokenizer": "tokenizer", "model": "model"},
        "mode": "extend",
        "vocab_size": 300,
        "added_tokens": 3,
        "base": {"model": "HuggingFaceTB/SmolLM2-135M", "tokenizer": "HuggingFaceTB/SmolLM2-135M"},
        "base_model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M", "revision": "main", "from_config": None},
        "trained_on": {
            "split": "train",
            "documents": 1640,
            "heldout_excluded": 120,
            "heldout_ids_file": str(run_dir / "split" / "heldout_ids.txt"),
        },
        "fertility": {
            "fin": _fertility((1.62, 3.71), (1.41, 4.26), -0.129),
            "wiki": _fertility((1.30, 4.40), (1.30, 4.40), 0.0),
        },
        "domain_token_reduction": {"extended": 0.129},
    }


def _per_source(kind: str, available: int, used: int, epochs: float, docs: int, docs_used: int) -> dict:
    return {
        "kind": kind,
        "tokens_available": available,
        "tokens_used": used,
        "epochs": epochs,
        "docs": docs,
        "docs_used": docs_used,
    }


def mix_manifest() -> dict[str, Any]:
    """No held-out counts here any more: they are the split stage's."""
    return {
        "fingerprint": "mix-fp",
        "outputs": {"train_tokens": "train/tokens.npy"},
        "seq_len": 64,
        "n_blocks": 3000,
        "total_tokens": 195_000,
        "mix": {
            "target_domain_fraction": 0.6,
            "achieved_domain_fraction": 0.6012,
            "per_source": {
                "fin": _per_source("domain", 500_000, 117_234, 0.234, 900, 210),
                "wiki": _per_source("general", 300_000, 77_766, 0.259, 700, 160),
            },
            "table": [
                {"quantity": "domain fraction", "target": 0.6, "achieved": 0.6012},
                {"quantity": "total tokens", "target": 195_000, "achieved": 195_000},
            ],
        },
        "decontamination": {"fin_terms": 2, "general_terms": 0, "fpb": 0},
        "decontamination_info": {
            "ngram": 13,
            "texts_used": {"fin_terms": 550, "general_terms": 550, "fpb": 0},
            "skipped": "no item text could be loaded for tasks ['fpb']; they were NOT checked",
            "dropped_by_source": {"fin": 2, "wiki": 0},
        },
        "near_dedup": {"enabled": True, "threshold": 0.8, "dropped_by_source": {"fin": 5, "wiki": 1}},
    }


def train_manifest(n_params: int) -> dict[str, Any]:
    """The keys train/stage.py returns (the plan has the shape of memory.estimate() + compute_plan())."""
    return {
        "fingerprint": "train-fp",
        "outputs": {
            "model": "model",
            "metrics": "metrics.jsonl",
            "monitor": "monitor.jsonl",
            "tensorboard": "tb",
        },
        "steps": 120,
        "tokens": 245_760,
        "tokens_per_s": 1523.4,
        "mfu": 0.42,
        "peak_memory_bytes": 734_003_200,
        "device": "NVIDIA H100 80GB HBM3",
        "num_workers": 2,
        "sharding": "zero3",
        "precision": "bf16",
        "hyperparameters": HYPER,
        "plan": {
            "memory": {
                "inputs": {"params": n_params, "world_size": 2},
                "model_states": {"total": 1_000_000},
                "total": 700_000_000,
            },
            "compute": {"tokens": 245_760, "wall_clock_hours": 0.04, "mfu": 0.4, "mfu_source": "assumed"},
            "gpu": {"name": "H100-80GB"},
            "table": "memory per GPU (rank 0)\n  PREDICTED PEAK   0.65 GiB  -> fits <80 GiB>",
        },
        "wall_seconds": 161.3,
        "train_seconds": 130.0,
        "params": n_params,
        "planned_steps": 120,
        "early_stopped": False,
    }


def bpb_row(
    source: str,
    kind: str,
    base: float,
    adapted: float,
    p: float,
    se_b: float,
    se_a: float,
    pooled: list | None = None,
) -> dict[str, Any]:
    return {
        "name": f"bpb/{source}",
        "kind": "bpb",
        "source": source,
        "source_kind": kind,
        "pooled": pooled is not None,
        "sources": pooled or [source],
        "metric": "bits_per_byte",
        "n_items": 40,
        "base": base,
        "adapted": adapted,
        "delta": adapted - base,
        "delta_pct": 100 * (adapted - base) / base,
        "higher_is_better": False,
        "improved": adapted < base,
        "base_stderr": se_b,
        "adapted_stderr": se_a,
        "ci_low": adapted - base - 2 * se_a,
        "ci_high": adapted - base + 2 * se_a,
        "p_value": p,
        "significant": p < 0.05,
    }


def quant_row(precision: str, mem: int, disk: int, fin: float, wiki: float) -> dict[str, Any]:
    return {
        "precision": precision,
        "bytes_in_memory": mem,
        "bytes_on_disk": disk,
        "disk_format": "safetensors",
        "bpb": {"fin": fin, "wiki": wiki},
        "bpb_by_kind": {"domain": fin, "general": wiki},
        "seconds": 1.0,
    }


def eval_results(run_dir: Path, n_params: int) -> dict[str, Any]:
    """results.json exactly as eval/stage.py writes it (per-source rows, pooled rows per kind, task rows)."""
    return {
        "schema_version": 1,
        "models": {
            "base": {"path": str(run_dir / "tokenizer" / "model"), "params": n_params},
            "adapted": {"path": str(run_dir / "train" / "model"), "params": n_params},
        },
        "settings": {"max_length": 64, "stride": 32, "bootstrap_iters": 1000, "alpha": 0.05, "seed": 0},
        "metrics": [
            bpb_row("fin", "domain", 2.0, 1.754, 0.0005, 0.02, 0.018),
            bpb_row("wiki", "general", 1.8, 1.8198, 0.21, 0.02, 0.02),
            bpb_row("all-domain", "domain", 2.0, 1.754, 0.0005, 0.02, 0.018, pooled=["fin"]),
            bpb_row("all-general", "general", 1.8, 1.8198, 0.21, 0.02, 0.02, pooled=["wiki"]),
            {
                "name": "fin_terms/acc",
                "kind": "task",
                "task": "fin_terms",
                "metric": "acc",
                "base": 0.41,
                "adapted": 0.48,
                "delta": 0.07,
                "delta_pct": 100 * 0.07 / 0.41,
                "higher_is_better": True,
                "improved": True,
                "base_stderr": 0.03,
                "adapted_stderr": 0.03,
                "p_value": 0.03,
                "significant": True,
                "n_items": 200,
            },
        ],
        "tasks": {
            "fin_terms": {"status": "ok", "tasks": ["fin_terms"]},
            "fpb": {
                "status": "unavailable",
                "error": "dataset takala/financial_phrasebank not reachable offline",
            },
        },
        "quantization": [
            quant_row("fp32", 4_000_000, 4_100_000, 1.754, 1.8198),
            quant_row("bf16", 2_000_000, 2_050_000, 1.7551, 1.8201),
            quant_row("int8", 1_100_000, 1_150_000, 1.7612, 1.8262),
        ],
        "crosscheck": {
            "fin": {
                "dapt_bpb": 1.7541,
                "lmeval_bpb": 1.7549,
                "rel_diff": 0.000456,
                "dapt_seconds": 0.8,
                "lmeval_seconds": 2.4,
                "speedup": 3.0,
            }
        },
    }


def build_upstream(run_dir: Path) -> dict[str, Any]:
    """Six finished upstream stages with plausible, internally consistent numbers; returns facts to check.
    The exported "model" is a real tiny Llama saved with transformers (its parameters counted by torch)."""
    from conftest import make_tiny_llama

    facts: dict[str, Any] = {}
    finish(run_dir / "clean", clean_manifest())
    finish(run_dir / "split", split_manifest())
    finish(run_dir / "tokenizer", tokenizer_manifest(run_dir))
    finish(run_dir / "mix", mix_manifest())
    train = run_dir / "train"
    (train / "model").mkdir(parents=True)
    model = make_tiny_llama(300)
    model.save_pretrained(train / "model")
    facts["n_params"] = sum(p.numel() for p in model.parameters())
    metrics = [
        {
            "step": s,
            "loss": 5.7 * math.exp(-s / 40) + 2.0,
            "lr": 3e-4 * min(1.0, s / 2),
            "grad_norm": 1.0,
            "tokens_per_s": 1500.0,
        }
        for s in range(1, 121)
    ]
    write_jsonl(train / "metrics.jsonl", metrics)
    facts["first_loss"], facts["last_loss"] = metrics[0]["loss"], metrics[-1]["loss"]
    monitor = [
        {"step": s, "tokens": s * 2048, "domain_bpb": 2.0 - 0.0025 * s, "general_bpb": 1.8 + 0.0002 * s}
        for s in range(0, 121, 20)
    ]
    write_jsonl(train / "monitor.jsonl", monitor)
    finish(train, train_manifest(facts["n_params"]))
    (run_dir / "eval").mkdir(parents=True)
    atomic_write_json(run_dir / "eval" / "results.json", eval_results(run_dir, facts["n_params"]))
    finish(run_dir / "eval", {"fingerprint": "eval-fp", "outputs": {"results": "results.json"}})
    facts["train_files"] = sorted(p.relative_to(train).as_posix() for p in train.rglob("*"))
    return facts


def bare_upstream(run_dir: Path) -> None:
    """Finished stages that recorded nothing but a fingerprint (and no files)."""
    for stage in UPSTREAM:
        finish(run_dir / stage, {"fingerprint": f"{stage}-bare"})


def make_report_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the upstream stages and run the report stage through the real runner (``run_stage``)."""
    tmp = tmp_path_factory.mktemp("report")
    run_dir = tmp / "run"
    facts = build_upstream(run_dir)
    cfg = load_config(write_config(tmp, run_dir))
    manifest = run_stage(cfg, "report", echo=None)
    return {"cfg": cfg, "run_dir": run_dir, "manifest": manifest, "facts": facts, "dir": run_dir / "report"}


# ------------------------------------------------------------------------------------------------- tests


def test_the_fake_upstream_is_every_stage_the_report_needs(tmp_path: Path) -> None:
    """The builders cover the stage table's ``needs`` of the report (a new upstream stage shows up here)."""
    assert UPSTREAM == ("clean", "split", "tokenizer", "mix", "train", "eval")
    bare_upstream(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(UPSTREAM)


def _data(tmp_path: Path, manifests: dict[str, dict[str, Any]]):
    from dapt.eval.report.collect import RunData

    cfg = load_config(write_config(tmp_path, tmp_path / "run"))
    return RunData(run_name="r", cfg=cfg, manifests=manifests)


def test_heldout_counts_come_from_the_split_stage(tmp_path: Path) -> None:
    """Held-out counts are the split stage's fact; a mix manifest from before the split stage existed
    carried them itself (shown, and said so); with neither, nothing is invented."""
    mix_old = {**mix_manifest(), "heldout": {"fin": {"validation": 1, "test": 2}}}
    data = _data(tmp_path, {"split": split_manifest(), "mix": mix_old})
    assert data.heldout_counts() == (HELDOUT, "split")
    data = _data(tmp_path, {"mix": mix_old})
    assert data.heldout_counts() == ({"fin": {"validation": 1, "test": 2}}, "mix")
    assert _data(tmp_path, {"mix": mix_manifest()}).heldout_counts() == ({}, None)


def test_source_kind_falls_back_to_the_split_manifest(tmp_path: Path) -> None:
    """A source the config no longer lists: its kind as the split stage recorded it."""
    data = _data(tmp_path, {"split": {**split_manifest(), "sources": {"old": "domain"}}})
    assert data.source_kind("fin") == "domain"  # from the config's sources
    assert data.source_kind("old") == "domain"
    assert data.source_kind("unknown") is None


def test_collect_reads_only_declared_stages_and_config(tmp_path: Path) -> None:
    """collect() goes through the StageContext: every manifest of ``needs``, and a config view that
    refuses the sections the report does not declare (train, eval, mix, clean, tokenizer)."""
    from dapt.eval.report.collect import collect
    from dapt.pipeline.stages import StageConfig, StageContext

    run_dir = tmp_path / "run"
    bare_upstream(run_dir)
    cfg = load_config(write_config(tmp_path, run_dir))
    spec = STAGES["report"]
    import logging

    ctx = StageContext(
        cfg=StageConfig(cfg, spec),
        spec=spec,
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        log=logging.getLogger("test"),
        run_config=cfg,
    )
    data = collect(ctx)
    assert data.upstream == UPSTREAM and list(data.manifests) == list(UPSTREAM)
    for section in ("train", "eval", "mix", "clean", "tokenizer"):
        with pytest.raises(AttributeError, match="does not declare"):
            getattr(data.cfg, section)
