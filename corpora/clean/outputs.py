"""How downstream stages read the clean stage's output: the kept Parquet files per source.

Public on purpose: split, tokenizer and mix all read kept documents, and they must agree on where
they are and what a missing folder means (one reader, not three copies of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import resolve_output


def kept_dir(ctx: Any) -> Path:
    """The clean stage's ``kept`` folder (one subfolder of Parquet files per source)."""
    clean_dir = ctx.upstream_dir("clean")
    outputs = ctx.upstream_manifest("clean").get("outputs") or {}
    if "kept" not in outputs:
        raise InputError(f"{clean_dir / 'manifest.json'}: outputs.kept is missing (re-run `dapt clean`)")
    kept = resolve_output(clean_dir, outputs["kept"])
    if not kept.is_dir():
        raise InputError(f"{kept}: the clean stage's kept folder does not exist (re-run `dapt clean`)")
    return kept


def kept_files(ctx: Any) -> dict[str, list[Path]]:
    """The kept Parquet files of each configured source, in config order (a source with none warns)."""
    kept = kept_dir(ctx)
    out: dict[str, list[Path]] = {}
    for src in ctx.cfg.sources:
        files = sorted((kept / src.name).glob("*.parquet"))
        if not files:
            ctx.log.warning("source %s: no kept documents in %s", src.name, kept / src.name)
        out[src.name] = files
    extra = sorted(p.name for p in kept.iterdir() if p.is_dir() and p.name not in out)
    if extra:
        ctx.log.warning("ignoring kept folders of sources not in the config: %s", extra)
    return out
