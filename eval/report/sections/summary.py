"""Run summary: base model, sources, tokenizer, mix, training and compute at a glance; the stages'
fingerprints and the software versions."""

from __future__ import annotations

from typing import Any

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import (
    NR,
    Para,
    Section,
    Table,
    fmt_count,
    fmt_frac,
    fmt_int,
    fmt_seconds,
    fmt_value,
    get,
    kv_table,
)
from dapt.eval.report.sections.base import Inputs

ID, TITLE = "summary", "Run summary"


def base_model_text(data: RunData) -> Any:
    """The base model as the tokenizer stage recorded it (it loaded it), else as the config names it."""
    tok = data.m("tokenizer")
    base = get(tok, "base", "model") or get(tok, "base_model", "name_or_path")
    model = getattr(data.cfg, "model", None)
    if base is None and getattr(model, "name_or_path", None):
        base = model.name_or_path
    fc = get(tok, "base_model", "from_config")
    if base is None and isinstance(fc, dict):
        return (
            f"random init from config ({fc.get('model_type')}, {fc.get('num_hidden_layers')} layers, "
            f"hidden {fc.get('hidden_size')})"
        )
    if base is None and getattr(model, "from_config", None) is not None:
        fc = model.from_config
        return f"random init from config ({fc.model_type}, {fc.num_hidden_layers} layers, hidden {fc.hidden_size})"
    return base


OBJECTIVES = {
    "clm": "causal language modelling (next token)",
    "mlm": "masked language modelling (BERT-style)",
    "span": "span corruption (T5-style, encoder-decoder)",
}


def objective_text(data: RunData) -> str:
    """The objective the run trained with (mix manifest; older runs: causal) and what its held-out
    bits-per-byte rows measure (eval's settings), since the three are not on one scale."""
    objective = data.m("mix").get("objective") or "clm"
    metric = get(data.results or {}, "settings", "bpb_metric")
    text = f"{objective}: {OBJECTIVES.get(objective, objective)}"
    return text + (f"; held-out rows are {metric}" if metric else "")


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    tok, train, mix = data.m("tokenizer"), data.m("train"), data.m("mix")
    sources = list(getattr(data.cfg, "sources", []) or [])
    kinds = [src.kind for src in sources]
    pairs = [
        ("Run", data.run_name),
        ("Base model", fmt_value(base_model_text(data))),
        ("Parameters", fmt_count(data.n_params)),
        (
            "Sources",
            f"{kinds.count('domain')} domain, {kinds.count('general')} general: "
            + ", ".join(f"{src.name} ({src.kind})" for src in sources),
        ),
        ("Objective", objective_text(data)),
        ("Tokenizer", f"{fmt_value(tok.get('mode'))}, vocabulary {fmt_int(tok.get('vocab_size'))}"),
        (
            "Mix domain fraction",
            f"target {fmt_frac(get(mix, 'mix', 'target_domain_fraction'), 2)}, "
            f"achieved {fmt_frac(get(mix, 'mix', 'achieved_domain_fraction'), 2)}",
        ),
        ("Training tokens", f"{fmt_count(train.get('tokens'))} in {fmt_int(train.get('steps'))} steps"),
        (
            "Compute",
            f"{fmt_value(train.get('device'))}, {fmt_int(train.get('num_workers'))} worker(s), "
            f"{fmt_value(train.get('sharding'))}, {fmt_value(train.get('precision'))}",
        ),
        ("Training wall time", fmt_seconds(train.get("wall_seconds"))),
        ("Headline", next((c for c in inp.conclusions if c.startswith("Adapted vs base:")), NR)),
    ]
    s.add(kv_table(pairs))
    rows = []
    for stage in data.upstream:
        m = data.manifests.get(stage)
        if m is None:
            rows.append([stage, "missing", NR, NR])
            continue
        rows.append(
            [
                stage,
                fmt_value(m.get("started")),
                fmt_seconds(m.get("seconds")),
                str(m.get("fingerprint", NR))[:12],
            ]
        )
    s.add(Table(["stage", "started", "seconds", "fingerprint"], rows, caption="Stages", numeric=[False] * 4))
    versions = data.recorded("versions")
    if isinstance(versions, dict) and versions:
        rev = data.recorded("git_revision")
        s.add(
            Para(
                "Software: "
                + ", ".join(f"{k} {v}" for k, v in versions.items())
                + f"; dapt revision {rev or NR}."
            )
        )
    return s
