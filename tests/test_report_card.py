"""The model card built from RunData directly (no runner): metadata through huggingface_hub's
ModelCardData, limitations computed from the run's numbers, nothing invented."""

from __future__ import annotations

from pathlib import Path

import yaml
from test_report_upstream import (
    HELDOUT,
    bpb_row,
    mix_manifest,
    split_manifest,
    tokenizer_manifest,
    write_config,
)

from dapt.eval.report import model_card
from dapt.eval.report.collect import RunData
from dapt.eval.report.config import ReportConfig
from dapt.eval.report.sections import conclusions
from dapt.pipeline.config import load_config


def _data(tmp_path: Path, **manifests: dict) -> RunData:
    cfg = load_config(write_config(tmp_path, tmp_path / "run"))
    return RunData(run_name="r", cfg=cfg, manifests=dict(manifests))


def test_conclusions_report_forgetting_and_never_invent(tmp_path: Path) -> None:
    """Conclusions follow the data: a significant general regression is called a loss of general
    ability (and lands in the model card's risks); rows without a base give no comparison sentence."""
    data = _data(tmp_path)
    data.results = {
        "metrics": [
            bpb_row("fin", "domain", 1.0, 0.99, 0.4, 0.01, 0.01),
            bpb_row("wiki", "general", 1.0, 1.08, 0.001, 0.01, 0.01),
            {"name": "t/acc", "kind": "task", "task": "t", "metric": "acc", "base": None, "adapted": 0.5},
        ]
    }
    concl = conclusions.conclusions(data, 0.05)
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
    # Every row with an adapted value is a model-index result, the task row without a base included.
    meta = yaml.safe_load(card.split("---\n")[1])
    assert [r["metrics"][0]["name"] for r in meta["model-index"][0]["results"]] == [
        "bpb fin",
        "bpb wiki",
        "t acc",
    ]


