"""Fertility: how many tokens each tokenizer spends on each source's held-out text.

Tokens per word (words = whitespace-separated strings) and UTF-8 bytes per token, per source and per
tokenizer, plus the change against the base tokenizer. The domain token reduction is the headline
number of a domain tokenizer: how many fewer tokens the domain text costs than under the base.
"""

from __future__ import annotations

from typing import Any

from dapt.tokenizer.encode import Encoder


def fertility(
    encoders: dict[str, Encoder], heldout: dict[str, list[str]], base: str | None = "base"
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{source: {tokenizer: {docs, words, bytes, tokens, tokens_per_word, bytes_per_token,
    token_change_vs_base}}}`` over each source's held-out documents."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for source, docs in heldout.items():
        words = sum(len(d.split()) for d in docs)
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        row: dict[str, dict[str, Any]] = {}
        for name, enc in encoders.items():
            tokens = sum(len(ids) for ids in enc.encode_batch(docs)) if docs else 0
            row[name] = {
                "docs": len(docs),
                "words": words,
                "bytes": nbytes,
                "tokens": tokens,
                "tokens_per_word": round(tokens / words, 4) if words else None,
                "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
            }
        if base in row and row[base]["tokens"]:
            for stats in row.values():
                stats["token_change_vs_base"] = round(stats["tokens"] / row[base]["tokens"] - 1.0, 4)
        out[source] = row
    return out


def token_reduction(
    table: dict[str, dict[str, dict[str, Any]]], sources: list[str], base: str = "base"
) -> dict[str, float | None]:
    """``{tokenizer: 1 - tokens / base tokens}`` summed over ``sources`` (positive = fewer tokens)."""
    names = {n for s in sources if s in table for n in table[s]}
    base_tokens = sum(table[s][base]["tokens"] for s in sources if s in table and base in table[s])
    out: dict[str, float | None] = {}
    for name in sorted(names - {base}):
        tokens = sum(table[s][name]["tokens"] for s in sources if s in table and name in table[s])
        out[name] = round(1.0 - tokens / base_tokens, 4) if base_tokens else None
    return out
