"""configs/demo.yaml and configs/finance-cluster.yaml validate, and the planner sizes the cluster run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dapt.corpora.recipes.demo import SOURCES
from dapt.pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent

# The published architecture of Llama-2-7B (its config.json), so the planner can size the run offline.
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
}


def test_demo_config_matches_the_recipe():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.name == "demo"
    assert cfg.model.name_or_path == "data/models/smollm2-135m"
    assert cfg.mix.target_domain_fraction == pytest.approx(0.51)
    assert cfg.tokenizer.mode == "extend"
    assert cfg.train.precision == "bf16" and cfg.train.num_workers == 1
    assert set(cfg.eval.tasks) == {"dapt_wn_finance", "dapt_wn_general"}
    assert cfg.mix.decontamination.enabled
    # One config source per recipe source, same kind, pointing at the recipe's file, licence recorded.
    by_name = {s.name: s for s in cfg.sources}
    assert set(by_name) == set(SOURCES)
    for name, rs in SOURCES.items():
        src = by_name[name]
        assert src.kind == rs.kind
        assert src.paths == [f"data/demo/{name}.jsonl"]
        assert src.id_field == "id" and src.license and src.provenance
    # The training budget stays a few minutes of CPU time (docs/demo.md): <= 256k tokens.
    assert cfg.train.max_steps * cfg.train.global_batch_tokens <= 262_144
    assert cfg.mix.total_tokens >= cfg.train.max_steps * cfg.train.global_batch_tokens


def test_finance_cluster_config_validates_and_plans(tmp_path):
    from dapt.train.plan.preflight import plan_for_run

    cfg = load_config(ROOT / "configs" / "finance-cluster.yaml")
    assert cfg.train.num_workers == 64 and cfg.train.sharding == "zero3" and cfg.train.precision == "bf16"
    assert cfg.train.use_gpu is True
    assert all(p.startswith("s3://") for s in cfg.sources for p in s.paths)
    assert cfg.mix.target_domain_fraction == pytest.approx(0.51)
    assert "/" in cfg.model.name_or_path and not Path(cfg.model.name_or_path).exists()  # a hub id

    plan = plan_for_run(cfg, LLAMA2_7B)
    text = json.dumps(plan, default=str)
    assert plan["tokens_source"] == "train.tokens"
    assert "64" in text  # the plan is for the 64-GPU run


def test_finance_cluster_plan_cli(tmp_path, capsys):
    """``dapt plan --config configs/finance-cluster.yaml --model DIR`` (the offline form)."""
    from dapt.pipeline.cli import main

    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
    rc = main(["plan", "--config", str(ROOT / "configs" / "finance-cluster.yaml"), "--model", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fits" in out and "64 GPU" in out
