"""The planner for masked LMs (BERT family) and encoder-decoders (T5 family).

* Parameter counts and FSDP2 block sizes from the config equal the real models' (built on the meta
  device with the objective's Auto class, as the train loop builds them).
* Activations: the bytes autograd saves in one training forward of tiny models, measured on CPU
  (``saved_tensors_hooks``), against the per-layer ledger of ``encoder_memory.py``, with and without
  (selective) checkpointing, fp32, 16-bit weights and autocast, eager and SDPA attention, with dropout.
* FLOPs: BERT is 6·N + attention over every key; T5 with no decoder layers is its encoder plus the
  head; with equal lengths its dense part is 6·N; the attention terms are the stated formula.
* The entry points (make_plan, preflight, ``dapt plan``) pick the objective as the train stage does.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import yaml

from dapt.train.plan import encoder_memory, encoders, memory

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dapt.train.plan.measure import bert_config, objective_activations, t5_config  # noqa: E402

PLAN_DIR = Path(__file__).resolve().parents[1] / "train" / "plan"
TOL = 0.03  # as tests/test_plan_measure.py


def _configs() -> dict[str, object]:
    t = transformers
    small = dict(vocab_size=300, hidden_size=64, num_attention_heads=4, intermediate_size=96)
    mb = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1)
    t5 = dict(vocab_size=300, d_model=64, d_kv=8, d_ff=96, num_heads=4, num_layers=2)
    return {
        "bert": t.BertConfig(**small, num_hidden_layers=2, max_position_embeddings=70),
        "bert-untied": t.BertConfig(**small, num_hidden_layers=2, tie_word_embeddings=False),
        "roberta": t.RobertaConfig(
            **small, num_hidden_layers=1, max_position_embeddings=70, type_vocab_size=1
        ),
        "xlm-roberta": t.XLMRobertaConfig(**small, num_hidden_layers=3, max_position_embeddings=70),
        "distilbert": t.DistilBertConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, hidden_dim=96),
        "modernbert": t.ModernBertConfig(**small, **mb, num_hidden_layers=4),
        "t5": t.T5Config(**t5, num_decoder_layers=3),
        "t5-no-decoder": t.T5Config(**t5, num_decoder_layers=0),
        "t5-v1.1": t.T5Config(**t5, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        "mt5": t.MT5Config(**t5, num_decoder_layers=1, tie_word_embeddings=False),
    }


CONFIGS = _configs()


def _objective(config) -> str:
    from dapt.train.objectives import infer_objective

    return infer_objective(config)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_and_blocks_equal_the_model(name):
    from dapt.train.objectives import auto_class

    config = CONFIGS[name]
    objective = _objective(config)
    assert objective == ("span" if name.startswith(("t5", "mt5")) else "mlm")
    with torch.device("meta"):
        model = auto_class(objective).from_config(config)
    spec = encoders.describe(config.to_dict(), objective)
    assert spec["approximate"] is (name == "modernbert")
    shapes = encoders.param_shapes(spec)
    assert sum(encoders.numel(s) for s in shapes) == sum(p.numel() for p in model.parameters())
    assert sorted(shapes) == sorted(tuple(p.shape) for p in model.parameters())
    if name != "distilbert":  # train/setup.py's wrap units (it has no entry for DistilBERT's layers)
        from dapt.train.setup import decoder_layers

        real = [sum(p.numel() for p in b.parameters()) for b in decoder_layers(model)]
        assert encoders.block_numels(spec) == real


def test_known_sizes():
    bert_base = encoders.describe(transformers.BertConfig().to_dict(), "mlm")
    assert sum(encoders.numel(s) for s in encoders.param_shapes(bert_base)) == 109_514_298
    t5_base = dict(model_type="t5", vocab_size=32128, d_model=768, d_ff=3072, num_layers=12, num_heads=12)
    spec = encoders.describe(t5_base)
    assert sum(encoders.numel(s) for s in encoders.param_shapes(spec)) == 222_903_552


# --- activations: measured against the ledger ---------------------------------------------------------

BERT = dict(layers=2, hidden=128, heads=4, intermediate=512, vocab=1000, max_position_embeddings=128)
T5 = dict(layers=2, decoder_layers=2, hidden=128, heads=4, d_kv=16, d_ff=512, vocab=1000)
SEQ, BATCH, TARGET = 64, 2, 16

# (precision, checkpointing, attention, dropout). CPU's SDPA has no fused kernel with dropout on the
# probabilities, so SDPA cases drop out the hidden states only. Autocast cases run without dropout:
# on CPU a dropout mask takes its input's dtype, fp32 or 16-bit by site (CUDA keeps 1-byte masks).
BERT_CASES = [
    ("fp32", False, "sdpa", 0.1),
    ("fp32", False, "eager", 0.1),
    ("bf16-pure", False, "sdpa", 0.0),
    ("bf16-pure", False, "eager", 0.1),
    ("bf16", False, "sdpa", 0.0),
    ("bf16", False, "eager", 0.0),
    ("fp32", True, "sdpa", 0.1),
    ("bf16-pure", True, "eager", 0.1),
    ("bf16", True, "sdpa", 0.0),
]
T5_CASES = [
    ("fp32", False, 0.1),
    ("bf16-pure", False, 0.1),
    ("bf16", False, 0.0),
    ("fp32", True, 0.1),
    ("bf16-pure", True, 0.0),
    ("bf16", True, 0.0),
]


def _check(r: dict) -> None:
    assert r["predicted"] == pytest.approx(r["measured"], rel=TOL), r
    # the leftovers are token ids and labels (and CPU's 16-bit LayerNorm statistics): a few kB
    assert abs(r["predicted"] - r["measured"]) < 4096, r


@pytest.mark.parametrize("precision,checkpointing,attn,dropout", BERT_CASES)
def test_bert_saved_activations_match(precision, checkpointing, attn, dropout):
    attention_dropout = dropout if attn == "eager" else 0.0
    cfg = bert_config(**BERT, hidden_dropout=dropout, attention_dropout=attention_dropout)
    _check(objective_activations(cfg, "mlm", SEQ, BATCH, precision, checkpointing, attn=attn))


@pytest.mark.parametrize("precision,checkpointing,dropout", T5_CASES)
def test_t5_saved_activations_match(precision, checkpointing, dropout):
    # eager: on CPU, SDPA with T5's position bias (a mask that needs a gradient) runs the math path
    # for self-attention and the fused kernel for cross-attention; on CUDA both are fused
    cfg = t5_config(**T5, dropout=dropout)
    _check(
        objective_activations(cfg, "span", SEQ, BATCH, precision, checkpointing, 1, "eager", (SEQ, TARGET))
    )


@pytest.mark.parametrize(
    "kind,kw",
    [
        ("bert", dict(precision="fp32", every=2, layers=3, hidden_dropout=0.1)),
        ("bert", dict(precision="bf16", every=2, layers=4, hidden_dropout=0.0)),
        ("t5", dict(precision="fp32", every=2, layers=3, decoder_layers=2, dropout=0.1)),
        ("t5", dict(precision="bf16", every=3, layers=2, decoder_layers=3, dropout=0.0)),
    ],
)
def test_selective_checkpointing_matches(kind, kw):
    every, precision = kw.pop("every"), kw.pop("precision")
    if kind == "bert":
        cfg = bert_config(**{**BERT, **kw}, attention_dropout=0.0)
        r = objective_activations(cfg, "mlm", SEQ, BATCH, precision, True, every)
    else:
        cfg = t5_config(**{**T5, **kw})
        r = objective_activations(cfg, "span", SEQ, BATCH, precision, True, every, "eager", (SEQ, TARGET))
    _check(r)


@pytest.mark.parametrize(
    "kw",
    [
        dict(gated=True, dropout=0.1, precision="bf16-pure", checkpointing=False),
        dict(gated=True, dropout=0.0, precision="bf16", checkpointing=False),
        dict(decoder_layers=0, dropout=0.1, precision="fp32", checkpointing=False),
        dict(decoder_layers=0, dropout=0.0, precision="bf16", checkpointing=True),
    ],
)
def test_t5_variants_match(kw):
    precision, ckpt = kw.pop("precision"), kw.pop("checkpointing")
    cfg = t5_config(**{**T5, **kw})
    _check(objective_activations(cfg, "span", SEQ, BATCH, precision, ckpt, 1, "eager", (SEQ, TARGET)))


def test_checkpointing_and_fused_attention_shrink_activations():
    spec = encoders.describe(transformers.BertConfig().to_dict(), "mlm")
    full = encoder_memory.encoder_activation_bytes(spec, 512, 8)["total"]
    ck = encoder_memory.encoder_activation_bytes(spec, 512, 8, checkpointing=True)["total"]
    eager = encoder_memory.encoder_activation_bytes(spec, 512, 8, flash_attention=False)["total"]
    assert ck < full / 4 and eager > full
    t5 = encoders.describe(dict(model_type="t5", d_model=768, d_ff=3072, num_layers=12, num_heads=12))
    b1 = encoder_memory.t5_activation_bytes(t5, (512, 114), 1)["total"]
    b2 = encoder_memory.t5_activation_bytes(t5, (512, 114), 2)["total"]
    # the position-bias copies of the fused kernel do not grow with the micro-batch
    shared = 2 * 12 * (12 * 512**2 + 12 * 114**2 + 114 * 512) + 8 * (512**2 + 114**2)
    assert b2 - b1 == pytest.approx(b1 - shared)


# --- FLOPs -----------------------------------------------------------------------------------------------


def _n(spec) -> int:
    return sum(encoders.numel(s) for s in encoders.param_shapes(spec))


def test_bert_flops_are_6n_plus_attention_over_every_key():
    from dapt.train.flops import flops_per_token as loop_flops

    spec = encoders.describe(CONFIGS["bert"].to_dict(), "mlm")
    h, v, s = spec["hidden"], spec["vocab"], 512
    fl = encoders.flops_per_token(spec, s)
    lookups = v * h + spec["positions"] * h + spec["type_vocab"] * h
    assert fl["dense"] == 6 * (_n(spec) - lookups + v * h)  # the tied decoder is a matmul over V·h
    assert fl["attention"] == 12 * spec["layers"] * h * s
    # the train loop's MFU numerator counts position and token-type embeddings as matmuls
    loop = loop_flops(_n(spec), spec["layers"], h, s, n_embedding=v * h, tied_output=True)
    assert loop - fl["total"] == 6 * (spec["positions"] + spec["type_vocab"]) * h


def test_t5_flops_degenerate_and_add_up():
    spec = encoders.describe(CONFIGS["t5"].to_dict(), "span")  # 2 encoder + 3 decoder layers, tied
    h, v, i = spec["hidden"], spec["vocab"], spec["inner"]
    le, ld = spec["layers"], spec["decoder_layers"]
    rel = spec["buckets"] * spec["heads"]  # each stack's relative position bias: a lookup
    blocks = encoders.block_numels(spec)
    enc = sum(blocks[:le]) - rel + h  # the encoder's matmul parameters and its final norm
    dec = sum(blocks[le:]) - rel + h
    cross_kv = ld * 2 * i * h  # cross-attention K and V: applied to the encoder's tokens
    # equal lengths: every matmul parameter meets every token once, so dense = 6·N (tied head: + V·h)
    fl = encoders.flops_per_token(spec, 100, (100, 100))
    assert fl["dense"] == pytest.approx(6 * (_n(spec) - encoders.lookup_numel(spec) + v * h))
    assert fl["attention"] == pytest.approx(12 * i * (le + 2 * ld) * 100)
    # the corrupted lengths, per data token of a longer packed block
    se, sd, block = 460, 104, 512
    fl = encoders.flops_per_token(spec, se, (se, sd), block)
    want = 6 * ((enc + cross_kv) * se + (dec - cross_kv + v * h) * sd)
    assert fl["dense"] == pytest.approx(want / block)
    assert fl["attention"] == pytest.approx(12 * i * (le * se * se + ld * sd * sd + ld * sd * se) / block)
    # no decoder layers: the encoder, plus the decoder's final norm and the head over the targets
    spec0 = encoders.describe(CONFIGS["t5-no-decoder"].to_dict(), "span")
    fl0 = encoders.flops_per_token(spec0, se, (se, sd), block)
    assert fl0["dense"] == pytest.approx(6 * (enc * se + (h + v * h) * sd) / block)
    assert fl0["attention"] == pytest.approx(12 * i * le * se * se / block)
    assert fl0["total"] < fl["total"]


# --- entry points ----------------------------------------------------------------------------------------


def test_make_plan_chooses_the_objective_like_the_train_stage():
    from dapt.train.plan import gpus
    from dapt.train.plan.plan import format_plan, make_plan
    from dapt.train.plan.preflight import arch_from_model_config, exact_param_shapes, span_geometry

    for name, objective in (("bert", "mlm"), ("t5", "span")):
        config = CONFIGS[name]
        for mc in (config, config.to_dict()):  # a PretrainedConfig or a config.json dict
            arch = arch_from_model_config(mc, "auto")
            assert arch["objective"] == objective
        arch["param_shapes"] = exact_param_shapes(config, objective)
        kw = {}
        if objective == "span":
            kw["span_lengths"], kw["block_tokens"] = span_geometry(64)
        plan = make_plan(arch, seq_len=64, micro_batch=2, gpu=gpus.lookup("H100"), tokens=1e6, **kw)
        inputs = plan["memory"]["inputs"]
        assert inputs["objective"] == objective and inputs["params"] == _n(arch["model"])
        assert inputs["loss_chunk_tokens"] == 0  # the chunked loss is causal-LM only
        fl = encoders.flops_per_token(arch["model"], 64, kw.get("span_lengths"), kw.get("block_tokens"))
        assert plan["compute"]["flops_per_token"] == pytest.approx(fl["total"])
        assert f"({objective})" in format_plan(plan)
    with pytest.raises(ValueError, match="span_lengths"):
        memory.estimate(objective="span", model=arch["model"])
    with pytest.raises(ValueError, match="encoder-decoder"):
        memory.estimate(objective="mlm", model=arch["model"])
    with pytest.raises(ValueError, match="model's config"):
        memory.estimate(objective="mlm", layers=2, hidden=64, heads=4, vocab=300)


def test_span_geometry_follows_the_objectives_module():
    from dapt.train import objectives
    from dapt.train.plan.preflight import span_geometry

    (se, sd), raw = span_geometry(512)
    assert (se, sd) == objectives.corrupted_lengths(raw)
    assert se <= 512 and sd == pytest.approx(raw * 0.15 * (1 + 1 / 3) + 1, abs=2)


def _write_config(tmp_path: Path, model: dict, train: dict | None = None) -> Path:
    data = {
        "name": "plan-objectives",
        "run_dir": str(tmp_path / "run"),
        "sources": [{"name": "fin", "kind": "domain", "paths": [str(tmp_path / "fin.jsonl")]}],
        "model": model,
        "train": train or {},
        "mix": {"seq_len": 64},
    }
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def test_preflight_and_cli_plan_encoders(tmp_path, capsys):
    from dapt.pipeline.cli import main as dapt
    from dapt.pipeline.config import load_config
    from dapt.train.plan.preflight import preflight

    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIGS["t5"].to_dict()), encoding="utf-8")
    cfg = load_config(_write_config(tmp_path, {"name_or_path": str(folder)}, {"micro_batch_size": 2}))
    plan = preflight(cfg, CONFIGS["t5"], "NVIDIA H100 80GB HBM3", 81559 * 2**20, seq_len=64)
    inputs = plan["memory"]["inputs"]
    assert inputs["objective"] == "span" and inputs["span_lengths"][0] <= 64
    assert plan["refused"] is False and "(span)" in plan["table"]
    json.dumps(plan)

    assert dapt(["plan", "--model", str(folder), "--json", "--seq-len", "64"]) == 0
    got = json.loads(capsys.readouterr().out)["memory"]["inputs"]
    assert got["objective"] == "span" and got["params"] == _n(encoders.describe(CONFIGS["t5"].to_dict()))
    args = ["plan", "--objective", "mlm", "--layers", "12", "--hidden", "768", "--heads", "12"]
    assert dapt(args + ["--vocab", "30522", "--seq-len", "512", "--tokens", "1B", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["memory"]["inputs"]["family"] == "bert"
    assert got["compute"]["flops_per_token"] == pytest.approx(
        encoders.flops_per_token(encoders.describe(transformers.BertConfig().to_dict()), 512)["total"]
    )


def test_preflight_takes_the_train_stage_facts(tmp_path):
    """What train/stage.py's ``_preflight`` passes for a non-clm run: its resolved objective and the
    span options the mix packed with (its config view has no ``model`` or ``mix`` section)."""
    from dapt.pipeline.config import load_config
    from dapt.train.plan.preflight import preflight, span_geometry

    cfg = load_config(
        _write_config(tmp_path, {"from_config": {"model_type": "llama"}}, {"micro_batch_size": 2})
    )
    kw = dict(seq_len=64, pretraining_tokens=None)
    plan = preflight(cfg, CONFIGS["bert"], "cuda", 16 * 2**30, objective="mlm", **kw)
    assert plan["memory"]["inputs"]["objective"] == "mlm" and plan["refused"] is False
    plan = preflight(
        cfg,
        CONFIGS["t5"],
        "cuda",
        16 * 2**30,
        objective="span",
        span_noise_density=0.3,
        span_mean_length=2.0,
        **kw,
    )
    assert tuple(plan["memory"]["inputs"]["span_lengths"]) == span_geometry(64, 0.3, 2.0)[0]


@pytest.mark.parametrize("name", ["encoders.py", "encoder_memory.py"])
def test_new_arithmetic_modules_import_only_stdlib(name):
    tree = ast.parse((PLAN_DIR / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            mods = [node.module]
        for m in mods:
            top = m.split(".")[0]
            assert top in sys.stdlib_module_names or m.startswith("dapt.train.plan") or top == "__future__"
