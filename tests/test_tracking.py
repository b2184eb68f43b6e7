"""Experiment tracking (pipeline/tracking.py) with the real MLflow client and a real offline W&B run.

The whole pipeline under MLflow (parent, a child per stage, train's loss curve from rank 0, the report as
an artifact) is checked in tests/test_e2e_tiny.py, which runs configs/tiny.yaml with tracking on. Here: the
runner's side on a one-stage row, a backend that cannot start, and W&B's offline records.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from dapt.pipeline.config import load_config
from dapt.pipeline.stages import STAGES, StageContext, StageSpec, run_stage
from dapt.pipeline.tracking import StepLogger, flatten_params, manifest_metrics

ROOT = Path(__file__).resolve().parent.parent


def counting_stage(ctx: StageContext) -> dict:
    """Writes what a person would open (a Markdown page) and data that is not an artifact."""
    (ctx.out_dir / "summary.md").write_text("# probe\n")
    (ctx.out_dir / "data.jsonl").write_text("{}\n")
    if ctx.tracking is not None:  # what train's rank 0 does with its curves
        logger = StepLogger(ctx.tracking)
        for step in (1, 2, 3):
            logger.log("train", {"step": step, "loss": 4.0 - step, "tokens": 128 * step, "mfu": None})
        logger.close()
    return {
        "counts": {"kept": 7, "rejected": {"length": 2, "duplicate:exact": 1}},
        "mix": {"achieved_domain_fraction": 0.51, "shortfall": False},
        "metrics": [{"name": "bpb/fin", "base": 2.0, "adapted": 1.8, "p_value": 0.01, "source": "fin"}],
        "figures": ["a.png"],
    }


@pytest.fixture
def probe_stage(monkeypatch):
    monkeypatch.setitem(
        STAGES, "probe", StageSpec("probe", counting_stage, (), ("sources",), STAGES["clean"].inputs)
    )


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(ROOT / "configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", *overrides])


def test_manifest_numbers_become_metrics_and_config_params() -> None:
    m = manifest_metrics(
        {
            "stage": "x",
            "fingerprint": "f",
            "outputs": {"model": "model"},
            "counts": {"kept": 3, "rejected": {"pii:email ratio": 1}},
            "ok": True,
            "metrics": [{"name": "bpb/all-domain", "delta_pct": -8.7, "p_value": 0.001, "source": "x"}],
            "ranks": [{"rank": 0}],
            "nan": float("nan"),
        }
    )
    assert m == {
        "manifest/counts/kept": 3.0,
        "manifest/counts/rejected/pii_email ratio": 1.0,
        "manifest/ok": 1.0,
        "manifest/metrics/bpb/all-domain/delta_pct": -8.7,
        "manifest/metrics/bpb/all-domain/p_value": 0.001,
    }
    assert flatten_params({"mix": {"seq_len": 128, "tasks": ["a", "b"]}}) == {
        "mix.seq_len": "128",
        "mix.tasks": '["a", "b"]',
    }


def test_mlflow_child_per_stage_under_one_parent(tmp_path: Path, probe_stage) -> None:
    import mlflow
    from mlflow import MlflowClient

    cfg = _cfg(tmp_path, "tracking.backend=mlflow")
    run_stage(cfg, "probe", echo=None)
    run_stage(cfg, "probe", echo=None, force=True)  # a second command: same parent, a second child
    uri = f"sqlite:///{(tmp_path / 'run' / 'mlruns' / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    child = children[0]
    assert child.info.run_name == "probe" and child.info.status == "FINISHED"
    assert child.data.params["sources"].startswith("[{")  # the stage's config section
    assert child.data.metrics["manifest/counts/rejected/duplicate_exact"] == 1.0
    assert child.data.metrics["manifest/metrics/bpb/fin/p_value"] == 0.01
    assert child.data.metrics["manifest/mix/shortfall"] == 0.0
    curve = client.get_metric_history(child.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in curve] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["summary.md"]
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id)] == ["config.yaml"]


def test_a_backend_that_cannot_start_warns_and_the_stage_completes(
    tmp_path: Path, probe_stage, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = _cfg(tmp_path, "tracking.backend=mlflow", "tracking.uri=http://127.0.0.1:9")  # nothing listens
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = run_stage(cfg, "probe", echo=None)
    assert manifest["counts"]["kept"] == 7
    assert (tmp_path / "run" / "probe" / "_DONE").exists()
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("tracking: starting mlflow" in m and "the run goes on without it" in m for m in msgs), msgs


def test_wandb_offline_records_the_stage_and_its_curve(tmp_path: Path, probe_stage) -> None:
    cfg = _cfg(tmp_path, "tracking.backend=wandb")
    run_stage(cfg, "probe", echo=None)
    keys = (b"train/loss", b"manifest/counts/rejected/duplicate_exact", b"summary.md", b"sources", b"probe")
    deadline = time.monotonic() + 30  # W&B's service finishes writing its offline files after finish()
    while True:
        records = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
        data = b"".join(p.read_bytes() for p in records)
        if all(k in data for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # the rank-0 side (curves) and the driver's end of the stage (config, summary, artifacts): one run id
    assert len(records) == 2 and len({p.name for p in records}) == 1
    for key in keys:
        assert key in data, key
    group = (tmp_path / "run" / "tracking.json").read_text()
    assert '"backend": "wandb"' in group
