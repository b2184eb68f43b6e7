"""configs/tiny.yaml end to end through the real CLI: every stage, report and model card, then up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dapt.pipeline.config import load_config
from dapt.pipeline.stages import STAGE_ORDER, stage_status

ROOT = Path(__file__).resolve().parent.parent


def _dapt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_tiny_config_runs_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    # Tracking on (tracking.* is in no stage's fingerprint: the rerun below, without it, is up to date).
    proc = _dapt("run", "--config", "configs/tiny.yaml", f"run_dir={run_dir}", "tracking.backend=mlflow")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report:" in proc.stdout

    cfg = load_config(ROOT / "configs/tiny.yaml", [f"run_dir={run_dir}"])
    assert all(stage_status(cfg, s) == "done" for s in STAGE_ORDER)

    # Counts reconcile in the clean stage, and the planted duplicates went.
    clean = json.loads((run_dir / "clean" / "manifest.json").read_text())
    for src in clean["sources"].values():
        assert src["docs_in"] == src["kept"] + sum(src["rejected"].values())
        assert src["rejected"].get("duplicate:exact", 0) >= 2

    mix = json.loads((run_dir / "mix" / "manifest.json").read_text())
    assert abs(mix["mix"]["achieved_domain_fraction"] - 0.51) < 0.01

    # The tokenizer was fitted on the training split only.
    tok = json.loads((run_dir / "tokenizer" / "manifest.json").read_text())
    split = json.loads((run_dir / "split" / "manifest.json").read_text())
    assert (
        tok["trained_on"]["heldout_excluded"]
        == split["counts"]["validation_docs"] + split["counts"]["test_docs"]
    )

    # The published model loads and carries the report's card; no stage wrote into train's folder.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = run_dir / "publish" / "model"
    AutoModelForCausalLM.from_pretrained(model_dir)
    AutoTokenizer.from_pretrained(model_dir)
    html = (run_dir / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "bits-per-byte" in html.lower()
    card = (model_dir / "README.md").read_text()
    assert "## Evaluation" in card or "## Evaluation results" in card
    assert card == (run_dir / "report" / "model_card.md").read_text()
    assert not (run_dir / "train" / "model" / "README.md").exists()

    # The per-item task values behind the paired tests are kept, for both models.
    for role in ("base", "adapted"):
        rows = [
            json.loads(x)
            for x in (run_dir / "eval" / "items" / f"tasks_{role}.jsonl").read_text().splitlines()
        ]
        assert {r["task"] for r in rows} == {"tiny_fin_terms", "tiny_gen_terms"}
        assert {r["metric"] for r in rows} == {"acc", "acc_norm"} and all(
            r["value"] in (0.0, 1.0) for r in rows
        )

    # lm-eval's own files, as `lm_eval --output_path --log_samples` writes them, found and read with
    # lm-eval's helpers; their per-sample accuracies are the values dapt's paired tests used.
    from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames

    for role in ("base", "adapted"):
        files = [str(p) for p in (run_dir / "eval" / "lm_eval" / role).rglob("*") if p.is_file()]
        res = json.loads(Path(get_latest_filename(get_results_filenames(files))).read_text())
        assert {"tiny_fin_terms", "tiny_gen_terms"} <= set(res["results"]) and res["model_source"] == "CUSTOM"
        dapt_items = {
            (r["task"], r["doc"]): r["value"]
            for r in map(
                json.loads, (run_dir / "eval" / "items" / f"tasks_{role}.jsonl").read_text().splitlines()
            )
            if r["metric"] == "acc"
        }
        for task in ("tiny_fin_terms", "tiny_gen_terms"):
            (sample_file,) = [f for f in get_sample_results_filenames(files) if f"samples_{task}_" in f]
            samples = [json.loads(x) for x in Path(sample_file).read_text().splitlines()]
            assert {(task, s["doc_id"]): s["acc"] for s in samples} == {
                k: v for k, v in dapt_items.items() if k[0] == task
            }

    # MLflow: one parent run, one finished child per stage, train's loss curve streamed from rank 0 with
    # one value per logged step (as metrics.jsonl), the report and model card as artifacts.
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{(run_dir / 'mlruns' / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(STAGE_ORDER) and len(runs) == len(STAGE_ORDER) + 1
    assert all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(uri)
    train_run = children["train"].info.run_id
    logged = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    curve = client.get_metric_history(train_run, "train/loss")
    assert [(m.step, round(m.value, 6)) for m in curve] == [(r["step"], round(r["loss"], 6)) for r in logged]
    assert client.get_metric_history(train_run, "monitor/general_bpb")
    assert {"report.html", "report.md", "model_card.md"} <= {
        a.path for a in client.list_artifacts(children["report"].info.run_id)
    }
    assert "manifest/mix/achieved_domain_fraction" in children["mix"].data.metrics
    assert "manifest/summary/domain_bpb_delta_pct" in children["eval"].data.metrics

    # A rerun with nothing changed does nothing.
    again = _dapt("run", "--config", "configs/tiny.yaml", f"run_dir={run_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("up to date") == len(STAGE_ORDER)
