"""Numerics of the train loop on CPU with real torch.distributed (gloo) processes.

These run ``train.loop.train_loop`` (the function Ray Train runs on each worker) on a ``TrainSpec`` in
2 ``torch.multiprocessing`` processes, several specs per process group so the suite pays the process
start-up once. The real Ray Train path is covered by tests/test_train_ray.py.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_docs
from store_fixtures import store_from_docs

from dapt.train.data import BlockStream, micro_batch_start
from dapt.train.flops import causal_context, flops_per_token, mfu, peak_flops
from dapt.train.loop import train_loop
from dapt.train.monitor import bits_per_byte, make_windows
from dapt.train.resume import list_checkpoints
from dapt.train.schedule import lr_factor, warmup_steps
from dapt.train.spec import TrainSpec

SEQ = 32


# ----------------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    return build_train_data(tmp_path_factory.mktemp("train_data"), tiny_model_dir)


def build_train_data(d: Path, tiny_model_dir: Path, max_doc_tokens: int | None = None) -> dict[str, Any]:
    """Packed blocks of real tokenised text and monitor windows, with the tiny model folder
    (``max_doc_tokens``: documents cut to that many tokens, so that blocks hold several)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = {
        k: [tok(t, add_special_tokens=False)["input_ids"] for t in make_docs(k, 60, seed=1)]
        for k in ("domain", "general")
    }
    if max_doc_tokens:
        ids = {k: [doc[:max_doc_tokens] for doc in docs] for k, docs in ids.items()}
    # A real token store in several shards (8 documents each): resumes start inside and across them.
    tokens = store_from_docs(d, {k: (k, v) for k, v in ids.items()}, SEQ + 1, eos_id=2, vocab_size=len(tok))
    arrays: dict[str, Any] = {}
    for kind in ("domain", "general"):
        texts = make_docs(kind, 6, seed=99)
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        w = make_windows(ids, texts, SEQ, 10_000, 2)
        arrays[f"{kind}_inputs"], arrays[f"{kind}_targets"] = w["inputs"], w["targets"]
        arrays[f"{kind}_bytes"] = np.int64(w["bytes"])
    np.savez(d / "monitor.npz", **arrays)
    return {"dir": d, "tokens": tokens, "monitor": d / "monitor.npz", "model": tiny_model_dir}


def make_spec(data: dict[str, Any], out: Path, **kw: Any) -> TrainSpec:
    spec: dict[str, Any] = {
        "data_path": str(data["tokens"]),
        "model_path": str(data["model"]),
        "tokenizer_path": str(data["model"]),
        "steps": 6,
        "micro_batch_size": 2,
        "grad_accum": 1,
        "seq_len": SEQ,
        "sharding": "zero3",
        "precision": "fp32",
        "lr": 3e-3,
        "min_lr_ratio": 0.1,
        "schedule": "cosine",
        "warmup_steps": 1,
        "decay_fraction": 0.2,
        "weight_decay": 0.1,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-8,
        "grad_clip": 1.0,
        "checkpoint_every": 1000,
        "keep_checkpoints": 2,
        "monitor_every": 3,
        "monitor_path": str(data["monitor"]),
        "log_every": 1,
        "checkpoint_dir": str(out / "ckpt"),
        "log_dir": str(out / "logs"),
        "export_dir": None,
        "fingerprint": "fp-test",
        "progress": False,
        "seed": 0,
        "cpu_threads": 1,  # tiny matmuls: more threads only add contention on a shared 2-core box
    }
    spec.update(kw)
    return TrainSpec(**spec)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, specs: list[TrainSpec]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for spec in specs:
            train_loop(spec)
    finally:
        dist.destroy_process_group()


