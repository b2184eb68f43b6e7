"""Mix: the achieved domain fraction against the target, tokens per source, decontamination."""

from __future__ import annotations

from typing import Any

from dapt.eval.report import plots
from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import (
    NR,
    Bullets,
    Figure,
    Para,
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

ID, TITLE = "mix", "Mix: achieved vs target"


def decontamination_tasks(data: RunData) -> tuple[list[str], list[str]]:
    """(tasks the mix stage checked training text against, tasks it could not check).

    A task counts as checked only when the mix stage used some of its item texts
    (``decontamination_info.texts_used``); an unreachable task has none and is listed as unchecked.
    """
    m = data.m("mix")
    decon = m.get("decontamination")
    if not isinstance(decon, dict):
        return [], []
    used = get(m, "decontamination_info", "texts_used")
    used = used if isinstance(used, dict) else {}
    checked = [t for t in decon if t not in used or (num(used.get(t)) or 0) > 0]
    return checked, [t for t in decon if t not in checked]


def _overview(m: dict[str, Any], mix: dict[str, Any]) -> Table:
    target, achieved = num(mix.get("target_domain_fraction")), num(mix.get("achieved_domain_fraction"))
    return kv_table(
        [
            ("Domain fraction (tokens), target", fmt_frac(target, 2)),
            ("Domain fraction (tokens), achieved", fmt_frac(achieved, 2)),
            (
                "Difference",
                f"{100 * (achieved - target):+.2f} pp" if target is not None and achieved is not None else NR,
            ),
            ("Total training tokens", fmt_int(m.get("total_tokens"))),
            ("Packed blocks", f"{fmt_int(m.get('n_blocks'))} x {fmt_int(num(m.get('seq_len')))} (+1) tokens"),
        ]
    )


def _per_source(data: RunData, per: dict[str, Any]) -> Table:
    used_total = sum(num(v.get("tokens_used")) or 0 for v in per.values() if isinstance(v, dict))
    rows = []
    for name, v in per.items():
        v = v if isinstance(v, dict) else {}
        used = num(v.get("tokens_used"))
        rows.append(
            [
                name,
                fmt_value(v.get("kind") or data.source_kind(name)),
                fmt_int(v.get("tokens_available")),
                fmt_int(used),
                fmt_frac(used / used_total, 2) if used is not None and used_total else NR,
                fmt_float(v.get("epochs"), 3),
                fmt_int(v.get("docs")),
                fmt_int(v.get("docs_used")),
            ]
        )
    return Table(
        [
            "source",
            "kind",
            "tokens available",
            "tokens used",
            "share of mix",
            "epochs",
            "docs available",
            "docs packed",
        ],
        rows,
        caption="Tokens per source",
        numeric=[False, False, True, True, True, True, True, True],
    )


def _target_table(table: list[dict[str, Any]]) -> Table:
    def cell(r: dict[str, Any], key: str) -> str:
        return fmt_frac(r.get(key), 2) if "fraction" in str(r.get("quantity")) else fmt_int(r.get(key))

    return Table(
        ["quantity", "target", "achieved"],
        [[str(r.get("quantity", NR)), cell(r, "target"), cell(r, "achieved")] for r in table],
        caption="Target vs achieved (tokens)",
    )


def _decontamination(s: Section, m: dict[str, Any], per: dict[str, Any]) -> None:
    decon = m.get("decontamination")
    info = m.get("decontamination_info") if isinstance(m.get("decontamination_info"), dict) else {}
    ngram = num(info.get("ngram"))
    how = f"{int(ngram)}-word n-gram overlap" if ngram else "n-gram overlap"
    if info.get("skipped"):
        s.add(Para(f"Decontamination skipped: {fmt_value(info['skipped'])}", kind="note"))
    if isinstance(decon, dict):
        if decon:
            used = info.get("texts_used") if isinstance(info.get("texts_used"), dict) else {}
            s.add(
                Table(
                    ["eval task", "item texts used", "training documents dropped"],
                    [[k, fmt_int(used.get(k)), fmt_int(v)] for k, v in decon.items()],
                    caption=f"Decontamination ({how} with eval task texts)",
                )
            )
        elif not info.get("skipped"):
            s.add(Para("Decontamination: no eval task texts were configured, nothing checked.", kind="note"))
    else:
        s.add(missing("Decontamination counts"))
    by_src = [
        (name, get(info, "dropped_by_source", name), get(m, "near_dedup", "dropped_by_source", name))
        for name in (per or {})
    ]
    if any(a is not None or b is not None for _, a, b in by_src):
        s.add(
            Table(
                ["source", "contaminated docs dropped", "near-duplicates of held-out docs dropped"],
                [[n, fmt_int(a), fmt_int(b)] for n, a, b in by_src],
                caption="Training documents removed by the mix stage",
            )
        )


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    m = data.m("mix")
    mix = m.get("mix") if isinstance(m.get("mix"), dict) else {}
    if not m:
        return s.add(missing("Mix manifest"))
    s.add(_overview(m, mix))
    per = mix.get("per_source") if isinstance(mix.get("per_source"), dict) else {}
    if per:
        s.add(_per_source(data, per))
        png = plots.mix_plot({k: v for k, v in per.items() if isinstance(v, dict)}, inp.dpi)
        if png:
            s.add(Figure("mix.png", png, "Tokens available and used per source (log scale)."))
    else:
        s.add(missing("Per-source token counts (mix manifest `mix.per_source`)"))
    table = mix.get("table")
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        s.add(_target_table(table))
    notes = mix.get("notes")
    if mix.get("shortfall"):
        s.add(Para(f"Shortfall: {fmt_value(mix.get('shortfall'))}", kind="note"))
    if isinstance(notes, list) and notes:
        s.add(Bullets([str(n) for n in notes]))
    _decontamination(s, m, per)
    return s
