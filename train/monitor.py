"""Forgetting-monitor data: pre-tokenised validation windows of the domain and general held-out splits.

Built once by the driver (it has the tokenizer) and saved as one ``.npz`` the workers read, so every
rank evaluates exactly the same windows. Bits-per-byte is ``sum(token NLL) / UTF-8 bytes / ln 2``
over whole documents: each document is prefixed with the end-of-document token (the context a
document starts with in the packed training blocks), cut into windows of ``seq_len`` predicted tokens,
and every token is predicted exactly once. Windows do not overlap, so tokens just after a window
boundary see less context than the eval stage's sliding windows give them: the monitor is slightly
pessimistic in absolute terms and meant for trends (domain vs general, step vs step), not for the
final numbers, which come from the eval stage.

Tokenisation is the mix stage's own encoder (``dapt.tokenizer.encode.load_encoder``), so the monitor sees
exactly the ids training sees: text is text (a document spelling ``<|endoftext|>`` is scored as those
characters, not as the end-of-document id), the rule eval's bits-per-byte follows too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dapt.pipeline.errors import InputError

IGNORE = -100


def read_heldout(heldout_dir: Path, split: str = "validation") -> dict[str, list[str]]:
    """Texts by kind (``domain`` / ``general``), interleaving sources so a cap samples all of them."""
    per_source: dict[str, dict[str, list[str]]] = {"domain": {}, "general": {}}
    for f in sorted(heldout_dir.glob(f"*/{split}.jsonl")):
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                kind, text = rec["kind"], rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{f}:{lineno}: bad held-out record ({e})") from None
            per_source.setdefault(kind, {}).setdefault(f.parent.name, []).append(text)
    out: dict[str, list[str]] = {}
    for kind, sources in per_source.items():
        lists = [sources[s] for s in sorted(sources)]
        merged = []
        for i in range(max((len(x) for x in lists), default=0)):
            merged.extend(x[i] for x in lists if i < len(x))
        out[kind] = merged
    return out


def make_windows(
    token_lists: list[list[int]], texts: list[str], seq_len: int, max_tokens: int, sep_id: int
) -> dict[str, Any]:
    """Inputs/targets of shape (n, seq_len) (targets IGNORE-padded) and the bytes of the docs used."""
    inputs, targets = [], []
    n_bytes = n_tokens = 0
    for ids, text in zip(token_lists, texts, strict=True):
        if not ids:
            continue
        if n_tokens and n_tokens + len(ids) > max_tokens:
            break
        seq = [sep_id, *ids]
        for start in range(0, len(ids), seq_len):
            chunk = seq[start : start + seq_len + 1]
            x = np.zeros(seq_len, dtype=np.int64)
            y = np.full(seq_len, IGNORE, dtype=np.int64)
            x[: len(chunk) - 1] = chunk[:-1]
            y[: len(chunk) - 1] = chunk[1:]
            inputs.append(x)
            targets.append(y)
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids)
    if not inputs:
        return {
            "inputs": np.zeros((0, seq_len), np.int64),
            "targets": np.zeros((0, seq_len), np.int64),
            "bytes": 0,
            "tokens": 0,
        }
    return {"inputs": np.stack(inputs), "targets": np.stack(targets), "bytes": n_bytes, "tokens": n_tokens}


MONITOR_POSITION = 1 << 40
"""Stream position the monitor's masks and spans are seeded from: far beyond any training position, so
the monitor's noise is fixed across steps (a trend, not resampled noise) and never a training block's."""


def make_objective_windows(
    token_lists: list[list[int]],
    texts: list[str],
    block_len: int,
    max_tokens: int,
    sep_id: int,
    objective: str,
    roles: Any,
    seed: int,
) -> dict[str, Any]:
    """Masked-LM or span-corruption windows: the documents packed as training packs them (each after
    the separator), cut into whole blocks of ``block_len`` and turned into inputs/targets with a fixed
    mask or corruption. The partial last block is dropped, so ``bytes`` is the documents' bytes prorated
    by the tokens kept: per-byte figures for trends, as the causal monitor's."""
    from dapt.train.objectives import make_batch

    stream: list[int] = []
    n_bytes = 0
    for ids, text in zip(token_lists, texts, strict=True):
        if not ids:
            continue
        if stream and len(stream) + len(ids) + 1 > max_tokens:
            break
        stream += [sep_id, *ids]
        n_bytes += len(text.encode("utf-8"))
    n_blocks = len(stream) // block_len
    if not n_blocks:
        return {
            "inputs": np.zeros((0, 1), np.int64),
            "targets": np.zeros((0, 1), np.int64),
            "bytes": 0,
            "tokens": 0,
        }
    blocks = np.asarray(stream[: n_blocks * block_len], dtype=np.int64).reshape(n_blocks, block_len)
    positions = [MONITOR_POSITION + i for i in range(n_blocks)]
    x, y = make_batch(objective, blocks, positions, seed, roles)
    kept = n_blocks * block_len
    return {"inputs": x, "targets": y, "bytes": round(n_bytes * kept / len(stream)), "tokens": kept}


def build_monitor_file(
    heldout_dir: Path,
    tokenizer_path: str,
    seq_len: int,
    max_tokens: int,
    sep_id: int,
    out: Path,
    objective: str = "clm",
    block_len: int | None = None,
    roles: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out`` (.npz) with ``<kind>_inputs``, ``<kind>_targets``, ``<kind>_bytes`` for both kinds:
    causal windows (:func:`make_windows`), or for ``mlm`` / ``span`` :func:`make_objective_windows`."""
    from dapt.tokenizer.encode import load_encoder

    enc = load_encoder(tokenizer_path)
    texts = read_heldout(heldout_dir)
    arrays: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for kind in ("domain", "general"):
        docs = texts.get(kind, [])
        # Tokenise only about what the cap can use (documents are small relative to the cap), in batches.
        ids: list[list[int]] = []
        total = 0
        used: list[str] = []
        for start in range(0, len(docs), 64):
            batch = docs[start : start + 64]
            for t, e in zip(batch, enc.encode_batch(batch), strict=True):
                ids.append(e)
                used.append(t)
                total += len(e)
                if total > max_tokens:
                    break
            if total > max_tokens:
                break
        if objective == "clm":
            w = make_windows(ids, used, seq_len, max_tokens, sep_id)
        else:
            w = make_objective_windows(
                ids, used, int(block_len or seq_len), max_tokens, sep_id, objective, roles, seed
            )
        arrays[f"{kind}_inputs"] = w["inputs"]
        arrays[f"{kind}_targets"] = w["targets"]
        arrays[f"{kind}_bytes"] = np.int64(w["bytes"])
        summary[kind] = {"windows": int(len(w["inputs"])), "tokens": w["tokens"], "bytes": w["bytes"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return summary


def bits_per_byte(nll_sum: float, n_bytes: int) -> float | None:
    return nll_sum / n_bytes / math.log(2) if n_bytes else None
