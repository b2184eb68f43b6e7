"""The model card: a Hugging Face ``README.md`` for the exported model, filled from the run's records.

The metadata is a :class:`huggingface_hub.ModelCardData` (licence, languages, base model, and the
``model-index`` built from :class:`huggingface_hub.EvalResult` rows), so it is exactly what the Hub
parses; the body is ``templates/model_card.md.jinja``, following the Hugging Face model-card template
(Model Details, Uses, Bias/Risks/Limitations, How to Get Started, Training Details, Evaluation,
Environmental Impact, Technical Specifications). This module only gathers the values the template
shows. What the pipeline measured is filled in; what only a person can know (licence, intended use,
developer) comes from the ``report:`` config section or is marked "not recorded", never guessed.

The report stage writes the card into its own folder as ``model_card.md``; the ``publish`` stage copies
it into the final model folder as ``README.md``.

Kept as one module on purpose: it is one responsibility (the card's values, in the template's order),
the prose lives in the template, and the numbers it shares with the report (results rows, cleaning
totals, decontamination, quantization columns) are imported from ``results`` and ``sections``.
"""

from __future__ import annotations

import re
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import (
    NR,
    Table,
    fmt_bytes,
    fmt_count,
    fmt_float,
    fmt_frac,
    fmt_int,
    fmt_p,
    fmt_pct,
    fmt_seconds,
    fmt_sig,
    fmt_value,
    get,
    num,
)
from dapt.eval.report.render import environment
from dapt.eval.report.results import (
    adjusted,
    delta_pct,
    kind_rows,
    redundant,
    row_label,
    row_metric,
    row_target,
    sig_word,
    significance_level,
)
from dapt.eval.report.sections.funnel import clean_totals
from dapt.eval.report.sections.mix import decontamination_tasks
from dapt.eval.report.sections.quantization import metric_cell, quant_columns
from dapt.eval.report.sections.training import hyperparameter_table

TEMPLATE = "model_card.md.jinja"
CARD_SECTIONS = [
    "Model Details",
    "Uses",
    "Bias, Risks, and Limitations",
    "How to Get Started with the Model",
    "Training Details",
    "Evaluation",
    "Environmental Impact",
    "Technical Specifications",
]
ARCH_KEYS = [
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
]

_DEFAULT_USE = (
    "Research on domain-adaptive continued pretraining: comparing this model with its base model on "
    "domain and general text, and as a starting point for further fine-tuning on the domain after your own "
    "evaluation."
)
_DEFAULT_OUT_OF_SCOPE = (
    "Any use where a wrong or fabricated statement causes harm without human review: financial, legal or "
    "medical advice, automated trading or credit decisions, and statements about real people or companies. "
    "The model is a raw (not instruction-tuned, not safety-tuned) language model."
)


def _looks_hub_id(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name.count("/") == 1
        and not name.startswith(("/", ".", "~"))
        and all(part and " " not in part for part in name.split("/"))
    )


def base_model(data: RunData) -> str | None:
    """The base model the tokenizer stage loaded (its manifest), else the one the config names."""
    tok = data.m("tokenizer")
    base = get(tok, "base", "model") or get(tok, "base_model", "name_or_path")
    if base is None:
        base = getattr(getattr(data.cfg, "model", None), "name_or_path", None)
    return base if isinstance(base, str) else None


def from_scratch(data: RunData) -> bool:
    """The run trained from a random initialisation (a ``model.from_config``), not from a base model."""
    tok = data.m("tokenizer")
    if isinstance(get(tok, "base_model"), dict):
        return get(tok, "base_model", "from_config") is not None and not base_model(data)
    return getattr(getattr(data.cfg, "model", None), "from_config", None) is not None and not get(
        tok, "base", "model"
    )


CARD_OBJECTIVES = {
    "clm": ("a causal language model", "decoder-only causal language model", "text-generation",
            "next-token prediction (causal language modelling)"),
    "mlm": ("a masked language model", "encoder masked language model", "fill-mask",
            "masked language modelling (15% of tokens chosen, 80/10/10 mask / random / kept)"),
    "span": ("an encoder-decoder model", "encoder-decoder span-corruption model", "text2text-generation",
             "span corruption (T5: noise spans replaced by sentinels, the decoder restores them)"),
}  # fmt: skip
"""Per objective: the card's noun, its model type, the Hub pipeline tag and the objective sentence."""


def objective_of(data: RunData) -> str:
    """The run's objective as the mix stage packed for it (older runs: causal)."""
    return str(data.m("mix").get("objective") or "clm")


