"""The report stage and model card, rendered from a synthetic set of finished upstream stage folders.

Each upstream folder is exactly what the runner leaves behind (manifest.json with a fingerprint, the
files its ``outputs`` point at, a ``_DONE`` marker), so the report runs through the real runner
(``run_stage``) and the real upstream-reading path. The exported "model" is a real tiny Llama saved with
transformers, so the parameter count in the card is checked against torch.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from dapt.pipeline.config import load_config
from dapt.pipeline.fsutil import atomic_write_json
from dapt.pipeline.stages import run_stage

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
CARD_HEADINGS = [
    "## Model Details",
    "## Uses",
    "### Direct Use",
    "### Out-of-Scope Use",
    "## Bias, Risks, and Limitations",
    "## How to Get Started with the Model",
    "## Training Details",
    "### Training Data",
    "#### Training Hyperparameters",
    "#### Speeds, Sizes, Times",
    "## Evaluation",
    "### Results",
    "## Environmental Impact",
    "## Technical Specifications",
]

HYPER = {
    "lr": 3e-4,
    "min_lr_ratio": 0.1,
    "warmup_steps": 2,
    "micro_batch_size": 4,
    "global_batch_tokens": 2048,
}


def _finish(stage_dir: Path, manifest: dict[str, Any]) -> None:
    """What the runner writes for a finished stage: manifest.json (with a fingerprint) and _DONE last."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_dir / "manifest.json", manifest)
    (stage_dir / "_DONE").write_text(manifest["fingerprint"] + "\n")


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
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


