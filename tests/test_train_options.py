"""The training-speed options (issue 14) change speed and memory, not what is learned: the chunked loss
equals the full-logits loss, document masking isolates documents, selective activation checkpointing
and torch.compile give eager's losses, every option resumes exactly, and the GPU-only ones are refused
on CPU with one line. Real models, real gloo processes, real inductor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama
from test_train import build_train_data, losses, make_spec, run_world

from dapt.train.batches import StepBatches, document_positions
from dapt.train.data import BlockStream
from dapt.train.flops import causal_context
from dapt.train.loss import causal_lm_loss, chunked_head, install_chunked_head, linear_cross_entropy
from dapt.train.monitor import IGNORE
from dapt.train.setup import apply_options, check_compile_backend, checkpointed_blocks, decoder_layers

VOCAB = 300


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    """Documents of at most 20 tokens: every 33-token block holds a document start or two."""
    return build_train_data(tmp_path_factory.mktemp("train_data"), tiny_model_dir, max_doc_tokens=20)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_equals_the_full_logits_loss_and_gradients(tie: bool) -> None:
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (3, 20))
    y = torch.randint(0, VOCAB, (3, 20))
    y[0, :5] = IGNORE  # ignored targets count neither in the loss nor in the mean
    y[2, -3:] = IGNORE

    full = make_tiny_llama(VOCAB, tie=tie)
    ref = causal_lm_loss(full, x, y)
    ref.backward()
    want = _grads(full)

    model = make_tiny_llama(VOCAB, tie=tie)
    head = install_chunked_head(model, chunk_tokens=7)  # chunks that do not divide the 60 tokens
    assert head is not None and chunked_head(model) is head
    got = causal_lm_loss(model, x, y, head=head)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    grads = _grads(model)
    assert grads.keys() == want.keys()
    for name, g in want.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # without targets the head is the plain projection: generation and export see logits
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, full(input_ids=x).logits, rtol=0, atol=1e-5)


def test_linear_cross_entropy_matches_torch_in_bf16() -> None:
    torch.manual_seed(1)
    h = torch.randn(50, 32, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(VOCAB, 32, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, VOCAB, (50,))
    got = linear_cross_entropy(h, w, None, t, chunk=16)
    ref = F.cross_entropy((h @ w.t()).float(), t, reduction="sum")
    assert got.item() == pytest.approx(ref.item(), rel=1e-3)
    got.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref.backward()
    torch.testing.assert_close(gh.float(), h.grad.float(), rtol=0.05, atol=0.02)
    torch.testing.assert_close(gw.float(), w.grad.float(), rtol=0.05, atol=0.05)


def test_document_positions_restart_at_each_start() -> None:
    starts = np.zeros((2, 8), dtype=bool)
    starts[0, [0, 3, 4]] = True
    starts[1, [5]] = True  # the row opens inside a document that began in an earlier block
    assert document_positions(starts).tolist() == [[0, 1, 2, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1, 2]]


def _token_losses(model: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    kw = {"position_ids": positions} if positions is not None else {}
    with torch.no_grad():  # no KV cache, as in training (with one, transformers ignores the documents)
        logits = model(input_ids=x, use_cache=False, **kw).logits
    return F.cross_entropy(logits[0, :-1].float(), x[0, 1:], reduction="none")


@pytest.mark.parametrize("first_len", [9, 13])
def test_with_document_masking_a_token_does_not_see_the_previous_document(first_len: int) -> None:
    """Block = [doc A | doc B]; replace A by other tokens (same length, and longer): B's token losses do
    not change with document masking, and do change with plain causal attention."""
    model = make_tiny_llama(VOCAB).eval()
    g = torch.Generator().manual_seed(3)
    a = torch.randint(3, VOCAB, (9,), generator=g)
    a_other = torch.randint(3, VOCAB, (first_len,), generator=g)
    b = torch.randint(3, VOCAB, (12,), generator=g)

    def block(first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([first, b])[None]
        starts = np.zeros((1, x.shape[1]), dtype=bool)
        starts[0, [0, len(first)]] = True
        return x, torch.from_numpy(document_positions(starts))

    (x1, p1), (x2, p2) = block(a), block(a_other)
    # B's predictions: the targets of B's tokens after its first (the first is predicted from A's end)
    b1 = _token_losses(model, x1, p1)[len(a) :]
    b2 = _token_losses(model, x2, p2)[len(a_other) :]
    torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-5)
    c1 = _token_losses(model, x1, None)[len(a) :]
    c2 = _token_losses(model, x2, None)[len(a_other) :]
    assert (c1 - c2).abs().max() > 1e-3  # the check can fail: causal attention does see A


def _positions(batches: StepBatches, step: int) -> list[torch.Tensor]:
    return [mb.position_ids for mb in batches.get(step)]


def test_step_batches_measure_the_attention_context(train_data) -> None:
    stream = BlockStream(str(train_data["tokens"]), seed=0)
    causal = StepBatches(stream, 2, 1, 0, 1, torch.device("cpu"))
    doc = StepBatches(stream, 2, 1, 0, 1, torch.device("cpu"), document_masking=True)
    try:
        (mb,) = doc.get(0)
        (plain,) = causal.get(0)
        assert torch.equal(mb.x, plain.x) and torch.equal(mb.y, plain.y) and plain.position_ids is None
        assert mb.position_ids.shape == mb.x.shape
        restarts = sum(int((p[:, 1:] - p[:, :-1] != 1).sum()) for s in range(8) for p in _positions(doc, s))
        assert restarts > 0  # documents restart inside blocks
        assert causal.mean_context(mb.x.shape[1]) == causal_context(mb.x.shape[1])
        assert 1 <= doc.mean_context(mb.x.shape[1]) < causal_context(mb.x.shape[1])
        # the prefetched next step is the step read directly
        ahead = doc.get(1)
        fresh = StepBatches(stream, 2, 1, 0, 1, torch.device("cpu"), document_masking=True)
        try:
            assert all(torch.equal(p.x, q.x) for p, q in zip(ahead, fresh.get(1), strict=True))
        finally:
            fresh.close()
    finally:
        causal.close()
        doc.close()


def test_selective_checkpointing_marks_every_kth_block() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg)
    spec = make_spec(
        {"tokens": "t", "model": "m", "monitor": "m"},
        Path("out"),
        activation_checkpointing=True,
        activation_checkpointing_every=2,
    )
    apply_options(model, spec, torch.device("cpu"))
    assert [b.gradient_checkpointing for b in decoder_layers(model)] == [True, False, True, False, True]
    assert checkpointed_blocks(5, 2) == 3 and checkpointed_blocks(5, 1) == 5
    assert chunked_head(model) is not None  # the default loss_chunk_tokens installs the chunked head


def test_every_option_trains_like_the_default_and_resumes_exactly(train_data, tmp_path: Path) -> None:
    """2 gloo workers, zero3: full logits, the chunked loss and selective checkpointing give the same
    losses; document masking trains (other losses: other attention); each, killed at step 3 and rerun,
    continues from its step-2 checkpoint with exactly the uninterrupted losses."""
    import torch.multiprocessing as mp

    options = {
        "full_logits": {"loss_chunk_tokens": 0},
        "chunked": {"loss_chunk_tokens": 16},
        "selective_ac": {"activation_checkpointing": True, "activation_checkpointing_every": 2},
        "document": {"attention": "document"},
    }
    specs = {
        k: make_spec(train_data, tmp_path / k, sharding="zero3", checkpoint_every=2, **kw)
        for k, kw in options.items()
    }
    sums = dict(zip(specs, run_world(2, list(specs.values())), strict=True))
    ref = losses(specs["full_logits"])
    for k in ("chunked", "selective_ac"):
        np.testing.assert_allclose(losses(specs[k]), ref, rtol=0, atol=1e-5, err_msg=k)
    doc = losses(specs["document"])
    assert all(np.isfinite(doc)) and doc[-1] < doc[0] and not np.allclose(doc, ref, atol=1e-4)
    context = sums["document"]["attention_context"]
    assert 1 <= context < causal_context(train_data_seq(train_data))
    assert sums["full_logits"]["attention_context"] == causal_context(train_data_seq(train_data))
    assert sums["document"]["flops_per_token"] < sums["full_logits"]["flops_per_token"]

    for k, kw in options.items():
        crash = make_spec(
            train_data, tmp_path / f"crash-{k}", sharding="zero3", checkpoint_every=2, fail_at_step=3, **kw
        )
        with pytest.raises(mp.ProcessRaisedException, match="injected failure"):
            run_world(2, [crash])
        (resumed,) = run_world(2, [crash.replace(fail_at_step=None)])
        assert resumed["resumed_from_step"] == 2, k
        assert losses(crash.replace(fail_at_step=None)) == losses(specs[k]), k


def train_data_seq(data) -> int:
    return int(make_spec(data, Path("x")).seq_len)


@pytest.mark.slow
@pytest.mark.skipif(
    not shutil.which("g++") and not shutil.which("c++"), reason="inductor needs a C++ compiler"
)
def test_compiled_blocks_match_eager_and_resume(train_data, tmp_path: Path) -> None:
    """``train.compile``: each decoder block compiled by inductor (real C++ kernels on CPU) inside
    FSDP2 on 2 gloo ranks: losses within 1e-4 of eager; killed at step 3, the rerun continues from the
    step-2 checkpoint with exactly the uninterrupted compiled losses. (Slow: compilation in every
    process group, about a minute in all.)"""
    import torch.multiprocessing as mp

    eager = make_spec(train_data, tmp_path / "eager", sharding="zero3", checkpoint_every=2)
    compiled = make_spec(
        train_data, tmp_path / "compiled", sharding="zero3", checkpoint_every=2, compile=True
    )
    run_world(2, [eager, compiled])
    np.testing.assert_allclose(losses(compiled), losses(eager), rtol=0, atol=1e-4)
    crash = make_spec(
        train_data, tmp_path / "crash", sharding="zero3", checkpoint_every=2, compile=True, fail_at_step=3
    )
    with pytest.raises(mp.ProcessRaisedException, match="injected failure"):
        run_world(2, [crash])
    (resumed,) = run_world(2, [crash.replace(fail_at_step=None)])
    assert resumed["resumed_from_step"] == 2
    assert losses(crash.replace(fail_at_step=None)) == losses(compiled)


def test_compile_without_a_compiler_and_gpu_only_options_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no C++ compiler on it
    with pytest.raises(ValueError, match=r"train.compile: .*C\+\+ compiler"):
        check_compile_backend(torch.device("cpu"))

    from dapt.pipeline.errors import ConfigError
    from dapt.train.config import TrainConfig
    from dapt.train.prelaunch import refuse_gpu_only

    with pytest.raises(ConfigError, match="train.float8: this run computes on CPUs"):
        refuse_gpu_only(TrainConfig(float8=True, use_gpu=False), False)
    with pytest.raises(ConfigError, match="train.cpu_offload"):
        refuse_gpu_only(TrainConfig(cpu_offload=True, num_workers=2), False)
    refuse_gpu_only(TrainConfig(float8=True), True)  # a GPU run gets as far as the worker's own check

    from dapt.train.setup import check_float8

    with pytest.raises(ValueError, match="train.float8 needs CUDA GPUs"):
        check_float8(torch.device("cpu"))


def test_document_masking_on_old_packed_blocks_is_refused_before_any_worker(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A v1 ``tokens.npy`` (mix output before the token store) has no document starts: one line naming
    the option and the file, nothing written."""
    import json

    from train_fixtures import SEQ, make_run

    from dapt.pipeline.config import load_config
    from dapt.pipeline.errors import ConfigError
    from dapt.pipeline.stages import run_stage

    path = make_run(tmp_path, tiny_model_dir, {"micro_batch_size": 2, "global_batch_tokens": 64})
    cfg = load_config(path, ["train.attention=document"])
    mix = cfg.run_path / "mix"
    np.save(mix / "tokens.npy", np.full((8, SEQ + 1), 5, dtype=np.uint16))
    man = json.loads((mix / "manifest.json").read_text())
    man["outputs"]["train_tokens"] = "tokens.npy"
    (mix / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ConfigError, match=r"train.attention: document .*tokens.npy.*rerun `dapt mix`"):
        run_stage(cfg, "train", echo=None, extra={"preflight": False})
    assert not (cfg.run_path / "train").exists()
