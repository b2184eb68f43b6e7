"""The train stage end to end through the runner and real Ray Train (2 gloo workers, one fit).

Upstream ``tokenizer`` and ``mix`` outputs are written by tests/train_fixtures.py exactly as the runner
leaves them (files, ``manifest.json`` with a fingerprint, ``_DONE``), from real tokenised text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from train_fixtures import SEQ, make_run, small_train

from dapt.pipeline.config import load_config
from dapt.pipeline.errors import InputError
from dapt.pipeline.stages import STAGES, compute_fingerprint, run_stage


def test_blocks_that_do_not_match_the_mix_seq_len_are_an_input_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The block length is the mix manifest's fact: train checks the packed array against it."""
    path = make_run(tmp_path, tiny_model_dir, {"micro_batch_size": 2, "global_batch_tokens": 64})
    cfg = load_config(path)
    man_path = cfg.run_path / "mix" / "manifest.json"
    man_path.write_text(json.dumps({**json.loads(man_path.read_text()), "seq_len": 64}))
    with pytest.raises(InputError, match=r"block_len 65; rerun `dapt mix`"):
        run_stage(cfg, "train", echo=None, extra={"preflight": False})
    assert not (cfg.run_path / "train").exists()


def test_two_worker_fit_survives_a_worker_crash_and_exports(
    tmp_path: Path, tiny_model_dir: Path, ray_local: dict
) -> None:
    from transformers import AutoModelForCausalLM

    path = make_run(
        tmp_path,
        tiny_model_dir,
        {
            "num_workers": 2,
            "cpus_per_worker": 1,
            "sharding": "zero3",
            "precision": "fp32",
            "micro_batch_size": 2,
            "global_batch_tokens": 2 * 2 * SEQ,
            "max_steps": 4,
            "lr": 3e-3,
            "checkpoint_every": 2,
            "monitor_every": 2,
            "monitor_max_tokens": 2000,
            "log_every": 1,
            "max_failures": 1,
        },
    )
    cfg = load_config(path)
    marker = tmp_path / "failed-once"
    extra = {"preflight": True, "fail_at_step": 3, "fail_marker": str(marker), "progress": False}
    man = run_stage(cfg, "train", echo=None, extra=extra)

    assert marker.exists()  # the last rank did crash at step 3 ...
    assert man["resumed_from_step"] == 2  # ... and Ray Train's retry resumed from the step-2 checkpoint
    assert man["steps"] == 4 and man["tokens"] == 4 * 4 * SEQ and not man["early_stopped"]
    assert man["num_workers"] == 2 and man["sharding"] == "zero3" and man["device"] == "cpu"
    assert man["mfu"] is None and man["peak_memory_bytes"] > 0 and man["tokens_per_s"] > 0
    assert man["outputs"] == {
        "model": "model",
        "metrics": "metrics.jsonl",
        "monitor": "monitor.jsonl",
        "tensorboard": "tb",
    }
    assert man["plan"] is None or isinstance(man["plan"], dict)
    if man["plan"]:  # the preflight planned the mix manifest's block length (train has no seq_len)
        assert man["plan"]["memory"]["inputs"]["seq_len"] == SEQ
    out = cfg.run_path / "train"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the crashed attempt's rows are not duplicated
    mon = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in mon] == [0, 2, 4]
    assert set(mon[0]) >= {"step", "tokens", "domain_bpb", "general_bpb", "domain_loss", "general_loss"}
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").rglob("*"))

    # the export loads with from_pretrained and gives the sharded model's loss on the monitor windows
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    w = np.load(cfg.run_path / ".work" / "train" / "monitor_windows.npz")
    x, y = torch.from_numpy(w["domain_inputs"]), torch.from_numpy(w["domain_targets"])
    with torch.no_grad():
        logits = model(input_ids=x).logits
    loss = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="sum"
        )
        / (y != -100).sum()
    )
    assert float(loss) == pytest.approx(mon[-1]["domain_loss"], abs=1e-5)
    assert (out / "model" / "tokenizer_config.json").exists()
    assert not (out / "model" / "README.md").exists()  # the model card is the report's, not train's
    assert man["seq_len"] == SEQ and man["hyperparameters"]["seq_len"] == SEQ

    # up to date: a second call does not train again
    again = run_stage(cfg, "train", echo=None, extra={"preflight": False})
    assert again["fingerprint"] == man["fingerprint"] and again["started"] == man["started"]

    # logging, checkpoint and planning knobs keep its fingerprint (the upstream stages here are stand-ins,
    # so compare fingerprints rather than statuses); trajectory knobs change it
    def fingerprint(*overrides: str) -> str:
        return compute_fingerprint(load_config(path, list(overrides)), STAGES["train"])[0]

    cosmetic = ("train.log_every=5", "train.checkpoint_every=7", "train.max_failures=3", "plan.gpu=A100-80GB")
    assert fingerprint(*cosmetic) == man["fingerprint"]
    assert fingerprint("train.lr=0.001") != man["fingerprint"]
    assert fingerprint("train.monitor_every=3") != man["fingerprint"]


