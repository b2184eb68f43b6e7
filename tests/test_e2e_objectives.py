"""configs/tiny-mlm.yaml and configs/tiny-span.yaml end to end through the real CLI: a BERT adapted with
masked LM and a T5 adapted with span corruption, through the same eight stages as the causal run.

What each run must show: the tokenizer stage resolved the objective from the architecture and added
the tokens it needs; mix packed blocks whose model input is exactly ``mix.seq_len`` tokens and kept the
token-exact ratio; train trained with that objective; eval measured the objective's bits-per-byte
(pseudo-log-likelihood / denoising) base vs adapted; the published folder loads with the objective's
Auto class and its card names the objective; a rerun does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_e2e_tiny import ROOT, _dapt

from dapt.pipeline.config import load_config
from dapt.pipeline.stages import STAGE_ORDER, stage_status

CASES = {
    "mlm": ("configs/tiny-mlm.yaml", "AutoModelForMaskedLM", "BertForMaskedLM", "pseudo-log-likelihood"),
    "span": ("configs/tiny-span.yaml", "AutoModelForSeq2SeqLM", "T5ForConditionalGeneration", "denoising"),
}


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(CASES))
def test_objective_config_runs_end_to_end(objective: str, tmp_path: Path) -> None:
    import transformers

    config, auto_name, arch, metric = CASES[objective]
    run_dir = tmp_path / objective
    proc = _dapt("run", "--config", config, f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config(ROOT / config, [f"run_dir={run_dir}"])
    assert all(stage_status(cfg, s) == "done" for s in STAGE_ORDER)

    tok = _manifest(run_dir, "tokenizer")
    assert tok["objective"] == objective  # model.objective: auto, resolved from the architecture
    needed = "<mask>" if objective == "mlm" else "<extra_id_0>"
    assert needed in tok["objective_tokens"]

    mix = _manifest(run_dir, "mix")
    assert mix["objective"] == objective and mix["seq_len"] == 128
    packing = mix["packing"]
    if objective == "span":  # raw blocks sized so that the corrupted input fills the row exactly
        assert mix["block_len"] > 128 and packing["input_tokens"] == 128
    else:
        frame = len(packing["frame"]["head"]) + len(packing["frame"]["tail"])
        assert mix["block_len"] == 128 - frame
    assert abs(mix["mix"]["achieved_domain_fraction"] - 0.51) < 0.01

    train = _manifest(run_dir, "train")
    assert train["hyperparameters"]["objective"] == objective

    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["settings"]["objective"] == objective
    assert metric in results["settings"]["bpb_metric"]
    bpb_rows = [r for r in results["metrics"] if r["kind"] == "bpb"]
    assert bpb_rows and all(r["base"] > 0 and r["adapted"] > 0 and r["p_value"] is not None for r in bpb_rows)
    if objective == "mlm":
        assert all(0 <= s["masked_accuracy"] <= 1 for s in results["bpb"]["adapted"].values())
        assert {t["status"] for t in results["tasks"].values()} == {"unavailable"}
        probe = {r["name"] for r in results["metrics"] if r["kind"] == "probe"}  # the downstream probe
        assert probe == {f"probe/{s}/{m}" for s in ("domain", "general") for m in ("acc", "macro_f1")}
        assert set(results["probe"]["adapted"]["domain"]["per_seed"][0]) >= {"seed", "accuracy", "macro_f1"}
    else:  # lm-eval's seq2seq model type scored the multiple-choice tasks
        assert {t["status"] for t in results["tasks"].values()} == {"ok"}
        assert any(r["kind"] != "bpb" for r in results["metrics"])

    model_dir = run_dir / "publish" / "model"
    model = getattr(transformers, auto_name).from_pretrained(model_dir)
    assert type(model).__name__ == arch
    transformers.AutoTokenizer.from_pretrained(model_dir)
    card = (model_dir / "README.md").read_text()
    assert card == (run_dir / "report" / "model_card.md").read_text()
    assert ("fill-mask" if objective == "mlm" else "text2text-generation") in card
    report = (run_dir / "report" / "report.md").read_text()
    assert f"| Objective | {objective}:" in report

    again = _dapt("run", "--config", config, f"run_dir={run_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("up to date") == len(STAGE_ORDER)
