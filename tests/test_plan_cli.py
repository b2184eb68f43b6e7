"""`dapt plan` (free-form and --config) and the train preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dapt.pipeline.cli import main as dapt
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import PreflightError
from dapt.train.plan import memory
from dapt.train.plan.preflight import arch_from_model_config, preflight

H100 = "NVIDIA H100 80GB HBM3"
H100_MEM = 81559 * 2**20

TINY = dict(
    model_type="llama",
    vocab_size=301,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# Llama-2-70B's shape: impossible to train with DDP on one 80 GB GPU.
BIG = dict(
    model_type="llama",
    vocab_size=32000,
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
)


def _write_config(tmp_path: Path, model: dict, train: dict | None = None, plan: dict | None = None) -> Path:
    data = {
        "name": "plan-test",
        "run_dir": str(tmp_path / "run"),
        "sources": [{"name": "fin", "kind": "domain", "paths": [str(tmp_path / "fin.jsonl")]}],
        "model": model,
        "train": train or {},
        "plan": plan or {},
    }
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _from_config(d: dict) -> dict:
    keys = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"}
    keys |= {"num_attention_heads", "num_key_value_heads"}
    return {"from_config": {k: v for k, v in d.items() if k in keys}}


def test_free_form_table(capsys):
    rc = dapt(
        [
            "plan",
            "--params",
            "7e9",
            "--precision",
            "bf16",
            "--gpus",
            "8",
            "--sharding",
            "zero3",
            "--seq-len",
            "4096",
        ]
        + ["--micro-batch", "1", "--tokens", "2B", "--gpu", "H100-80GB", "--price", "2.5"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for text in (
        "PREDICTED PEAK",
        "optimizer states",
        "fits",
        "petaflop/s-days",
        "GPU-hours",
        "cost $",
        "Besiroglu",
    ):
        assert text in out, text
    assert "ASSUMED" in out  # a bare parameter count: the activation shape is a labelled guess


def test_free_form_json_matches_estimator(capsys):
    args = [
        "--layers",
        "32",
        "--hidden",
        "4096",
        "--heads",
        "32",
        "--kv-heads",
        "8",
        "--intermediate",
        "14336",
    ]
    args += [
        "--vocab",
        "128256",
        "--gpus",
        "8",
        "--sharding",
        "zero2",
        "--seq-len",
        "8192",
        "--micro-batch",
        "2",
    ]
    assert dapt(["plan", *args, "--checkpointing", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    want = memory.estimate(
        layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256, world_size=8,
        sharding="zero2", seq_len=8192, micro_batch=2, activation_checkpointing=True,
        loss_chunk_tokens=1024, device_mem_bytes=H100_MEM, headroom_fraction=0.08,
    )  # fmt: skip
    assert plan["memory"]["total"] == want["total"]
    # full logits (train.loss_chunk_tokens: 0): 16k tokens x 128k vocabulary x 12 bytes, against one
    # 1k-token chunk (8 bytes per entry) and the head's fp32 gradient
    assert dapt(["plan", *args, "--checkpointing", "--loss-chunk-tokens", "0", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["memory"]["logits"] == 2 * 8192 * 128256 * 12
    assert plan["memory"]["logits"] == 1024 * 128256 * 8 + 4 * 128256 * 4096 + 2 * 8192 * 4096 * 2
    assert full["memory"]["logits"] > 7 * plan["memory"]["logits"]
    assert plan["memory"]["inputs"]["params"] == 8_030_261_248
    assert plan["max_micro_batch"] >= 2
    assert plan["gpu"]["name"] == "H100-80GB"


def test_free_form_errors_exit_2(capsys):
    assert dapt(["plan"]) == 2
    assert "--params" in capsys.readouterr().err
    assert dapt(["plan", "--params", "1e9", "--gpu", "Z9000"]) == 2
    assert "unknown GPU" in capsys.readouterr().err
    assert dapt(["plan", "--params", "1e9", "train.seq_len=4"]) == 2


def test_config_from_config_model_uses_exact_shapes(tmp_path, capsys):
    from conftest import make_tiny_llama

    cfg = _write_config(
        tmp_path,
        _from_config(TINY),
        train={"num_workers": 2, "sharding": "zero3", "micro_batch_size": 2, "tokens": 10**6},
    )
    assert dapt(["plan", "--config", str(cfg), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = sum(p.numel() for p in make_tiny_llama(301).parameters())
    assert plan["memory"]["inputs"]["params"] == n
    assert plan["memory"]["inputs"]["world_size"] == 2
    assert plan["memory"]["inputs"]["micro_batch"] == 2
    assert plan["compute"]["tokens"] == 10**6
    assert plan["tokens_source"] == "train.tokens"
    # flags override the config; key=value overrides reach the config
    assert dapt(["plan", "--config", str(cfg), "--sharding", "ddp", "train.seq_len=128", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["memory"]["inputs"]["sharding"] == "ddp" and plan["memory"]["inputs"]["seq_len"] == 128


def test_config_local_model_folder(tmp_path, tiny_model_dir, capsys):
    cfg = _write_config(tmp_path, {"name_or_path": str(tiny_model_dir)})
    assert dapt(["plan", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "2 layers, hidden 64" in out


def test_config_hub_id_offline_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _write_config(tmp_path, {"name_or_path": "some-org/some-model-that-is-not-cached"})
    assert dapt(["plan", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "some-org/some-model-that-is-not-cached" in err and "local model folder" in err


def test_preflight_refuses_impossible_run_with_alternatives(tmp_path):
    cfg = load_config(
        _write_config(
            tmp_path,
            _from_config(BIG),
            train={"num_workers": 8, "sharding": "ddp", "micro_batch_size": 4, "seq_len": 4096},
        )
    )
    with pytest.raises(PreflightError) as ei:
        preflight(cfg, BIG, H100, H100_MEM)
    msg = str(ei.value)
    assert ei.value.exit_code == 4
    assert "exceeds the usable" in msg and H100 in msg
    assert "PREDICTED PEAK" in msg and "would fit with" in msg
    assert "train.sharding=zero3" in msg  # an alternative names the config key to change
    assert "--no-preflight" in msg


def test_preflight_alternatives_really_fit(tmp_path):
    from dapt.train.plan.plan import make_plan

    arch = arch_from_model_config(BIG)
    plan = make_plan(
        arch,
        seq_len=2048,
        micro_batch=2,
        sharding="ddp",
        world_size=8,
        device_mem_bytes=H100_MEM,
        headroom_fraction=0.08,
    )
    assert plan["memory"]["fits"] is False
    alts = plan["alternatives"]
    assert alts
    for a in alts:
        kw = dict(seq_len=2048, micro_batch=2, sharding="ddp", world_size=8, device_mem_bytes=H100_MEM)
        kw.update(a["change"])
        est = memory.estimate(
            **{k: v for k, v in arch.items() if k != "model_type"}, headroom_fraction=0.08, **kw
        )
        assert est["fits"], a
    kinds = {k for a in alts for k in a["change"]}
    assert {"sharding", "activation_checkpointing", "cpu_offload", "world_size"} <= kinds


def test_preflight_passes_a_fitting_run_and_returns_json(tmp_path):
    cfg = load_config(
        _write_config(tmp_path, _from_config(TINY), train={"num_workers": 2, "micro_batch_size": 4})
    )
    plan = preflight(cfg, TINY, H100, H100_MEM)
    assert plan["refused"] is False and plan["memory"]["fits"] is True
    assert plan["gpu"]["memory_bytes"] == H100_MEM
    json.dumps(plan)  # JSON-able (the train manifest stores it)


def test_preflight_on_cpu_never_refuses(tmp_path):
    cfg = load_config(_write_config(tmp_path, _from_config(BIG), train={"num_workers": 2, "sharding": "ddp"}))
    plan = preflight(cfg, BIG, "cpu", 24 * 2**30)
    assert plan["refused"] is False
    assert plan["memory"]["fits"] is False  # judged against host RAM per worker, for information only
    plan = preflight(cfg, BIG, "cpu", None)
    assert plan["refused"] is False


def test_preflight_accepts_pretrained_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = load_config(_write_config(tmp_path, _from_config(TINY)))
    pc = transformers.LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    plan = preflight(cfg, pc, "cuda", 16 * 2**30)
    assert plan["memory"]["inputs"]["layers"] == 2 and plan["memory"]["inputs"]["vocab"] == 301


def test_measured_mfu_and_peak_are_read_from_the_train_manifest(tmp_path, capsys):
    cfg_path = _write_config(tmp_path, _from_config(TINY), train={"tokens": 10**6})
    train_dir = tmp_path / "run" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "manifest.json").write_text(json.dumps({"mfu": 0.31, "peak_memory_bytes": 123456789}))
    (train_dir / "_DONE").write_text("")
    assert dapt(["plan", "--config", str(cfg_path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["compute"]["mfu"] == 0.31 and plan["compute"]["mfu_source"].startswith("measured")
    assert plan["measured_peak_memory_bytes"] == 123456789


def test_free_form_local_model_folder(tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM

    assert dapt(["plan", "--model", str(tiny_model_dir), "--gpus", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert plan["memory"]["inputs"]["params"] == n


def test_plan_section_is_validated(tmp_path, capsys):
    cfg = _write_config(tmp_path, _from_config(TINY), plan={"mfu": 1.5})
    assert dapt(["plan", "--config", str(cfg)]) == 2
    assert "plan.mfu" in capsys.readouterr().err
    cfg = _write_config(tmp_path, _from_config(TINY), plan={"gpu_memory": 80})
    assert dapt(["plan", "--config", str(cfg)]) == 2
    assert "plan.gpu_memory: unknown key" in capsys.readouterr().err
    cfg = _write_config(tmp_path, _from_config(TINY), plan={"gpu": "Z9000"})
    assert dapt(["plan", "--config", str(cfg)]) == 2
    assert "plan.gpu" in capsys.readouterr().err


def test_uncached_hub_id_offline_fails_fast_with_clear_error(monkeypatch):
    """A hub id that is not in the local cache while the hub cannot be reached: one connection probe,
    then a ConfigError naming the key, instead of transformers' retry loop (~25 s). The endpoint is a
    closed local port, so the test means the same on a machine with network."""
    from huggingface_hub import constants

    from dapt.pipeline.errors import ConfigError
    from dapt.train.plan.preflight import hub_unreachable, load_model_config

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    assert hub_unreachable(timeout=1.0) == "http://127.0.0.1:9"
    with pytest.raises(
        ConfigError, match=r"model.name_or_path: 'dapt-test/not-a-model' is not in the local cache"
    ):
        load_model_config("dapt-test/not-a-model")
