"""The report stage, run through the real runner (``run_stage``) on synthetic finished upstream stages
(tests/test_report_upstream.py builds them): its manifest, conclusions, HTML, Markdown and model card,
and that it writes only into its own folder."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_report_upstream import (
    SECTION_IDS,
    bare_upstream,
    finish,
    make_report_run,
    write_config,
)

from dapt.pipeline.config import load_config
from dapt.pipeline.stages import run_stage

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


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_report_run(tmp_path_factory)


def test_manifest_outputs_and_conclusions(report_run: dict[str, Any]) -> None:
    m, d = report_run["manifest"], report_run["dir"]
    assert m["outputs"] == {"html": "report.html", "markdown": "report.md", "model_card": "model_card.md"}
    for rel in m["outputs"].values():
        assert (d / rel).is_file()
    assert (d / "_DONE").exists()
    assert m["sections"] == SECTION_IDS  # every input present: no "Missing inputs" section
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


def test_writes_only_into_its_own_folder(report_run: dict[str, Any]) -> None:
    """The card is the report's output (publish copies it); the train stage's folder is untouched."""
    run_dir, m = report_run["run_dir"], report_run["manifest"]
    train = run_dir / "train"
    assert (
        sorted(p.relative_to(train).as_posix() for p in train.rglob("*"))
        == report_run["facts"]["train_files"]
    )
    assert not (train / "model" / "README.md").exists()
    assert "model_readme" not in m
    assert m["upstream"] == {
        "clean": "clean-fp",
        "split": "split-fp",
        "tokenizer": "tok-fp",
        "mix": "mix-fp",
        "train": "train-fp",
        "eval": "eval-fp",
    }


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
    assert '<td class="n">1,200</td>' in html  # numeric columns right-aligned


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
        "| bpb fin | bpb | fin | 2.0000 ± 0.0200 | 1.7540 ± 0.0180 | -0.2460 | [-0.2820, -0.2100] | -12.30% | <0.001 | <0.001 (1) | yes \\* | lower |"
        in md
    )
    # The split stage's held-out counts, and what the tokenizer was fitted on (the training split only).
    assert "| fin | domain | 20 | 40 |" in md and "| wiki | general | 20 | 40 |" in md
    assert "| Fitted on | train split: 1,640 documents (120 held-out documents excluded) |" in md
    assert "| Base model revision | main |" in md
    assert "| split | not recorded | not recorded | split-fp |" in md  # the summary's stage table


def test_model_card_filled_from_the_records(report_run: dict[str, Any]) -> None:
    d, f = report_run["dir"], report_run["facts"]
    card = (d / "model_card.md").read_text(encoding="utf-8")
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
    assert "| bpb fin | 2.0000 | 1.7540 | -12.30% | <0.001 | <0.001 | yes |" in card
    assert "**Peak memory per worker:** 700.00 MiB" in card
    assert "**Hardware:** NVIDIA H100 80GB HBM3, 2 worker(s)" in card
    assert (
        "**Hours used:** 0.0448 h wall time x 2 worker(s) = 0.0896 worker-hours (training stage only)" in card
    )
    assert "**num\\_hidden\\_layers:** 2" in card
    assert "Licences not recorded for training sources: wiki" in card
    assert "redacted 16 email, 3 phone" in card
    assert "Training data was not decontaminated against fpb (no item text was available)" in card
    assert "(split off before training: fin 40 docs, wiki 40 docs)" in card  # the split stage's counts
    assert "(fitted on the train split only: 1,640 documents, 120 held-out documents excluded)" in card
    assert "packed into blocks of 64 tokens" in card  # the mix stage's top-level seq_len


def test_rerun_is_up_to_date(report_run: dict[str, Any]) -> None:
    """Unchanged upstream fingerprints: the runner skips the stage (same manifest, not re-rendered)."""
    cfg = report_run["cfg"]
    again = run_stage(cfg, "report", echo=None)
    assert again["started"] == report_run["manifest"]["started"]
    assert again["fingerprint"] == report_run["manifest"]["fingerprint"]


def test_missing_keys_render_as_not_recorded(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    bare_upstream(run_dir)
    cfg = load_config(write_config(tmp_path, run_dir, report={}))
    m = run_stage(cfg, "report", echo=None)
    html = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html
    assert "not recorded" in html
    assert 'id="notes"' in html and "outputs.results" in html
    assert "Held-out documents per source (split manifest `heldout`): not recorded." in html
    assert m["conclusions"] == []  # nothing measured, nothing concluded
    assert m["figures"] == []
    card = (run_dir / "report" / "model_card.md").read_text(encoding="utf-8")
    for h in CARD_HEADINGS:
        assert f"\n{h}\n" in card
    assert "**License:** not recorded" in card and "**Parameters:** not recorded" in card
    meta = yaml.safe_load(card.split("---\n")[1])
    assert "license" not in meta and "model-index" not in meta and "base_model" not in meta
    assert "Evaluation results: not recorded." in card
    assert "Conclusions: not recorded." in card
    assert "from a random initialisation (no pretrained base)." in card  # model.from_config, no base


def test_partial_manifests_and_torn_jsonl(tmp_path: Path) -> None:
    """Some keys present, some missing, a killed writer's torn last metrics line: still renders."""
    run_dir = tmp_path / "run"
    bare_upstream(run_dir)
    train = run_dir / "train"
    (train / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 4.0}\n{"step": 2, "loss": 3.5}\n{"step": 3, "lo'
    )
    finish(train, {"fingerprint": "t2", "outputs": {"metrics": "metrics.jsonl"}, "steps": 2, "plan": "n/a"})
    finish(
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


def test_deprecated_copy_model_card_is_accepted_and_ignored(tmp_path: Path) -> None:
    """Older configs still load; the card is still written only into the report's folder."""
    run_dir = tmp_path / "run"
    bare_upstream(run_dir)
    (run_dir / "train" / "model").mkdir()
    finish(run_dir / "train", {"fingerprint": "t3", "outputs": {"model": "model"}})
    cfg = load_config(write_config(tmp_path, run_dir, report={"copy_model_card": True}))
    m = run_stage(cfg, "report", echo=None)
    assert m["outputs"]["model_card"] == "model_card.md"
    assert list((run_dir / "train" / "model").iterdir()) == []
    log = (run_dir / "report" / "log.txt").read_text(encoding="utf-8")
    assert "report.copy_model_card is deprecated" in log
