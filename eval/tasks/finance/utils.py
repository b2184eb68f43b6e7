"""Metrics of the public financial benchmarks, as BloombergGPT reported them (lm-eval ``!function`` hooks).

lm-eval's built-in ``f1`` is binary F1; FPB, FiQA SA and Headline are reported with *weighted* F1, NER
with entity-level F1 and ConvFinQA with numeric answer accuracy, hence these functions.
"""

from __future__ import annotations

import re
from collections import Counter


def weighted_f1(items: list[tuple[int, int]]) -> float:
    """Support-weighted F1 over classes of ``(gold, pred)`` pairs (the multiple-choice ``f1`` items)."""
    golds = [int(g) for g, _ in items]
    preds = [int(p) for _, p in items]
    total = len(golds)
    if total == 0:
        return 0.0
    score = 0.0
    for c, support in Counter(golds).items():
        tp = sum(1 for g, p in zip(golds, preds, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(golds, preds, strict=True) if g != c and p == c)
        fn = support - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        score += support / total * f1
    return score


def parse_entities(text: str) -> set[tuple[str, str]]:
    """``entity, TYPE`` lines -> {(entity lowercased, TYPE)}; anything else is ignored."""
    out = set()
    for line in text.splitlines():
        if "," not in line:
            continue
        ent, typ = line.rsplit(",", 1)
        ent, typ = ent.strip().lower(), typ.strip().upper()
        if ent and typ in {"PER", "ORG", "LOC"}:
            out.add((ent, typ))
    return out


def ner_process_results(doc: dict, results: list[str]) -> dict[str, tuple[set, set]]:
    return {"entity_f1": (parse_entities(str(doc["answer"])), parse_entities(results[0]))}


def entity_f1(items: list[tuple[set, set]]) -> float:
    """Micro entity-level F1 over all documents of ``(gold entities, predicted entities)``."""
    tp = sum(len(g & p) for g, p in items)
    n_pred = sum(len(p) for _, p in items)
    n_gold = sum(len(g) for g, _ in items)
    if tp == 0:
        return 0.0
    prec, rec = tp / n_pred, tp / n_gold
    return 2 * prec * rec / (prec + rec)


_NUM = re.compile(r"-?\d[\d,]*\.?\d*")


def first_number(text: str) -> float | None:
    m = _NUM.search(text.replace("%", ""))
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def numeric_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Correct when the first number generated equals the answer to 1% (ConvFinQA rounds freely)."""
    gold, pred = first_number(str(doc["answer"])), first_number(results[0])
    if gold is None or pred is None:
        return {"numeric_acc": 0.0}
    ok = abs(pred - gold) <= 0.01 * max(abs(gold), 1e-9) or round(pred, 2) == round(gold, 2)
    return {"numeric_acc": float(ok)}