HUB_DATASET = re.compile(r"^hf://datasets/([A-Za-z0-9][\w.-]*/[\w.-]+)")


def hub_datasets(data: RunData) -> list[str]:
    """The Hub dataset ids among the sources' paths (``hf://datasets/ORG/NAME/...``): the ``datasets``
    the Hub links a model to. Local files have no id, so a card of local data lists none."""
    ids = []
    for source in getattr(data.cfg, "sources", []) or []:
        for path in source.paths:
            m = HUB_DATASET.match(str(path))
            if m and m.group(1).split("@")[0] not in ids:
                ids.append(m.group(1).split("@")[0])
    return ids


def card_data(data: RunData, rcfg: Any, name: str) -> ModelCardData:
    """The metadata the Hub indexes; ``model-index`` holds the adapted model's results."""
    results = []
    for r in data.metric_rows():
        value = num(r.get("adapted"))
        if value is None or redundant(r):
            continue
        target, bpb = row_target(r), r.get("kind") == "bpb"
        results.append(
            EvalResult(
                task_type=CARD_OBJECTIVES[objective_of(data)][2],
                task_name="bits-per-byte" if bpb else target,
                dataset_type=target,
                dataset_name=f"held-out {target}" if bpb else target,
                metric_type=row_metric(r),
                metric_value=round(value, 6),
                metric_name=row_label(r),
            )
        )
    base = base_model(data)
    return ModelCardData(
        license=rcfg.license or None,
        language=list(rcfg.language),
        library_name="transformers",
        pipeline_tag=CARD_OBJECTIVES[objective_of(data)][2],
        tags=["dapt", "domain-adaptation", "continued-pretraining"],
        # The Hub validates base_model against repo ids; a local path would fail it.
        base_model=base if _looks_hub_id(base) else None,
        datasets=hub_datasets(data) or None,
        model_name=name if results else None,
        eval_results=results or None,
    )


def risks(data: RunData, alpha: float) -> list[str]:
    """Limitations that follow from this run's own numbers, then the ones every such model has."""
    out: list[str] = []
    rows = data.metric_rows()
    gen = kind_rows(data, rows, "general", pooled=False) or kind_rows(data, rows, "general", pooled=True)
    sigs = {id(r): x for r, x in zip(rows, adjusted(data, rows, alpha), strict=True)}
    for r in gen:
        p = delta_pct(r)
        if p is not None and p > 0:
            sig = sigs[id(r)].significant  # Holm over the general sources, as the conclusions
            verdict = {
                True: "general ability is measurably reduced",
                False: "not a measurable loss at this evaluation size, but a possible one",
                None: "whether this is a real loss is not known",
            }[sig]
            out.append(
                f"Forgetting: bits-per-byte on general held-out text ({row_target(r)}) is {p:+.1f}% vs the base "
                f"model ({sig_word(sig)}): {verdict}."
            )
    if not gen:
        out.append(
            "General ability was not measured on held-out general text in this run; forgetting is unknown."
        )
    tokens, params = num(data.m("train").get("tokens")), num(data.n_params)
    if tokens and params:
        out.append(
            f"Scale: continued pretraining used {fmt_count(tokens)} tokens for {fmt_count(params)} parameters "
            f"({tokens / params:.3g} tokens per parameter); effects measured here may not hold at other scales."
        )
    pii: dict[str, float] = {}
    for src in (data.m("clean").get("sources") or {}).values():
        for k, v in (src.get("pii") or {}).items() if isinstance(src, dict) else []:
            pii[k] = pii.get(k, 0) + (num(v) or 0)
    if pii:
        out.append(
            "Personal data: the cleaning stage redacted "
            + ", ".join(f"{fmt_int(v)} {k}" for k, v in sorted(pii.items()))
            + "; pattern-based redaction can miss personal data, so the model may still have seen some."
        )
    unlicensed = [s.name for s in data.cfg.sources if not s.license]
    if unlicensed:
        out.append(
            f"Licences not recorded for training sources: {', '.join(unlicensed)}. Check before redistribution."
        )
    checked, unchecked = decontamination_tasks(data)
    if not checked:
        out.append(
            "Training data was not decontaminated against any evaluation task; benchmark scores may be inflated."
        )
    elif unchecked:
        out.append(
            f"Training data was not decontaminated against {', '.join(unchecked)} (no item text was available); "
            "scores on those tasks may be inflated."
        )
    out.append(
        "The held-out bits-per-byte is measured on text from the same sources as the training data; it shows "
        "adaptation to those sources, not to the domain in general."
    )
    out.append(
        "The model inherits the biases and failure modes of its base model and of its training text, and can "
        "produce fluent but false statements (including numbers) about the domain."
    )
    return out