def test_metadata_is_model_card_data(tmp_path: Path) -> None:
    """The front matter is huggingface_hub's own serialisation: parsing it back gives the same data."""
    from huggingface_hub import ModelCard

    data = _data(tmp_path, tokenizer=tokenizer_manifest(tmp_path))
    data.results = {"metrics": [bpb_row("fin", "domain", 2.0, 1.5, 0.01, 0.1, 0.1)]}
    rcfg = ReportConfig(license="mit", language=["en", "de"], model_name="acme/fin-135m")
    meta = model_card.card_data(data, rcfg, "acme/fin-135m")
    card = ModelCard(model_card.build_card(data, rcfg, []))
    assert card.data.to_dict() == meta.to_dict()
    assert meta.to_dict()["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta.to_dict()["language"] == ["en", "de"]
    (result,) = card.data.eval_results
    assert (result.task_name, result.dataset_name, result.metric_value) == (
        "bits-per-byte",
        "held-out fin",
        1.5,
    )
    # A Hub id as model name: the getting-started snippet loads it from the Hub.
    assert "AutoTokenizer.from_pretrained('acme/fin-135m')" in card.text


def test_local_base_model_is_not_claimed_as_a_hub_id(tmp_path: Path) -> None:
    tok = {**tokenizer_manifest(tmp_path), "base": {"model": "/models/llama"}}
    card = model_card.build_card(_data(tmp_path, tokenizer=tok), ReportConfig(), [])
    assert "base_model" not in yaml.safe_load(card.split("---\n")[1])
    assert "by continued pretraining of /models/llama" in card
    assert "AutoTokenizer.from_pretrained('path/to/this/model')" in card


def test_heldout_counts_and_tokenizer_fit_come_from_their_stages(tmp_path: Path) -> None:
    """Held-out counts from the split manifest (never the mix's), the tokenizer's fitting split from
    its own manifest, the block length from the mix manifest's top-level ``seq_len``."""
    mix = {**mix_manifest(), "heldout": {"fin": {"validation": 9, "test": 9}}}  # an older mix manifest
    data = _data(tmp_path, split=split_manifest(), mix=mix, tokenizer=tokenizer_manifest(tmp_path))
    card = model_card.build_card(data, ReportConfig(), [])
    tests = ", ".join(f"{k} {v['test']} docs" for k, v in HELDOUT.items())
    assert f"(split off before training: {tests})" in card
    assert "fitted on the train split only: 1,640 documents, 120 held-out documents excluded" in card
    assert "**Training context length:** 64 tokens" in card
    # Without a split manifest the older mix manifest's counts are still shown.
    card = model_card.build_card(_data(tmp_path, mix=mix), ReportConfig(), [])
    assert "(split off before training: fin 9 docs)" in card


def test_random_init_from_the_tokenizer_manifest(tmp_path: Path) -> None:
    """No base model (``model.from_config``), as the tokenizer stage recorded it."""
    tok = {
        "mode": "replace",
        "base_model": {"name_or_path": None, "revision": None, "from_config": {"model_type": "llama"}},
    }
    card = model_card.build_card(_data(tmp_path, tokenizer=tok), ReportConfig(), [])
    assert "by training from a random initialisation" in card
    assert "**Continued pretraining from model:** none (randomly initialised from a config)" in card
    assert "from a random initialisation (no pretrained base)." in card


def test_general_loss_needs_holm_over_the_general_sources(tmp_path: Path) -> None:
    """Issue 19, item 6: five general sources, one of them at raw p = 0.03 (every row flagged the old
    way, ``significant: p < 0.05``). Without correction that read "General ability was lost"; Holm over
    the five (0.03 x 5 = 0.15) says no significant loss, names the raw hit, and the card agrees. The same
    rows recorded by a new eval stage (with p_adjusted) give the same sentences."""
    from dapt.eval.compare import adjust_rows

    def rows() -> list[dict]:
        return [
            bpb_row("fin", "domain", 2.0, 1.8, 0.001, 0.01, 0.01),
            *[
                bpb_row(name, "general", 1.0, 1.0 + d, p, 0.01, 0.01)
                for name, d, p in [
                    ("wiki", 0.03, 0.03),
                    ("books", 0.01, 0.2),
                    ("news", -0.01, 0.5),
                    ("code", 0.005, 0.6),
                    ("law", -0.002, 0.9),
                ]
            ],
        ]

    old = rows()
    assert old[1]["significant"] is True  # raw flag: this alone used to be "General ability was lost"
    data = _data(tmp_path)
    data.results = {"metrics": old}
    concl = conclusions.conclusions(data, 0.05)
    assert not any(c.startswith("General ability was lost") for c in concl)
    assert (
        "No significant loss on general held-out text (bits-per-byte did not rise significantly; raw "
        "p < 0.05 on wiki (p=0.030, Holm-adjusted p=0.150 over 5), not significant after Holm correction "
        "over 5 sources)." in concl
    )
    assert (
        "bpb wiki: 1.0000 -> 1.0300 (+3.0%), worse (not significant, p=0.030, Holm-adjusted p=0.150 over 5)."
        in concl
    )
    card = model_card.build_card(data, ReportConfig(), concl)
    assert "(wiki) is +3.0% vs the base model (not significant)" in card

    new = adjust_rows(rows(), 0.05)
    assert new[1]["p_adjusted"] == 0.15 and new[1]["significant"] is False
    data.results = {"metrics": new}
    assert conclusions.conclusions(data, 0.05) == concl

    # a real loss survives the correction: raw 0.004 x 5 = 0.02
    strong = rows()
    strong[1]["p_value"] = 0.004
    data.results = {"metrics": strong}
    concl = conclusions.conclusions(data, 0.05)
    assert (
        "General ability was lost: general bits-per-byte rose significantly on 1 of 5 general sources "
        "(worst: wiki +3.0%; Holm-adjusted over the 5 sources)." in concl
    )


def test_hub_datasets_among_the_sources_become_card_datasets(tmp_path: Path) -> None:
    data = _data(tmp_path, tokenizer=tokenizer_manifest(tmp_path))
    data.cfg.sources[0].paths = ["hf://datasets/acme/filings@main/data/*.jsonl", "/local/more.jsonl"]
    meta = model_card.card_data(data, ReportConfig(), "m").to_dict()
    assert meta["datasets"] == ["acme/filings"]
    data.cfg.sources[0].paths = ["/local/only.jsonl"]
    assert "datasets" not in model_card.card_data(data, ReportConfig(), "m").to_dict()