# Console noise that must not reach a user: Ray Train's placement-group cleaner polling the State API
# (unavailable without a dashboard) every second, and torch's deprecation warning that every worker's
# torchao import logs (train/quiet.py).
NOISE = ("Failed to query Ray Train Controller actor state", "is an Enum subclass")


def _train(path: Path, *overrides: str, **extra: Any) -> dict[str, Any]:
    cfg = load_config(path, list(overrides))
    return run_stage(cfg, "train", echo=None, extra={"preflight": False, "progress": False, **extra})


def _rows(run: Path) -> list[str]:
    return (run / "train" / "metrics.jsonl").read_text().splitlines()


def test_raising_max_steps_continues_from_the_last_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, ray_local: dict, capfd: pytest.CaptureFixture
) -> None:
    """20 -> 30 steps: the rerun resumes the step-20 checkpoint (keyed by the state key, which leaves the
    budget out) and trains steps 21-30 only, with the new cosine schedule, saying so in log and manifest."""
    from dapt.train.resume import list_checkpoints

    path = make_run(tmp_path, tiny_model_dir, small_train(max_steps=20, checkpoint_every=10), heldout=False)
    run = tmp_path / "run"
    first = _train(path)
    assert first["steps"] == 20 and first["resumed"] is None
    rows_20 = _rows(run)

    longer = _train(path, "train.max_steps=30")
    assert longer["fingerprint"] != first["fingerprint"] and longer["steps"] == 30
    resumed = longer["resumed"]
    assert resumed["from_step"] == 20 and resumed["continued"] and resumed["previous_steps"] == 20
    assert resumed["previous_max_steps"] == 20 and resumed["changed"] == {"train.max_steps": [20, 30]}
    assert resumed["exact"] is False  # cosine: a longer run decays more slowly than the 20-step one did
    assert resumed["lr"]["at_resume"] > resumed["lr"]["last_trained"]
    assert longer["resumed_from_step"] == 20 and longer["set_aside"] == []
    assert [h["from_step"] for h in longer["schedule_history"]] == [0, 20]
    rows = _rows(run)
    assert [json.loads(r)["step"] for r in rows] == list(range(1, 31))
    assert rows[:20] == rows_20  # the very rows of the first run (wall-clock included): not recomputed
    ckpts = run / ".work" / "train" / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [20, 30]
    log = (run / "logs" / "train.log").read_text()
    assert "continuing from checkpoint step 20 of a 20-step run with the new schedule" in log

    # Only meaningful when worker output reaches the driver and this is the machine's only Ray: with
    # other local Ray instances the cleaner's State API client connects to one of those instead.
    out, err = capfd.readouterr()
    for line in NOISE:
        assert line not in out + err


@pytest.mark.slow  # three fits (about 80 s on the shared 2-core box)
def test_an_interrupted_run_resumes_after_a_log_every_change_and_an_lr_change_moves_checkpoints_aside(
    tmp_path: Path, tiny_model_dir: Path, ray_local: dict
) -> None:
    """A cosmetic knob keeps the checkpoints of a crashed run resumable; a real change (lr) never deletes
    them silently: they are moved aside, named in the manifest, and removed only after the new run's own
    first checkpoint."""
    path = make_run(
        tmp_path, tiny_model_dir, small_train(max_steps=10, checkpoint_every=5, max_failures=0), heldout=False
    )
    run = tmp_path / "run"
    with pytest.raises(Exception, match="injected failure at step 7"):
        _train(path, fail_at_step=7)  # no marker: it fails every time, and max_failures is 0
    assert not (run / "train").exists()

    resumed = _train(path, "train.log_every=2")
    assert resumed["resumed"] == {"from_step": 5, "continued": False} and resumed["steps"] == 10
    assert [json.loads(r)["step"] for r in _rows(run)] == [1, 2, 3, 4, 5, 6, 8, 10]

    changed = _train(path, "train.lr=0.001")
    assert changed["resumed"] is None and changed["resumed_from_step"] is None and changed["steps"] == 10
    (aside,) = changed["set_aside"]
    assert aside["reason"] == "state" and aside["changed"] == {"train.lr": [0.003, 0.001]}
    assert aside["steps"] == [5, 10] and aside["removed"] and not Path(aside["path"]).exists()
    assert [json.loads(r)["step"] for r in _rows(run)] == list(range(1, 11))
    log = (run / "logs" / "train.log").read_text()
    assert "changed: train.lr" in log and "moved aside" in log