def _training_data(data: RunData) -> Table:
    csrc = data.m("clean").get("sources")
    csrc = csrc if isinstance(csrc, dict) else {}
    per = get(data.m("mix"), "mix", "per_source") or {}
    rows = []
    for s in data.cfg.sources:
        c, p = csrc.get(s.name) or {}, per.get(s.name) or {}
        rows.append(
            [
                s.name,
                s.kind,
                s.license or NR,
                s.provenance or NR,
                fmt_int(c.get("kept")),
                fmt_bytes(c.get("kept_bytes")),
                fmt_int(p.get("tokens_used")),
                fmt_float(p.get("epochs"), 3),
            ]
        )
    return Table(
        ["source", "kind", "licence", "provenance", "docs kept", "bytes kept", "tokens used", "epochs"],
        rows,
        caption="Training data (after cleaning) and its share of the mix",
        numeric=[False, False, False, False, True, True, True, True],
    )


def _results(data: RunData, alpha: float) -> tuple[Table | None, Table | None]:
    rows = data.metric_rows()
    results = None
    if rows:
        sigs = adjusted(data, rows, alpha)
        results = Table(
            ["metric", "base", "adapted", "delta %", "p-value", "Holm p", "significant"],
            [
                [
                    row_label(r),
                    fmt_float(r.get("base")),
                    fmt_float(r.get("adapted")),
                    fmt_pct(delta_pct(r), 2, signed=True),
                    fmt_p(x.p),
                    fmt_p(x.p_adjusted),
                    {True: "yes", False: "no", None: NR}[x.significant],
                ]
                for r, x in zip(rows, sigs, strict=True)
            ],
            caption="Base vs adapted (paired bootstrap p; Holm-adjusted within each family of rows)",
            numeric=[False, True, True, True, True, True, False],
        )
    quant = None
    q = data.quantization_rows()
    if q:
        flat, cols = quant_columns(q)
        quant = Table(
            ["precision", "in memory", "on disk", *cols],
            [
                [
                    fmt_value(r.get("precision")),
                    fmt_bytes(r.get("bytes_in_memory")),
                    fmt_bytes(r.get("bytes_on_disk")),
                ]
                + [metric_cell(r, c) for c in cols]
                for r in flat
            ],
            caption="Quantized variants of this model",
        )
    return results, quant


def _tokenizer_fit(tok: dict[str, Any]) -> str | None:
    """What the tokenizer was fitted on (``trained_on`` of its manifest): the training split only."""
    t = tok.get("trained_on")
    if not isinstance(t, dict) or not t:
        return None
    text = f"fitted on the {fmt_value(t.get('split') or 'train')} split only: {fmt_int(t.get('documents'))} documents"
    if num(t.get("heldout_excluded")) is not None:
        text += f", {fmt_int(t.get('heldout_excluded'))} held-out documents excluded"
    return text


