"""What the eval stage evaluates: the base and adapted models, and the held-out text per source.

Read only from upstream manifests (tokenizer, train, split), so eval is rerun exactly when one of
them changes; checked before any model is loaded.
"""

from __future__ import annotations

import json
from typing import Any

from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import has_tokenizer_files, resolve_output
from dapt.pipeline.stages import StageContext


def resolve_models(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """``{"base": {...}, "adapted": {...}}`` with ``path``, ``tokenizer`` and ``role`` of each model."""
    cfg = ctx.cfg
    tok_dir, tok_man = ctx.upstream_dir("tokenizer"), ctx.upstream_manifest("tokenizer")
    train_dir, train_man = ctx.upstream_dir("train"), ctx.upstream_manifest("train")
    tok_out = tok_man.get("outputs") or {}
    new_tok = resolve_output(tok_dir, tok_out.get("tokenizer"))
    adapted = resolve_output(train_dir, (train_man.get("outputs") or {}).get("model"))
    if adapted is None or not adapted.is_dir():
        raise InputError(f"{train_dir}/manifest.json: outputs.model is missing or not a folder ({adapted})")
    models: dict[str, dict[str, Any]] = {
        "adapted": {
            "path": str(adapted),
            "tokenizer": str(adapted if has_tokenizer_files(adapted) else new_tok),
            "role": "adapted (train stage output)",
        }
    }
    if not cfg.eval.compare_base:
        return models
    base_info = tok_man.get("base") or {}
    if cfg.eval.base_model:
        path = cfg.eval.base_model
        models["base"] = {"path": path, "tokenizer": path, "role": "base (eval.base_model)"}
    elif base_info.get("model"):
        path = str(base_info["model"])
        models["base"] = {
            "path": path,
            "tokenizer": str(base_info.get("tokenizer") or path),
            "role": "base (original pretrained model and tokenizer)",
        }
    else:
        initial = resolve_output(tok_dir, tok_out.get("model"))
        if initial is None:
            raise InputError(f"{tok_dir}/manifest.json: neither base.model nor outputs.model is set")
        models["base"] = {
            "path": str(initial),
            "tokenizer": str(initial if has_tokenizer_files(initial) else new_tok),
            "role": "base (initial model before training: model.from_config has no pretrained base)",
        }
    return models


def read_heldout(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """Held-out texts per source: ``{source: {"kind", "texts", "files"}}`` from the split stage."""
    cfg = ctx.cfg
    split_dir, split_man = ctx.upstream_dir("split"), ctx.upstream_manifest("split")
    root = resolve_output(split_dir, (split_man.get("outputs") or {}).get("heldout"))
    if root is None or not root.is_dir():
        raise InputError(f"{split_dir}/manifest.json: outputs.heldout is missing or not a folder ({root})")
    kinds: dict[str, str] = split_man.get("sources") or {}
    out: dict[str, dict[str, Any]] = {}
    for src_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        texts: list[str] = []
        kind = kinds.get(src_dir.name)
        files = []
        for split in cfg.eval.heldout_splits:
            f = src_dir / f"{split}.jsonl"
            if not f.exists():
                continue
            files.append(str(f))
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{f}:{lineno}: invalid JSON: {e.msg}") from None
                    text = rec.get("text")
                    if not isinstance(text, str):
                        raise InputError(f"{f}:{lineno}: no string field 'text'")
                    kind = kind or rec.get("kind")
                    if text.strip():
                        texts.append(text)
        cap = cfg.eval.max_docs_per_source
        if cap is not None:
            texts = texts[:cap]
        if texts:
            out[src_dir.name] = {"kind": kind or "unknown", "texts": texts, "files": files}
    if not out:
        raise InputError(f"{root}: no held-out documents in splits {cfg.eval.heldout_splits}")
    return out
