"""The model card: a Hugging Face ``README.md`` for the exported model, filled from the run's records.

Sections follow the Hugging Face model-card template (Model Details, Uses, Bias/Risks/Limitations, How to
Get Started, Training Details, Evaluation, Technical Specifications / compute). The YAML front matter
carries the metadata the Hub indexes (licence, languages, base model, ``model-index`` results). What the
pipeline measured is filled in; what only a person can know (licence, intended use, developer) comes
from the ``report:`` config section or is marked "not recorded", never guessed.
"""

from __future__ import annotations

from typing import Any

import yaml

from dapt.eval.report import sections as S
from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import (
    NR,
    Table,
    flatten,
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
from dapt.eval.report.render import md_escape, md_table

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
    base = get(data.m("tokenizer"), "base", "model")
    if base is None:
        base = getattr(data.cfg.model, "name_or_path", None)
    return base if isinstance(base, str) else None


def front_matter(data: RunData, rcfg: Any, name: str) -> str:
    meta: dict[str, Any] = {}
    if rcfg.license:
        meta["license"] = rcfg.license
    meta["language"] = list(rcfg.language)
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["dapt", "domain-adaptation", "continued-pretraining"]
    base = base_model(data)
    if _looks_hub_id(base):  # the Hub validates base_model against repo ids; a local path would fail it
        meta["base_model"] = base
    results = []
    for r in data.metric_rows():
        value = num(r.get("adapted"))
        if value is None or S.redundant(r):
            continue
        target = S.row_target(r)
        results.append(
            {
                "task": {
                    "type": "text-generation",
                    "name": "bits-per-byte" if r.get("kind") == "bpb" else target,
                },
                "dataset": {
                    "name": f"held-out {target}" if r.get("kind") == "bpb" else target,
                    "type": target,
                },
                "metrics": [{"type": S.row_metric(r), "value": round(value, 6), "name": S.row_label(r)}],
            }
        )
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _bullets(pairs: list[tuple[str, str]]) -> str:
    return "\n".join(f"- **{md_escape(k)}:** {md_escape(v)}" for k, v in pairs)


def risks(data: RunData, alpha: float) -> list[str]:
    """Limitations that follow from this run's own numbers, then the ones every such model has."""
    out: list[str] = []
    rows = data.metric_rows()
    gen = S.kind_rows(data, rows, "general", pooled=False) or S.kind_rows(data, rows, "general", pooled=True)
    for r in gen:
        p = S.delta_pct(r)
        if p is not None and p > 0:
            sig = S.is_significant(r, alpha)
            verdict = {
                True: "general ability is measurably reduced",
                False: "not a measurable loss at this evaluation size, but a possible one",
                None: "whether this is a real loss is not known",
            }[sig]
            out.append(
                f"Forgetting: bits-per-byte on general held-out text ({S.row_target(r)}) is {p:+.1f}% vs the base "
                f"model ({S._sig_word(sig)}): {verdict}."
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
    pii = {}
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
    checked, unchecked = S.decontamination_tasks(data)
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


def build_card(data: RunData, rcfg: Any, concl: list[str]) -> str:
    alpha = S.significance_level(data, rcfg)
    name = rcfg.model_name or data.run_name
    tok, mix_m, train, clean = data.m("tokenizer"), data.m("mix"), data.m("train"), data.m("clean")
    mc = data.model_config or {}
    base = base_model(data)
    if base is None and getattr(data.cfg.model, "from_config", None) is not None:
        base = "none (randomly initialised from a config)"
    parts: list[str] = [front_matter(data, rcfg, name), f"# Model Card for {md_escape(name)}"]
    parts.append(
        f"{md_escape(name)} is a causal language model adapted to the domain of "
        + md_escape(", ".join(s.name for s in data.cfg.sources_of("domain")))
        + (
            " by training from a random initialisation"
            if base and base.startswith("none (")
            else f" by continued pretraining of {md_escape(fmt_value(base))}"
        )
        + " with the dapt pipeline (run "
        + f"`{md_escape(data.run_name)}`). Every number below was recorded by the pipeline's stages."
    )

    # ---- Model Details
    arch = mc.get("architectures") or [mc.get("model_type", NR)]
    parts.append("## Model Details\n\n### Model Description")
    parts.append(
        _bullets(
            [
                ("Developed by", rcfg.developed_by or NR),
                ("Model type", f"decoder-only causal language model ({fmt_value(arch)})"),
                ("Language(s) (NLP)", ", ".join(rcfg.language)),
                ("License", rcfg.license or NR),
                ("Continued pretraining from model", fmt_value(base)),
                (
                    "Parameters",
                    fmt_int(data.n_params) + f" ({fmt_count(data.n_params)})" if data.n_params else NR,
                ),
                (
                    "Tokenizer",
                    f"{fmt_value(tok.get('mode'))} mode, vocabulary {fmt_int(tok.get('vocab_size') or mc.get('vocab_size'))}"
                    + (
                        f", {fmt_int(_count(tok.get('added_tokens')))} added domain tokens"
                        if _count(tok.get("added_tokens"))
                        else ""
                    ),
                ),
                (
                    "Training context length",
                    f"{fmt_int(mix_m.get('seq_len') or get(train, 'hyperparameters', 'seq_len'))} tokens",
                ),
            ]
        )
    )

    # ---- Uses
    parts.append("## Uses\n\n### Direct Use\n\n" + md_escape(rcfg.intended_use or _DEFAULT_USE))
    parts.append(
        "### Downstream Use\n\nFine-tuning (instruction tuning, task heads) on the same domain; evaluate the "
        "fine-tuned model on your own held-out data, as this card does for the raw model."
    )
    parts.append("### Out-of-Scope Use\n\n" + md_escape(rcfg.out_of_scope_use or _DEFAULT_OUT_OF_SCOPE))

    # ---- Bias, Risks, and Limitations
    parts.append("## Bias, Risks, and Limitations")
    parts.append("\n".join(f"- {md_escape(x)}" for x in risks(data, alpha)))
    parts.append(
        "### Recommendations\n\nEvaluate on your own domain tasks before use, keep a human in the loop for any "
        "consequential output, and compare against the base model with the tables below."
    )

    # ---- How to Get Started
    where = str(data.model_dir) if data.model_dir else "path/to/this/model"
    parts.append(
        "## How to Get Started with the Model\n\n```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
        f"model = AutoModelForCausalLM.from_pretrained({where!r})\n"
        'inputs = tokenizer("The quarterly dividend", return_tensors="pt")\n'
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))\n```"
    )

    # ---- Training Details
    parts.append("## Training Details\n\n### Training Data")
    srows = []
    csrc = clean.get("sources") if isinstance(clean.get("sources"), dict) else {}
    per = get(mix_m, "mix", "per_source") or {}
    for s in data.cfg.sources:
        c = csrc.get(s.name) or {}
        p = per.get(s.name) or {}
        srows.append(
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
    parts.append(
        md_table(
            Table(
                [
                    "source",
                    "kind",
                    "licence",
                    "provenance",
                    "docs kept",
                    "bytes kept",
                    "tokens used",
                    "epochs",
                ],
                srows,
                caption="Training data (after cleaning) and its share of the mix",
                numeric=[False, False, False, False, True, True, True, True],
            )
        )
    )
    parts.append(
        _bullets(
            [
                (
                    "Domain fraction of training tokens",
                    f"target {fmt_frac(get(mix_m, 'mix', 'target_domain_fraction'), 2)}, achieved {fmt_frac(get(mix_m, 'mix', 'achieved_domain_fraction'), 2)}",
                ),
                ("Training tokens", fmt_int(train.get("tokens"))),
                (
                    "Decontamination",
                    fmt_value(mix_m.get("decontamination"))
                    if isinstance(mix_m.get("decontamination"), dict)
                    else NR,
                ),
            ]
        )
    )
    parts.append("### Training Procedure\n\n#### Preprocessing")
    rej = S._clean_totals(data)
    parts.append(
        "Documents were normalised, filtered, PII-redacted and deduplicated by the clean stage "
        + (
            f"(kept {fmt_int(rej.get('kept'))} of {fmt_int(rej.get('docs_in'))} documents; rejections: "
            + md_escape(
                ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(rej.get("rejected", {}).items())) or "none"
            )
            + ")"
            if rej.get("docs_in")
            else "(counts not recorded)"
        )
        + f", tokenized with the {md_escape(fmt_value(tok.get('mode')))}-mode tokenizer and packed into blocks of "
        + f"{fmt_int(mix_m.get('seq_len'))} tokens with EOS between documents."
    )
    parts.append("#### Training Hyperparameters")
    hp = train.get("hyperparameters")
    if isinstance(hp, dict) and hp:
        parts.append(
            md_table(
                Table(
                    ["hyperparameter", "value"],
                    [[k, fmt_value(v)] for k, v in flatten(hp).items()],
                    numeric=[False, True],
                )
            )
        )
    else:
        parts.append(f"Hyperparameters: {NR}.")
    parts.append(
        _bullets(
            [
                (
                    "Training regime",
                    f"{fmt_value(train.get('precision'))} precision, {fmt_value(train.get('sharding'))} sharding",
                ),
            ]
        )
    )
    parts.append("#### Speeds, Sizes, Times")
    mfu = num(train.get("mfu"))
    parts.append(
        _bullets(
            [
                ("Steps", fmt_int(train.get("steps"))),
                ("Throughput", f"{fmt_sig(train.get('tokens_per_s'))} tokens/s"),
                ("MFU", f"{100 * mfu:.1f}%" if mfu is not None else NR),
                ("Peak memory per worker", fmt_bytes(train.get("peak_memory_bytes"))),
                ("Wall time", fmt_seconds(train.get("wall_seconds"))),
                ("Checkpoint size", fmt_bytes(_model_bytes(data))),
            ]
        )
    )

    # ---- Evaluation
    parts.append("## Evaluation\n\n### Testing Data, Factors & Metrics")
    heldout = mix_m.get("heldout") if isinstance(mix_m.get("heldout"), dict) else {}
    parts.append(
        "Held-out test documents of every source (split off before training"
        + (
            ": " + md_escape(", ".join(f"{k} {fmt_int(get(v, 'test'))} docs" for k, v in heldout.items()))
            if heldout
            else ""
        )
        + "), scored as bits-per-byte (summed token negative log-likelihood / UTF-8 bytes / ln 2, comparable "
        "across tokenizers), and the configured lm-eval tasks. Base and adapted models are compared with a "
        "paired bootstrap over items."
    )
    parts.append("### Results")
    rows = data.metric_rows()
    if rows:
        trs = [
            [
                S.row_label(r),
                fmt_float(r.get("base")),
                fmt_float(r.get("adapted")),
                fmt_pct(S.delta_pct(r), 2, signed=True),
                fmt_p(r.get("p_value")),
                {True: "yes", False: "no", None: NR}[S.is_significant(r, alpha)],
            ]
            for r in rows
        ]
        parts.append(
            md_table(
                Table(
                    ["metric", "base", "adapted", "delta %", "p-value", "significant"],
                    trs,
                    caption="Base vs adapted",
                    numeric=[False, True, True, True, True, False],
                )
            )
        )
    else:
        parts.append(f"Evaluation results: {NR}.")
    q = data.quantization_rows()
    if q:
        flat, cols = S._quant_columns(q)
        parts.append(
            md_table(
                Table(
                    ["precision", "in memory", "on disk", *cols],
                    [
                        [
                            fmt_value(r.get("precision")),
                            fmt_bytes(r.get("bytes_in_memory")),
                            fmt_bytes(r.get("bytes_on_disk")),
                        ]
                        + [
                            fmt_float(r.get(c)) if num(r.get(c)) is not None else fmt_value(r.get(c))
                            for c in cols
                        ]
                        for r in flat
                    ],
                    caption="Quantized variants of this model",
                )
            )
        )
    parts.append("#### Summary")
    parts.append("\n".join(f"- {md_escape(c)}" for c in concl) if concl else f"Conclusions: {NR}.")

    # ---- Environmental Impact (what was measured; energy and carbon were not)
    wall, workers = num(train.get("wall_seconds")), num(train.get("num_workers"))
    parts.append("## Environmental Impact")
    parts.append(
        _bullets(
            [
                ("Hardware Type", fmt_value(train.get("device"))),
                (
                    "Hours used",
                    f"{wall / 3600:.3g} h wall time x {int(workers)} worker(s) = {wall * workers / 3600:.3g} "
                    "worker-hours (training stage only)"
                    if wall is not None and workers
                    else NR,
                ),
                ("Carbon Emitted", f"{NR} (energy use is not measured by the pipeline)"),
            ]
        )
    )

    # ---- Technical Specifications
    parts.append("## Technical Specifications\n\n### Model Architecture and Objective")
    arch_keys = [
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
    parts.append(
        (
            _bullets([(k, fmt_value(mc.get(k))) for k in arch_keys if k in mc])
            if mc
            else f"Architecture: {NR}."
        )
        + "\n\nObjective: next-token prediction (causal language modelling), "
        + (
            "from a random initialisation (no pretrained base)."
            if getattr(data.cfg.model, "from_config", None) is not None and not get(tok, "base", "model")
            else "continued from the base model's weights."
        )
    )
    parts.append("### Compute Infrastructure")
    versions = next(
        (m.get("versions") for m in data.manifests.values() if isinstance(m.get("versions"), dict)), {}
    )
    parts.append(
        _bullets(
            [
                (
                    "Hardware",
                    f"{fmt_value(train.get('device'))}, {fmt_int(train.get('num_workers'))} worker(s)"
                    if train.get("device") or train.get("num_workers")
                    else NR,
                ),
                ("Software", ", ".join(f"{k} {v}" for k, v in versions.items()) or NR),
                (
                    "Pipeline revision",
                    fmt_value(
                        next(
                            (m.get("git_revision") for m in data.manifests.values() if m.get("git_revision")),
                            None,
                        )
                    ),
                ),
            ]
        )
    )
    return "\n\n".join(parts) + "\n"


def _model_bytes(data: RunData) -> int | None:
    if data.model_dir is None:
        return None
    return sum(f.stat().st_size for f in data.model_dir.glob("*.safetensors")) or None


def _count(value: Any) -> int | None:
    """A count recorded either as a number or as the list of the things counted."""
    if isinstance(value, list):
        return len(value)
    v = num(value)
    return int(v) if v is not None else None