def run_world(world: int, specs: list[TrainSpec]) -> list[dict[str, Any]]:
    """Run ``specs`` one after another in ``world`` gloo processes; return each run's rank-0 summary.

    If a process raises, ``mp.spawn`` terminates the others (which are blocked in a collective) and
    raises ``ProcessRaisedException``: the same fate as a Ray Train worker group after a failure.
    """
    import multiprocessing

    import torch.multiprocessing as mp

    # A forkserver that has already imported torch, transformers and the loop forks every worker:
    # the imports are paid once per test session instead of once per process.
    multiprocessing.set_forkserver_preload(
        [
            "torch",
            "torch.distributed.fsdp",
            "torch.distributed.checkpoint.state_dict",
            "torch.utils.tensorboard",
            "transformers.models.llama.modeling_llama",
            "dapt.train.loop",
            "test_train",
        ]
    )
    mp.start_processes(
        _worker, args=(world, _free_port(), specs), nprocs=world, join=True, start_method="forkserver"
    )
    return [json.loads((Path(s.log_dir) / "summary.json").read_text()) for s in specs]


def losses(spec: TrainSpec) -> list[float]:
    rows = [json.loads(x) for x in (Path(spec.log_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


# ----------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------


def test_schedules_rewarm_and_decay_to_min_lr() -> None:
    total, wu = 100, warmup_steps(100, 0.05)
    assert wu == 5
    assert 0 < lr_factor(0, total, wu) < lr_factor(4, total, wu) < 1.0
    for sched in ("cosine", "linear"):
        assert lr_factor(wu, total, wu, sched) == pytest.approx(1.0)
        assert lr_factor(total - 1, total, wu, sched, min_lr_ratio=0.1) == pytest.approx(0.1)
        vals = [lr_factor(s, total, wu, sched) for s in range(wu, total)]
        assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))
    assert lr_factor(50, total, wu, "constant") == 1.0
    assert lr_factor(70, total, wu, "wsd", decay_fraction=0.2) == 1.0
    assert lr_factor(90, total, wu, "wsd", 0.1, 0.2) == pytest.approx(1 - 0.9 * 11 / 20)
    assert lr_factor(99, total, wu, "wsd", 0.1, 0.2) == pytest.approx(0.1)


def test_block_stream_positions_partition_each_step() -> None:
    world, accum, mb = 2, 3, 2
    seen = sorted(
        micro_batch_start(5, a, r, world, accum, mb) + i
        for a in range(accum)
        for r in range(world)
        for i in range(mb)
    )
    assert seen == list(range(5 * 12, 6 * 12))
    # the same step with 1 worker and twice the accumulation reads the same blocks
    seen1 = sorted(micro_batch_start(5, a, 0, 1, 6, mb) + i for a in range(6) for i in range(mb))
    assert seen1 == seen


def test_block_stream_epochs(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.arange(10 * 5, dtype=np.uint32).reshape(10, 5))
    s = BlockStream(str(tmp_path / "t.npy"), seed=3)
    assert [s.index(p) for p in range(10)] == list(range(10))
    second = [s.index(p) for p in range(10, 20)]
    assert sorted(second) == list(range(10)) and second != list(range(10))
    assert s.get(12, 2).shape == (2, 5) and s.get(12, 2).dtype == torch.int64


def test_monitor_windows_predict_every_token_once() -> None:
    w = make_windows([[5, 6, 7, 8, 9], [3]], ["abcde", "é"], seq_len=2, max_tokens=100, sep_id=2)
    tg = w["targets"][w["targets"] != -100].tolist()
    assert tg == [5, 6, 7, 8, 9, 3]
    assert w["inputs"][0].tolist() == [2, 5] and w["bytes"] == 5 + 2
    assert bits_per_byte(7 * math.log(2), 7) == pytest.approx(1.0)


def test_flops_and_mfu() -> None:
    assert flops_per_token(1000, 2, 8, 16, n_embedding=200) == 6 * 800 + 12 * 2 * 8 * 16
    # A tied output projection is still a matmul: counted, though the parameter count holds it once.
    assert flops_per_token(1000, 2, 8, 16, n_embedding=200, tied_output=True) == 6 * 1000 + 12 * 2 * 8 * 16
    # Causal attention: query i attends to i + 1 keys, (S + 1) / 2 on average.
    assert causal_context(4) == sum(range(1, 5)) / 4
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops(None, "bf16") is None and mfu(1e3, 1e9, None) is None
    assert mfu(1000, 1e9, 1e13, 2) == pytest.approx(0.05)


# ----------------------------------------------------------------------------------------------------
# single process: resume and export
# ----------------------------------------------------------------------------------------------------


def test_single_process_trains_resumes_identically_and_exports(train_data, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    full = make_spec(train_data, tmp_path / "full", steps=8, grad_accum=2, checkpoint_every=4)
    s_full = train_loop(full)
    ref = losses(full)
    assert len(ref) == 8 and ref[-1] < ref[0]

    part = make_spec(train_data, tmp_path / "part", steps=8, grad_accum=2, checkpoint_every=3)
    with pytest.raises(RuntimeError, match="injected failure"):
        train_loop(part.replace(fail_at_step=5))
    assert [s for s, _ in list_checkpoints(Path(part.checkpoint_dir), "fp-test")] == [3]
    export_dir = tmp_path / "export"
    s_part = train_loop(part.replace(export_dir=str(export_dir)))
    assert s_part["resumed_from_step"] == 3
    got = losses(part)
    assert len(got) == 8  # rows of the crashed attempt after step 3 were dropped
    assert got == ref  # bit-identical: same data position, schedule, optimizer state and RNG
    assert s_part["final_monitor"]["domain_loss"] == s_full["final_monitor"]["domain_loss"]

    # export round trip: from_pretrained gives the loss the trained model gave on the monitor windows
    m = AutoModelForCausalLM.from_pretrained(export_dir)
    w = np.load(train_data["monitor"])
    x, y = torch.from_numpy(w["domain_inputs"]), torch.from_numpy(w["domain_targets"])
    with torch.no_grad():
        logits = m(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100
    )
    assert float(loss) == pytest.approx(s_part["final_monitor"]["domain_loss"], abs=1e-5)
    assert (export_dir / "tokenizer_config.json").exists() and (
        export_dir / "generation_config.json"
    ).exists()
    assert not (export_dir / "README.md").exists()  # the model card is the report's; publish ships it
    assert s_part["base_monitor"]["general_bpb"] > 0


# ----------------------------------------------------------------------------------------------------
# 2 gloo processes: every sharding matches 1 worker; 1/N params; bf16; sharded resume
# ----------------------------------------------------------------------------------------------------


def test_two_workers_match_one_worker_shard_and_resume(train_data, tmp_path: Path) -> None:
    ref_spec = make_spec(train_data, tmp_path / "one", grad_accum=2)
    train_loop(ref_spec)
    ref = losses(ref_spec)

    specs = {
        mode: make_spec(train_data, tmp_path / mode, sharding=mode, grad_accum=1, checkpoint_every=2)
        for mode in ("zero3", "zero2", "ddp", "hybrid")
    }
    for mode in ("zero3", "zero2"):  # the same global batch as 2 micro-batches of 1 per rank
        specs[f"{mode}_accum"] = make_spec(
            train_data, tmp_path / f"{mode}_accum", sharding=mode, micro_batch_size=1, grad_accum=2
        )
    specs["bf16"] = make_spec(train_data, tmp_path / "bf16", sharding="zero3", precision="bf16")
    sums = dict(zip(specs, run_world(2, list(specs.values())), strict=True))

    for mode in ("zero3", "zero2", "ddp", "hybrid", "zero3_accum", "zero2_accum"):
        got = losses(specs[mode])
        assert len(got) == len(ref)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=mode)
        assert sums[mode]["num_workers"] == 2
    total = sums["zero3"]["params_total"]
    assert sums["zero3"]["params_local_per_rank"] == [total // 2, total // 2]  # every dim 0 is even
    assert sums["ddp"]["params_local_per_rank"] == [total, total]
    bf = losses(specs["bf16"])
    assert all(math.isfinite(v) for v in bf) and bf[-1] < bf[0]
    np.testing.assert_allclose(bf, ref, atol=0.05)  # bf16 compute, fp32 master weights: close, not equal
    assert sums["zero3"]["final_monitor"]["domain_bpb"] == pytest.approx(
        sums["ddp"]["final_monitor"]["domain_bpb"], rel=1e-4
    )

    # kill rank 1 at step 3 of the same zero3 run: the sharded DCP checkpoint of step 2 resumes it exactly
    import torch.multiprocessing as mp

    crash = make_spec(train_data, tmp_path / "crash", sharding="zero3", checkpoint_every=2, fail_at_step=3)
    with pytest.raises(mp.ProcessRaisedException, match="injected failure"):
        run_world(2, [crash])
    assert [s for s, _ in list_checkpoints(Path(crash.checkpoint_dir), "fp-test")] == [2]
    resume = crash.replace(fail_at_step=None, export_dir=str(tmp_path / "export"))
    (s_resume,) = run_world(2, [resume])
    assert s_resume["resumed_from_step"] == 2
    assert losses(resume) == losses(specs["zero3"])
    assert (tmp_path / "export" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_workers_fp16_activation_checkpointing_and_tied_embeddings(train_data, tmp_path: Path) -> None:
    """fp16 with loss scaling (ShardedGradScaler), activation checkpointing (same losses as without),
    and a model with tied input/output embeddings, all under zero3."""
    from conftest import make_tiny_llama

    tied = tmp_path / "tied"
    m = make_tiny_llama(300, tie=True)
    m.save_pretrained(tied)
    ref = make_spec(train_data, tmp_path / "ref", sharding="zero3")
    ac = make_spec(train_data, tmp_path / "ac", sharding="zero3", activation_checkpointing=True)
    fp16 = make_spec(train_data, tmp_path / "fp16", sharding="zero3", precision="fp16")
    tie = make_spec(
        train_data, tmp_path / "tie", sharding="zero3", model_path=str(tied), export_dir=str(tmp_path / "tx")
    )
    tie1 = make_spec(train_data, tmp_path / "tie1", model_path=str(tied), grad_accum=2)
    train_loop(tie1)
    run_world(2, [ref, ac, fp16, tie])
    np.testing.assert_allclose(losses(ac), losses(ref), atol=1e-5)
    f16 = losses(fp16)
    assert all(math.isfinite(v) for v in f16)
    np.testing.assert_allclose(f16, losses(ref), atol=0.05)
    np.testing.assert_allclose(losses(tie), losses(tie1), atol=1e-4)
    from transformers import AutoModelForCausalLM

    exp = AutoModelForCausalLM.from_pretrained(tmp_path / "tx")
    assert exp.lm_head.weight.data_ptr() == exp.model.embed_tokens.weight.data_ptr()


def test_train_config_validation_and_accumulation() -> None:
    from pydantic import ValidationError

    from dapt.train.config import TrainConfig
    from dapt.train.stage import plan_steps

    tc = TrainConfig(micro_batch_size=2, num_workers=2, global_batch_tokens=1024)
    assert tc.grad_accum(128) == 2
    assert TrainConfig(micro_batch_size=4, global_batch_tokens=1000).grad_accum(100) == 3  # rounded up
    g = plan_steps(tc, n_blocks=50, seq_len=128)
    assert g["tokens_per_step"] == 1024 and g["steps"] == 7  # ceil(50 * 128 / 1024): one pass
    assert plan_steps(tc.model_copy(update={"max_steps": 3}), 50, 128)["steps"] == 3
    with pytest.raises(ValidationError):
        TrainConfig(sharding="zero1")
    with pytest.raises(ValidationError):
        TrainConfig(learning_rate=1e-4)  # unknown keys are errors, not no-ops
    with pytest.raises(ValidationError):
        TrainConfig(num_workers=4, hybrid_shard_size=3)
    with pytest.raises(ValidationError):
        TrainConfig(seq_len=128)  # the block length is the mix stage's (mix.seq_len)


def test_which_train_and_plan_knobs_are_fingerprinted() -> None:
    from dapt.pipeline.knobs import continuing_fields, fingerprint_view, ignored_fields, state_view
    from dapt.train.config import TrainConfig
    from dapt.train.plan.config import PlanConfig

    assert set(ignored_fields(TrainConfig)) == {
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "max_failures",
        "cpus_per_worker",
        "activation_checkpointing_every",  # speed and memory options: same math
        "loss_chunk_tokens",
        "compile",
    }
    view = fingerprint_view(TrainConfig())
    assert {"lr", "monitor_every", "monitor_max_tokens", "max_general_regression", "seed"} <= set(view)
    base = fingerprint_view(TrainConfig())
    assert fingerprint_view(TrainConfig(log_every=1, checkpoint_every=5, keep_checkpoints=9)) == base
    assert fingerprint_view(TrainConfig(lr=1e-3)) != base
    assert fingerprint_view(TrainConfig(monitor_every=7)) != base  # early stopping is decided there
    assert fingerprint_view(PlanConfig(gpu="A100-80GB", mfu=0.3, price_per_gpu_hour=2.0)) == {}

    # budget, schedule shape and early-stop threshold rerun the stage but continue its checkpoints
    assert set(continuing_fields(TrainConfig)) == {
        "tokens",
        "max_steps",
        "schedule",
        "warmup_fraction",
        "warmup_steps_min",
        "decay_fraction",
        "min_lr_ratio",
        "max_general_regression",
    }
    longer = TrainConfig(max_steps=30, schedule="wsd", max_general_regression=0.2)
    assert fingerprint_view(longer) != fingerprint_view(TrainConfig(max_steps=20))
    assert state_view(longer) == state_view(TrainConfig(max_steps=20))
    assert state_view(TrainConfig(lr=1e-3)) != state_view(TrainConfig())
    assert state_view(TrainConfig(seed=3)) != state_view(TrainConfig())


def test_train_spec_is_typed_frozen_and_strict(tmp_path: Path) -> None:
    import dataclasses
    import pickle

    spec = TrainSpec(data_path="d.npy", seq_len=8, steps=2, checkpoint_dir="c", log_dir="l", model_path="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]
    assert spec.replace(lr=1.0).lr == 1.0 and spec.lr == 5e-5
    assert pickle.loads(pickle.dumps(spec)) == spec  # what Ray Train ships to every worker
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    assert set(spec.hyperparameters()) >= {"lr", "seq_len", "grad_accum", "seed"}
    with pytest.raises(TypeError, match="unknown field"):
        TrainSpec.from_dict({**spec.to_dict(), "sequence_length": 8})
    with pytest.raises(ValueError, match="model_path or model_config"):
        TrainSpec(data_path="d.npy", seq_len=8, steps=2, checkpoint_dir="c", log_dir="l")


def test_base_model_from_the_tokenizer_manifest(tmp_path: Path) -> None:
    """Without ``outputs.model`` train builds the model from the manifest's ``base_model``, never from
    the run config's ``model`` section (not one of its keys)."""
    from dapt.pipeline.errors import InputError
    from dapt.train.stage import _base_model

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    local = _base_model(tmp_path, {"outputs": {"model": "model"}}, {})
    assert local["model_path"] == str((tmp_path / "model").resolve())
    assert local["tokenizer_path"] == local["model_path"]  # the folder carries its tokenizer

    hub = _base_model(
        tmp_path,
        {"outputs": {}, "base_model": {"name_or_path": "org/model", "revision": "abc", "from_config": None}},
        {},
    )
    assert hub["model_path"] == "org/model" and hub["model_revision"] == "abc" and hub["model_config"] is None
    assert hub["tokenizer_path"] == "org/model"

    fc = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 64, "num_attention_heads": 4}
    fc |= {"num_key_value_heads": None, "extra": {"rope_theta": 5e5}, "seed": 7}
    built = _base_model(
        tmp_path,
        {"outputs": {"tokenizer": "tok"}, "base_model": {"name_or_path": None, "from_config": fc}},
        {"vocab_size": 300},
    )
    assert built["model_path"] is None and built["init_seed"] == 7
    mc = built["model_config"]
    assert mc["vocab_size"] == 300 and mc["num_key_value_heads"] == 4 and mc["rope_theta"] == 5e5
    assert "seed" not in mc and "extra" not in mc
    assert built["tokenizer_path"] == "tok"  # a relative name that is no file there: kept as a hub id

    with pytest.raises(InputError, match="base_model"):
        _base_model(tmp_path, {"outputs": {}}, {})