def _context(data: RunData, rcfg: Any, concl: list[str], name: str) -> dict[str, Any]:
    """Every value the template shows, already formatted (the template adds prose and Markdown)."""
    alpha = significance_level(data, rcfg)
    tok, mix_m, train = data.m("tokenizer"), data.m("mix"), data.m("train")
    mc = data.model_config or {}
    scratch = from_scratch(data)
    base = "none (randomly initialised from a config)" if scratch else base_model(data)
    added = tok.get("added_tokens")
    n_added = len(added) if isinstance(added, list) else (int(num(added)) if num(added) is not None else None)
    seq_len = mix_m.get("seq_len") or get(train, "hyperparameters", "seq_len")
    mfu = num(train.get("mfu"))
    wall, workers = num(train.get("wall_seconds")), num(train.get("num_workers"))
    model_bytes = sum(f.stat().st_size for f in data.model_dir.glob("*.safetensors")) if data.model_dir else 0
    heldout, _ = data.heldout_counts()
    totals = clean_totals(data)
    results, quant = _results(data, alpha)
    hub_id = rcfg.model_name if _looks_hub_id(rcfg.model_name) else None
    noun, model_type, _, objective_sentence = CARD_OBJECTIVES[objective_of(data)]
    return {
        "name": name,
        "model_noun": noun,
        "objective_sentence": objective_sentence,
        "run_name": data.run_name,
        "domain_sources": ", ".join(s.name for s in data.cfg.sources_of("domain")),
        "from_scratch": scratch,
        "base": fmt_value(base),
        "details": [
            ("Developed by", rcfg.developed_by or NR),
            (
                "Model type",
                f"{model_type} ({fmt_value(mc.get('architectures') or [mc.get('model_type', NR)])})",
            ),
            ("Language(s) (NLP)", ", ".join(rcfg.language)),
            ("License", rcfg.license or NR),
            ("Continued pretraining from model", fmt_value(base)),
            ("Parameters", f"{fmt_int(data.n_params)} ({fmt_count(data.n_params)})" if data.n_params else NR),
            (
                "Tokenizer",
                f"{fmt_value(tok.get('mode'))} mode, vocabulary {fmt_int(tok.get('vocab_size') or mc.get('vocab_size'))}"
                + (f", {fmt_int(n_added)} added domain tokens" if n_added else ""),
            ),
            ("Training context length", f"{fmt_int(seq_len)} tokens"),
        ],
        "direct_use": rcfg.intended_use or _DEFAULT_USE,
        "out_of_scope_use": rcfg.out_of_scope_use or _DEFAULT_OUT_OF_SCOPE,
        "risks": risks(data, alpha),
        "where": repr(hub_id or "path/to/this/model"),
        "where_note": "the model's Hub repository"
        if hub_id
        else "the folder this card is the README of (the publish stage's model folder)",
        "training_data": _training_data(data),
        "data_facts": [
            (
                "Domain fraction of training tokens",
                f"target {fmt_frac(get(mix_m, 'mix', 'target_domain_fraction'), 2)}, "
                f"achieved {fmt_frac(get(mix_m, 'mix', 'achieved_domain_fraction'), 2)}",
            ),
            ("Training tokens", fmt_int(train.get("tokens"))),
            (
                "Decontamination",
                fmt_value(mix_m["decontamination"]) if isinstance(mix_m.get("decontamination"), dict) else NR,
            ),
        ],
        "tokenizer_fit": _tokenizer_fit(tok),
        "clean": {
            "recorded": bool(totals.get("docs_in")),
            "kept": fmt_int(totals.get("kept")),
            "docs_in": fmt_int(totals.get("docs_in")),
            "rejected": ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(totals.get("rejected", {}).items()))
            or "none",
        },
        "tokenizer_mode": fmt_value(tok.get("mode")),
        "block_len": fmt_int(mix_m.get("seq_len")),
        "hyperparameters": hyperparameter_table(train),
        "regime": f"{fmt_value(train.get('precision'))} precision, {fmt_value(train.get('sharding'))} sharding",
        "speeds": [
            ("Steps", fmt_int(train.get("steps"))),
            ("Throughput", f"{fmt_sig(train.get('tokens_per_s'))} tokens/s"),
            ("MFU", f"{100 * mfu:.1f}%" if mfu is not None else NR),
            ("Peak memory per worker", fmt_bytes(train.get("peak_memory_bytes"))),
            ("Wall time", fmt_seconds(train.get("wall_seconds"))),
            ("Checkpoint size", fmt_bytes(model_bytes or None)),
        ],
        "heldout": [(k, fmt_int(get(v, "test"))) for k, v in heldout.items()],
        "results": results,
        "quantization": quant,
        "conclusions": concl,
        "environment": [
            ("Hardware Type", fmt_value(train.get("device"))),
            (
                "Hours used",
                f"{wall / 3600:.3g} h wall time x {int(workers)} worker(s) = {wall * workers / 3600:.3g} "
                "worker-hours (training stage only)"
                if wall is not None and workers
                else NR,
            ),
            ("Carbon Emitted", f"{NR} (energy use is not measured by the pipeline)"),
        ],
        "architecture": [(k, fmt_value(mc.get(k))) for k in ARCH_KEYS if k in mc] if mc else None,
        "infrastructure": [
            (
                "Hardware",
                f"{fmt_value(train.get('device'))}, {fmt_int(train.get('num_workers'))} worker(s)"
                if train.get("device") or train.get("num_workers")
                else NR,
            ),
            ("Software", ", ".join(f"{k} {v}" for k, v in (data.recorded("versions") or {}).items()) or NR),
            ("Pipeline revision", fmt_value(data.recorded("git_revision"))),
        ],
    }


def build_card(data: RunData, rcfg: Any, concl: list[str]) -> str:
    """The card's text (YAML metadata, then the Markdown body), as the Hub's ModelCard writes it."""
    name = rcfg.model_name or data.run_name
    body = environment().get_template(TEMPLATE).render(**_context(data, rcfg, concl, name))
    card = ModelCard(f"---\n{card_data(data, rcfg, name).to_yaml()}\n---\n{body}")
    return card.content
