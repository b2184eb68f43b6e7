"""Tokenizer: its mode and vocabulary, what it was fitted on (the training split only), and its
fertility on every source's held-out text."""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.doc import (
    NR,
    Figure,
    Section,
    Table,
    fmt_float,
    fmt_frac,
    fmt_int,
    fmt_value,
    get,
    kv_table,
    num,
)
from dapt.eval.report.sections.base import Inputs, missing

ID, TITLE = "tokenizer", "Tokenizer fertility"


def token_reductions(tok_manifest: dict[str, Any]) -> dict[str, float]:
    """``{tokenizer: fraction}`` of fewer domain tokens than the base tokenizer (positive = fewer).

    The tokenizer stage records a dict per non-base tokenizer; a bare number (an older manifest) is
    taken as the reduction of the stage's own output tokenizer.
    """
    red = tok_manifest.get("domain_token_reduction")
    if isinstance(red, dict):
        return {str(k): v for k, v in ((k, num(v)) for k, v in red.items()) if v is not None}
    v = num(red)
    if v is None:
        return {}
    name = {"extend": "extended", "replace": "trained"}.get(str(tok_manifest.get("mode")), "adapted")
    return {name: v / 100 if abs(v) > 1 else v}


def trained_on_text(tok_manifest: dict[str, Any]) -> str:
    """``train split: 1,600 documents (120 held-out documents excluded)`` from ``trained_on``."""
    t = tok_manifest.get("trained_on")
    if not isinstance(t, dict) or not t:
        return NR
    text = f"{fmt_value(t.get('split'))} split: {fmt_int(t.get('documents'))} documents"
    if num(t.get("heldout_excluded")) is not None:
        text += f" ({fmt_int(t.get('heldout_excluded'))} held-out documents excluded)"
    return text


def _fertility_table(data: Any, fert: dict[str, dict[str, Any]]) -> Table:
    toks = list(dict.fromkeys(t for v in fert.values() for t, x in v.items() if isinstance(x, dict)))
    # Change in token count vs the base tokenizer, for the tokenizers that have one other than the base.
    changed = {
        t
        for v in fert.values()
        for t, x in v.items()
        if t != "base" and isinstance(x, dict) and num(x.get("token_change_vs_base")) is not None
    }
    rows = []
    for src, v in fert.items():
        row = [src, fmt_value(data.source_kind(src))]
        for t in toks:
            row += [fmt_float(get(v, t, "tokens_per_word"), 3), fmt_float(get(v, t, "bytes_per_token"), 3)]
            if t in changed:
                row.append(fmt_frac(get(v, t, "token_change_vs_base"), 2))
        rows.append(row)
    headers = ["source", "kind"]
    for t in toks:
        headers += [f"{t} tokens/word", f"{t} bytes/token"] + (
            [f"{t} tokens vs base"] if t in changed else []
        )
    return Table(
        headers,
        rows,
        caption="Tokens per word and bytes per token on held-out text",
        numeric=[False, False] + [True] * (len(headers) - 2),
    )


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    m = data.m("tokenizer")
    if not m:
        return s.add(missing("Tokenizer manifest"))
    reds = token_reductions(m)
    added = m.get("added_tokens")
    pairs = [
        ("Mode", fmt_value(m.get("mode"))),
        ("Vocabulary size", fmt_int(m.get("vocab_size"))),
        ("Added tokens", fmt_int(len(added)) if isinstance(added, list) else fmt_int(added)),
        ("Base tokenizer", fmt_value(get(m, "base", "tokenizer") or get(m, "base", "model"))),
        (
            "Domain token reduction vs base",
            ", ".join(f"{k}: {fmt_frac(v, 2)}" for k, v in reds.items()) if reds else NR,
        ),
        ("Fitted on", trained_on_text(m)),
    ]
    revision = get(m, "base_model", "revision")
    if revision:
        pairs.insert(4, ("Base model revision", fmt_value(revision)))
    ids_file = get(m, "trained_on", "heldout_ids_file")
    if ids_file:
        pairs.append(("Held-out ids kept out of fitting", fmt_value(ids_file)))
    s.add(kv_table(pairs))
    fert = m.get("fertility") if isinstance(m.get("fertility"), dict) else {}
    fert = {k: v for k, v in fert.items() if isinstance(v, dict)}
    if not fert:
        return s.add(missing("Fertility per source (tokenizer manifest `fertility`)"))
    s.add(_fertility_table(data, fert))
    png = plots.fertility_plot(fert, inp.dpi)
    if png:
        s.add(Figure("fertility.png", png, "Tokens per word per source and tokenizer (lower is better)."))
    return s