def build_upstream(run_dir: Path) -> dict[str, Any]:
    """Five finished upstream stages with plausible, internally consistent numbers; returns facts to check."""
    from conftest import make_tiny_llama

    facts: dict[str, Any] = {}
    # clean
    _finish(
        run_dir / "clean",
        {
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
        },
    )
    # tokenizer
    _finish(
        run_dir / "tokenizer",
        {
            "fingerprint": "tok-fp",
            "outputs": {"tokenizer": "tokenizer", "model": "model"},
            "mode": "extend",
            "vocab_size": 300,
            "added_tokens": 3,
            "base": {"model": "HuggingFaceTB/SmolLM2-135M", "tokenizer": "HuggingFaceTB/SmolLM2-135M"},
            "fertility": {
                "fin": {
                    "base": {"tokens_per_word": 1.62, "bytes_per_token": 3.71, "token_change_vs_base": 0.0},
                    "extended": {
                        "tokens_per_word": 1.41,
                        "bytes_per_token": 4.26,
                        "token_change_vs_base": -0.129,
                    },
                },
                "wiki": {
                    "base": {"tokens_per_word": 1.30, "bytes_per_token": 4.40, "token_change_vs_base": 0.0},
                    "extended": {
                        "tokens_per_word": 1.30,
                        "bytes_per_token": 4.40,
                        "token_change_vs_base": 0.0,
                    },
                },
            },
            "domain_token_reduction": {"extended": 0.129},
        },
    )
    # mix
    _finish(
        run_dir / "mix",
        {
            "fingerprint": "mix-fp",
            "outputs": {"train_tokens": "train/tokens.npy", "heldout": "heldout"},
            "seq_len": 64,
            "n_blocks": 3000,
            "total_tokens": 195_000,
            "mix": {
                "target_domain_fraction": 0.6,
                "achieved_domain_fraction": 0.6012,
                "per_source": {
                    "fin": {
                        "kind": "domain",
                        "tokens_available": 500_000,
                        "tokens_used": 117_234,
                        "epochs": 0.234,
                        "docs": 900,
                        "docs_used": 210,
                    },
                    "wiki": {
                        "kind": "general",
                        "tokens_available": 300_000,
                        "tokens_used": 77_766,
                        "epochs": 0.259,
                        "docs": 700,
                        "docs_used": 160,
                    },
                },
                "table": [
                    {"quantity": "domain fraction", "target": 0.6, "achieved": 0.6012},
                    {"quantity": "total tokens", "target": 195_000, "achieved": 195_000},
                ],
            },
            "heldout": {"fin": {"validation": 20, "test": 40}, "wiki": {"validation": 20, "test": 40}},
            "decontamination": {"fin_terms": 2, "general_terms": 0, "fpb": 0},
            "decontamination_info": {
                "ngram": 13,
                "texts_used": {"fin_terms": 550, "general_terms": 550, "fpb": 0},
                "skipped": "no item text could be loaded for tasks ['fpb']; they were NOT checked",
                "dropped_by_source": {"fin": 2, "wiki": 0},
            },
            "near_dedup": {"enabled": True, "threshold": 0.8, "dropped_by_source": {"fin": 5, "wiki": 1}},
        },
    )
    # train: a real tiny exported model, metrics and monitor rows
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
    _jsonl(train / "metrics.jsonl", metrics)
    facts["first_loss"], facts["last_loss"] = metrics[0]["loss"], metrics[-1]["loss"]
    monitor = [
        {"step": s, "tokens": s * 2048, "domain_bpb": 2.0 - 0.0025 * s, "general_bpb": 1.8 + 0.0002 * s}
        for s in range(0, 121, 20)
    ]
    _jsonl(train / "monitor.jsonl", monitor)
    _finish(
        train,
        {
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
            # The shape of train.plan: memory.estimate() and compute_plan() outputs.
            "plan": {
                "memory": {
                    "inputs": {"params": facts["n_params"], "world_size": 2},
                    "model_states": {"total": 1_000_000},
                    "total": 700_000_000,
                },
                "compute": {"tokens": 245_760, "wall_clock_hours": 0.04, "mfu": 0.4, "mfu_source": "assumed"},
                "gpu": {"name": "H100-80GB"},
                "table": "memory per GPU (rank 0)\n  PREDICTED PEAK   0.65 GiB  -> fits <80 GiB>",
            },
            "wall_seconds": 161.3,
            "train_seconds": 130.0,
            "params": facts["n_params"],
            "planned_steps": 120,
            "early_stopped": False,
        },
    )
    # eval
    # results.json exactly as eval/stage.py writes it (per-source rows, pooled rows per kind, task rows).
    results = {
        "schema_version": 1,
        "models": {
            "base": {"path": str(run_dir / "tokenizer" / "model"), "params": facts["n_params"]},
            "adapted": {"path": str(train / "model"), "params": facts["n_params"]},
        },
        "settings": {"max_length": 64, "stride": 32, "bootstrap_iters": 1000, "alpha": 0.05, "seed": 0},
        "metrics": [
            _bpb_row("fin", "domain", 2.0, 1.754, 0.0005, 0.02, 0.018),
            _bpb_row("wiki", "general", 1.8, 1.8198, 0.21, 0.02, 0.02),
            _bpb_row("all-domain", "domain", 2.0, 1.754, 0.0005, 0.02, 0.018, pooled=["fin"]),
            _bpb_row("all-general", "general", 1.8, 1.8198, 0.21, 0.02, 0.02, pooled=["wiki"]),
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
            _quant_row("fp32", 4_000_000, 4_100_000, 1.754, 1.8198),
            _quant_row("bf16", 2_000_000, 2_050_000, 1.7551, 1.8201),
            _quant_row("int8", 1_100_000, 1_150_000, 1.7612, 1.8262),
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
    (run_dir / "eval").mkdir(parents=True)
    atomic_write_json(run_dir / "eval" / "results.json", results)
    _finish(run_dir / "eval", {"fingerprint": "eval-fp", "outputs": {"results": "results.json"}})
    return facts


def _bpb_row(
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


def _quant_row(precision: str, mem: int, disk: int, fin: float, wiki: float) -> dict[str, Any]:
    return {
        "precision": precision,
        "bytes_in_memory": mem,
        "bytes_on_disk": disk,
        "disk_format": "safetensors",
        "bpb": {"fin": fin, "wiki": wiki},
        "bpb_by_kind": {"domain": fin, "general": wiki},
        "seconds": 1.0,
    }


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    run_dir = tmp / "run"
    facts = build_upstream(run_dir)
    cfg = load_config(write_config(tmp, run_dir))
    manifest = run_stage(cfg, "report", echo=None)
    return {"cfg": cfg, "run_dir": run_dir, "manifest": manifest, "facts": facts, "dir": run_dir / "report"}


def test_manifest_outputs_and_conclusions(report_run: dict[str, Any]) -> None:
    m, d = report_run["manifest"], report_run["dir"]
    assert m["outputs"] == {"html": "report.html", "markdown": "report.md", "model_card": "model_card.md"}
    for rel in m["outputs"].values():
        assert (d / rel).is_file()
    assert (d / "_DONE").exists()
    assert m["sections"][: len(SECTION_IDS)] == SECTION_IDS
    concl = m["conclusions"]
    # The issue's own example, computed from results.json.
    assert concl[0] == (
        "Adapted vs base: domain bits-per-byte -12.3% (significant), general bits-per-byte +1.1% (not significant)."
    )
    assert any("significantly better than the base on the domain" in c for c in concl)
    assert any(c.startswith("No significant loss on general") for c in concl)
    assert "fin_terms acc: 0.4100 -> 0.4800 (+17.1%), better (significant, p=0.030)." in concl
    assert "bpb wiki: 1.8000 -> 1.8198 (+1.1%), worse (not significant, p=0.210)." in concl
    f = report_run["facts"]
    assert (
        f"Training loss {f['first_loss']:.3f} -> {f['last_loss']:.3f} over 120 steps (246k tokens)." in concl
    )
    assert "Mix domain fraction achieved 60.12% vs target 60.00% (+0.12 pp)." in concl
    assert any(
        c.startswith("Cleaning kept 1,760 of 2,000 documents (88.0%) and 90.7% of bytes") for c in concl
    )
    assert (
        "Tokenizer (extend): domain held-out text needs 12.9% fewer tokens with the extended tokenizer "
        "than with the base tokenizer."
    ) in concl
    # int8: 4.0 MB / 1.1 MB in memory; domain (fin) bpb 1.754 -> 1.7612
    assert (
        f"int8: {4.0 / 1.1:.2f}x smaller in memory than fp32, bpb all-domain {100 * (1.7612 - 1.754) / 1.754:+.2f}%."
        in concl
    )
    assert "Peak memory per worker: measured 700.00 MiB vs planned 667.57 MiB (1.05x)." in concl
    assert not any(c.startswith("Training tokens:") for c in concl)  # as planned: nothing to say
    assert f"Parameters: measured {f['n_params']:,} vs planned {f['n_params']:,} (1.00x)." in concl
    assert "Training time: measured 2.2 min vs planned 2.4 min (0.90x)." in concl
    assert "Throughput (tokens/s): measured 1,523 vs planned 1,707 (0.89x)." in concl
    assert "MFU: measured 42.0% vs planned 40.0% (1.05x)." in concl
    assert "1 configured task(s) could not be evaluated: fpb." in concl
    assert (
        "Decontamination against 2 eval task(s) dropped 2 training document(s); NOT checked (no item text): fpb."
        in concl
    )
    assert (
        "Cross-check on fin: dapt's bits-per-byte is within 0.05% of lm-eval's loglikelihood_rolling and 3.0x faster."
        in concl
    )
    assert m["missing_inputs"] == []


def test_html_has_every_section_and_embedded_images(report_run: dict[str, Any]) -> None:
    html = (report_run["dir"] / "report.html").read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html, sid
    # Self-contained: no external reference at all; every image is an inline PNG that decodes.
    assert "http://" not in html and "https://" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= 7  # funnel, mix, fertility, loss, monitor, benchmarks, quantization
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "<script" not in html and "<link" not in html
    assert (
        "<pre>memory per GPU (rank 0)\n  PREDICTED PEAK   0.65 GiB  -&gt; fits &lt;80 GiB&gt;</pre>" in html
    )
    # Numbers from the manifests, formatted.
    for text in ("1,200", "3.24 MiB", "exact_duplicate", "60.12%", "1.754", "-12.30%", "int8", "zero3"):
        assert text in html, text


def test_markdown_images_are_files_next_to_it(report_run: dict[str, Any]) -> None:
    d = report_run["dir"]
    md = (d / "report.md").read_text(encoding="utf-8")
    for title in (
        "Run summary",
        "Data funnel",
        "Mix: achieved vs target",
        "Tokenizer fertility",
        "Training",
        "Benchmarks: base vs adapted",
        "Quantized variants",
        "Memory and compute: plan vs measured",
        "Conclusions",
    ):
        assert f"\n## {title}\n" in md, title
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) >= 7
    for name in images:
        assert "/" not in name and (d / name).read_bytes()[:4] == b"\x89PNG"
    assert set(report_run["manifest"]["figures"]) == set(images)
    assert "```text\nmemory per GPU (rank 0)\n  PREDICTED PEAK   0.65 GiB  -> fits <80 GiB>\n```" in md
    # A pipe table row of the benchmark table, escaped properly.
    assert (
        "| bpb fin | bpb | fin | 2.0000 ± 0.0200 | 1.7540 ± 0.0180 | -0.2460 | [-0.2820, -0.2100] | -12.30% | <0.001 | yes \\* | lower |"
        in md
    )


def test_model_card_filled_and_copied_to_model_folder(report_run: dict[str, Any]) -> None:
    d, run_dir, f = report_run["dir"], report_run["run_dir"], report_run["facts"]
    card = (d / "model_card.md").read_text(encoding="utf-8")
    assert (run_dir / "train" / "model" / "README.md").read_text(encoding="utf-8") == card
    assert report_run["manifest"]["model_readme"] == str(run_dir / "train" / "model" / "README.md")
    for h in CARD_HEADINGS:
        assert f"\n{h}\n" in card, h
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    results = meta["model-index"][0]["results"]
    assert [r["metrics"][0]["value"] for r in results] == [1.754, 1.8198, 0.48]
    # The Hub's own parser reads the metadata and the model-index as evaluation results.
    from huggingface_hub import ModelCard

    hub = ModelCard(card)
    assert hub.data.license == "apache-2.0" and hub.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert [(e.metric_type, e.metric_value) for e in hub.data.eval_results] == [
        ("bits_per_byte", 1.754),
        ("bits_per_byte", 1.8198),
        ("acc", 0.48),
    ]
    # Filled from real values: the parameter count of the saved model (counted by torch), hyperparameters,
    # tokens, compute, sources' licences and the comparison table.
    assert f"**Parameters:** {f['n_params']:,}" in card
    assert "| lr | 0.0003 |" in card and "| global\\_batch\\_tokens | 2,048 |" in card
    assert "**Training tokens:** 245,760" in card
    assert "**Developed by:** dapt tests" in card
    assert "| fin | domain | GFDL-1.3 | Debian gnucash-docs | 1,000 | 2.86 MiB | 117,234 | 0.234 |" in card
    assert "| wiki | general | not recorded |" in card
    assert "| bpb fin | 2.0000 | 1.7540 | -12.30% | <0.001 | yes |" in card
    assert "**Peak memory per worker:** 700.00 MiB" in card
    assert "**Hardware:** NVIDIA H100 80GB HBM3, 2 worker(s)" in card
    assert (
        "**Hours used:** 0.0448 h wall time x 2 worker(s) = 0.0896 worker-hours (training stage only)" in card
    )
    assert "**num\\_hidden\\_layers:** 2" in card
    assert "Licences not recorded for training sources: wiki" in card
    assert "redacted 16 email, 3 phone" in card
    assert "Training data was not decontaminated against fpb (no item text was available)" in card


def test_rerun_is_up_to_date(report_run: dict[str, Any]) -> None:
    """Unchanged upstream fingerprints: the runner skips the stage (same manifest, not re-rendered)."""
    cfg = report_run["cfg"]
    again = run_stage(cfg, "report", echo=None)
    assert again["started"] == report_run["manifest"]["started"]
    assert again["fingerprint"] == report_run["manifest"]["fingerprint"]


def _bare_upstream(run_dir: Path) -> None:
    """Finished stages that recorded nothing but a fingerprint (and no files)."""
    for stage in ("clean", "tokenizer", "mix", "train", "eval"):
        _finish(run_dir / stage, {"fingerprint": f"{stage}-bare"})


def test_missing_keys_render_as_not_recorded(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _bare_upstream(run_dir)
    cfg = load_config(write_config(tmp_path, run_dir, report={}))
    m = run_stage(cfg, "report", echo=None)
    html = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html
    assert "not recorded" in html
    assert 'id="notes"' in html and "outputs.results" in html
    assert m["conclusions"] == []  # nothing measured, nothing concluded
    assert m["figures"] == []
    assert m["model_readme"] is None
    card = (run_dir / "report" / "model_card.md").read_text(encoding="utf-8")
    for h in CARD_HEADINGS:
        assert f"\n{h}\n" in card
    assert "**License:** not recorded" in card and "**Parameters:** not recorded" in card
    assert "license" not in yaml.safe_load(card.split("---\n")[1])
    # No number may be invented: the card's only digits come from the config (vocab 300 is not used there)
    # and fixed text.
    assert "Evaluation results: not recorded." in card


def test_partial_manifests_and_torn_jsonl(tmp_path: Path) -> None:
    """Some keys present, some missing, a killed writer's torn last metrics line: still renders."""
    run_dir = tmp_path / "run"
    _bare_upstream(run_dir)
    train = run_dir / "train"
    (train / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 4.0}\n{"step": 2, "loss": 3.5}\n{"step": 3, "lo'
    )
    _finish(train, {"fingerprint": "t2", "outputs": {"metrics": "metrics.jsonl"}, "steps": 2, "plan": "n/a"})
    _finish(
        run_dir / "eval",
        {
            "fingerprint": "e2",
            "metrics": [{"kind": "bpb", "source": "fin", "base": 2.0, "adapted": 2.5, "p_value": 0.01}],
        },
    )
    cfg = load_config(write_config(tmp_path, run_dir))
    m = run_stage(cfg, "report", echo=None)
    concl = m["conclusions"]
    # delta % computed from base/adapted; significance from p < 0.05 since no flag was recorded
    assert concl[0] == "Adapted vs base: domain bits-per-byte +25.0% (significant)."
    assert any("significantly WORSE than the base on 1 of 1 domain sources" in c for c in concl)
    assert "Training loss 4.000 -> 3.500 over 2 steps." in concl
    assert any("unreadable JSON line" in p for p in m["missing_inputs"])
    assert "loss.png" in m["figures"]


# ------------------------------------------------------------------------------------ headless Chromium


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _cdp_console_errors(ws_url: str, page_url: str) -> dict[str, Any]:
    """Open ``page_url`` over the DevTools protocol; collect console errors, exceptions and requests."""
    import asyncio

    import aiohttp

    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        seq = 0

        async def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal seq
            seq += 1
            my = seq
            await ws.send_json({"id": my, "method": method, "params": params})
            while True:
                msg = await asyncio.wait_for(ws.receive_json(), 30)
                if msg.get("id") == my:
                    return msg
                events.append(msg)

        for domain in ("Runtime", "Log", "Network", "Page"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=page_url)
        deadline = time.monotonic() + 30
        loaded = False
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(ws.receive_json(), 2)
            except TimeoutError:
                if loaded:
                    break
                continue
            events.append(msg)
            loaded = loaded or msg.get("method") == "Page.loadEventFired"
        res = await call(
            "Runtime.evaluate",
            expression="JSON.stringify({imgs: [...document.images].map(i => [i.complete, i.naturalWidth]),"
            " sections: [...document.querySelectorAll('section')].map(s => s.id),"
            " height: document.documentElement.scrollHeight})",
            returnByValue=True,
        )
    errors = []
    requests = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            errors.append(f"console.{p['type']}: {p.get('args')}")
        elif method == "Runtime.exceptionThrown":
            errors.append(f"exception: {p.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"network: {p.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    return {
        "errors": errors,
        "requests": requests,
        "page": json.loads(res["result"]["result"]["value"]),
        "loaded": loaded,
    }


@pytest.mark.slow
def test_html_in_headless_chromium(report_run: dict[str, Any], tmp_path: Path) -> None:
    """The report opens in a real browser with no console errors, no network access, every image
    decoded and the sections in order; then a full-page screenshot is saved (in the test's tmp folder,
    and copied to $DAPT_SCREENSHOT_DIR when set: the stage's output folder is not the test's to write)."""
    import asyncio
    import urllib.request

    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    html = report_run["dir"] / "report.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ]
    # 1. console errors, network requests and the rendered page through the DevTools protocol
    port = _free_port()
    with open(tmp_path / "chromium.log", "wb") as log:
        browser = subprocess.Popen(
            [
                exe,
                *flags,
                f"--user-data-dir={tmp_path / 'profile-cdp'}",
                f"--remote-debugging-port={port}",
                "--remote-debugging-address=127.0.0.1",
                "--window-size=1200,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            targets = None
            for _ in range(150):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                        targets = [t for t in json.load(r) if t.get("type") == "page"]
                    if targets:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            assert targets, "chromium DevTools endpoint did not come up"
            got = asyncio.run(_cdp_console_errors(targets[0]["webSocketDebuggerUrl"], html.as_uri()))
        finally:
            browser.terminate()
            try:
                browser.wait(timeout=20)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()
    assert got["loaded"]
    assert got["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in got["requests"]), got["requests"]
    assert got["page"]["sections"][: len(SECTION_IDS)] == SECTION_IDS
    imgs = got["page"]["imgs"]
    assert len(imgs) >= 7 and all(ok and w > 100 for ok, w in imgs)

    # 2. a screenshot of the whole page (window as tall as the rendered document)
    height = int(got["page"]["height"]) + 40
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            exe,
            *flags,
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            f"--screenshot={shot}",
            f"--window-size=1200,{height}",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert int.from_bytes(png[20:24], "big") == height  # IHDR height: the whole report is in the picture
    if os.environ.get("DAPT_SCREENSHOT_DIR"):
        out = Path(os.environ["DAPT_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "report.png")


def test_conclusions_report_forgetting_and_never_invent(tmp_path: Path) -> None:
    """Conclusions follow the data: a significant general regression is called a loss of general
    ability (and lands in the model card's risks); rows without a base give no comparison sentence."""
    from dapt.eval.report import model_card, sections
    from dapt.eval.report.collect import RunData
    from dapt.eval.report.config import ReportConfig

    cfg = load_config(write_config(tmp_path, tmp_path / "run"))
    data = RunData(run_name="r", cfg=cfg)
    data.results = {
        "metrics": [
            _bpb_row("fin", "domain", 1.0, 0.99, 0.4, 0.01, 0.01),
            _bpb_row("wiki", "general", 1.0, 1.08, 0.001, 0.01, 0.01),
            {"name": "t/acc", "kind": "task", "task": "t", "metric": "acc", "base": None, "adapted": 0.5},
        ]
    }
    concl = sections.conclusions(data, 0.05)
    assert concl[0] == (
        "Adapted vs base: domain bits-per-byte -1.0% (not significant), general bits-per-byte +8.0% (significant)."
    )
    assert "No significant difference between adapted and base on the domain held-out text." in concl
    assert (
        "General ability was lost: general bits-per-byte rose significantly on 1 of 1 general sources "
        "(worst: wiki +8.0%)." in concl
    )
    assert not any(c.startswith("t acc") for c in concl)  # no base value: nothing to compare
    card = model_card.build_card(data, ReportConfig(), concl)
    assert (
        "Forgetting: bits-per-byte on general held-out text (wiki) is +8.0% vs the base model (significant)"
        in card
    )
    assert "Training data was not decontaminated against any evaluation task" in card


def test_plan_vs_measured_on_cpu_is_not_compared(tmp_path: Path) -> None:
    """On CPU the trainer measures process RSS and the plan predicts GPU tensor memory and GPU time:
    the rows are shown with a note, never as a ratio or a conclusion."""
    from dapt.eval.report import sections
    from dapt.eval.report.collect import RunData

    cfg = load_config(write_config(tmp_path, tmp_path / "run"))
    data = RunData(run_name="r", cfg=cfg, n_params=1000)
    data.manifests["train"] = {
        "device": "cpu",
        "tokens": 3072,
        "tokens_per_s": 40.0,
        "train_seconds": 77.0,
        "peak_memory_bytes": 600 << 20,
        "plan": {
            "memory": {"inputs": {"params": 1000}, "total": 7 << 20},
            "compute": {"tokens": 15360, "wall_clock_hours": 1e-7, "mfu": 0.4},
            "gpu": {"name": "H100-80GB"},
        },
    }
    rows = {r["label"]: r for r in sections.plan_rows(data)}
    assert rows["Parameters"]["comparable"]
    for label in ("Peak memory per worker", "Throughput (tokens/s)", "Training time"):
        assert not rows[label]["comparable"], label
        assert "H100-80GB" in rows[label]["note"] or "RSS" in rows[label]["note"]
    assert rows["Training tokens"]["comparable"]  # a real ratio, with a note on why it differs
    assert "different number of tokens" in rows["Training tokens"]["note"]
    concl = sections.conclusions(data, 0.05)
    assert concl == [
        "Parameters: measured 1,000 vs planned 1,000 (1.00x).",
        "Training tokens: measured 3,072 vs planned 15,360 (0.20x).",
    ]


def test_number_formatting_never_hides_or_invents() -> None:
    from dapt.eval.report import doc, sections

    assert sections._small_pct(2.3e-7) == "2.3e-05%" and sections._small_pct(0.00456) == "0.46%"
    assert doc.fmt_bytes(734_003_200) == "700.00 MiB" and doc.fmt_count(245_760) == "246k"
    assert doc.fmt_seconds(0.00043) == "0.00043 s" and doc.fmt_seconds(161.3) == "2.7 min"
    assert doc.fmt_sig(1523.4) == "1,523" and doc.fmt_p(0.0004) == "<0.001"
    for f in (
        doc.fmt_int,
        doc.fmt_float,
        doc.fmt_bytes,
        doc.fmt_pct,
        doc.fmt_frac,
        doc.fmt_seconds,
        doc.fmt_p,
    ):
        assert f(None) == f(float("nan")) == f("n/a") == doc.NR
