"""Base vs adapted comparison rows: one per held-out source, one pooled per source kind, one per
task metric, each with a paired bootstrap (``significance``) where both models scored the same items,
and Holm-adjusted p-values per family of rows (``adjust_rows``).

Families are the rows behind one conclusion of the report: the per-source bits-per-byte rows of one
source kind ("the adapted model is better on the domain sources", "general ability was lost"), each
pooled row alone (one test: all bytes of a kind together), and all task metrics together. A row's
``significant`` is the family-wise decision (adjusted p < alpha); ``significant_raw`` keeps the
single-test one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dapt.eval.bpb import LN2
from dapt.eval.significance import holm, paired_bootstrap, paired_bootstrap_corpus

P_ADJUST_METHOD = "holm"


def _row_common(base: float | None, adapted: float | None, higher_is_better: bool) -> dict[str, Any]:
    delta = adapted - base if base is not None and adapted is not None else None
    pct = 100.0 * delta / abs(base) if delta is not None and base else None
    better = None if delta is None else (delta > 0) == higher_is_better and delta != 0
    return {"delta": delta, "delta_pct": pct, "higher_is_better": higher_is_better, "improved": better}


def min_paired_items(alpha: float) -> int:
    """The fewest paired items for which a two-sided paired test can reach ``alpha`` at all: an exact
    sign-flip test over n items cannot give p below 2 / 2**n (6 items for alpha 0.05). The bootstrap
    has no such floor: over one document it has no variance and reports p = 1 / (iters + 1), so a row
    with fewer items gets no test instead of a false "significant"."""
    return max(2, math.ceil(math.log2(2 / alpha)))


def _untested(row: dict[str, Any], n: int, alpha: float) -> dict[str, Any]:
    """Mark ``row`` as too small to test (see :func:`min_paired_items`)."""
    row.update(
        p_value=None,
        significant=None,
        ci_low=None,
        ci_high=None,
        untested=f"{n} paired items: a two-sided paired test needs at least {min_paired_items(alpha)} "
        f"to reach alpha {alpha}",
    )
    return row


def bpb_rows(bpb: dict[str, dict], heldout: dict, iters: int, alpha: float, seed: int) -> list[dict]:
    """One row per source plus one pooled row per source kind (domain / general)."""
    groups: list[tuple[str, str, list[str], bool]] = [(s, h["kind"], [s], False) for s, h in heldout.items()]
    for kind in sorted({h["kind"] for h in heldout.values()}):
        members = [s for s, h in heldout.items() if h["kind"] == kind]
        groups.append((f"all-{kind}", kind, members, True))
    rows = []
    for label, kind, members, pooled in groups:
        a_items = [it for s in members for it in bpb["adapted"][s]["per_doc"]]
        row: dict[str, Any] = {
            "name": f"bpb/{label}",
            "kind": "bpb",
            "source": label,
            "source_kind": kind,
            "pooled": pooled,
            "sources": members,
            "metric": "bits_per_byte",
            "n_items": len(a_items),
        }
        a_nll = [n for n, _ in a_items]
        nbytes = [b for _, b in a_items]
        if "base" in bpb:
            b_items = [it for s in members for it in bpb["base"][s]["per_doc"]]
            st = paired_bootstrap(
                [n for n, _ in b_items], a_nll, nbytes, nbytes, scale=1 / LN2, iters=iters, seed=seed
            )
            row.update(
                base=st["base"],
                adapted=st["adapted"],
                **_row_common(st["base"], st["adapted"], higher_is_better=False),
                base_stderr=st["base_stderr"],
                adapted_stderr=st["adapted_stderr"],
                ci_low=st["ci_low"],
                ci_high=st["ci_high"],
                p_value=st["p_value"],
                significant=st["p_value"] < alpha,
            )
            if len(a_items) < min_paired_items(alpha):
                _untested(row, len(a_items), alpha)
        else:
            st = paired_bootstrap(a_nll, a_nll, nbytes, nbytes, scale=1 / LN2, iters=iters, seed=seed)
            row.update(
                base=None,
                adapted=st["adapted"],
                **_row_common(None, st["adapted"], False),
                base_stderr=None,
                adapted_stderr=st["adapted_stderr"],
                ci_low=None,
                ci_high=None,
                p_value=None,
                significant=None,
            )
        rows.append(row)
    return rows


def task_rows(tasks: dict[str, dict], iters: int, alpha: float, seed: int) -> list[dict]:
    rows = []
    adapted = tasks.get("adapted", {})
    base = tasks.get("base", {})
    for name, a in adapted.items():
        b = base.get(name)
        for metric, am in a["metrics"].items():
            bm = b["metrics"].get(metric) if b else None
            row: dict[str, Any] = {
                "name": f"{name}/{metric}",
                "kind": "task",
                "task": name,
                "metric": metric,
                "aggregation": am["aggregation"],
                "version": a["version"],
                "num_fewshot": a["num_fewshot"],
                "base": bm["value"] if bm else None,
                "adapted": am["value"],
                **_row_common(bm["value"] if bm else None, am["value"], am["higher_is_better"]),
                "base_stderr": bm["stderr"] if bm else None,
                "adapted_stderr": am["stderr"],
                "ci_low": None,
                "ci_high": None,
                "p_value": None,
                "significant": None,
                "n_items": len(a["items"].get(metric, {})) or (a["n_samples"] or {}).get("effective"),
            }
            ai = a["items"].get(metric)
            bi = b["items"].get(metric) if b else None
            ac = a.get("corpus", {}).get(metric)
            bc = b.get("corpus", {}).get(metric) if b else None
            st = None
            if ai and bi:  # paired test over the items both models scored
                ids = sorted(set(ai) & set(bi))
                st = paired_bootstrap([bi[i] for i in ids], [ai[i] for i in ids], iters=iters, seed=seed)
            elif ac and bc:  # corpus-level metric: its own aggregation on each resample
                ids = sorted(set(ac["items"]) & set(bc["items"]))
                st = paired_bootstrap_corpus(
                    [bc["items"][i] for i in ids],
                    [ac["items"][i] for i in ids],
                    ac["fn"],
                    iters=iters,
                    seed=seed,
                )
            if st is not None:
                row.update(
                    ci_low=st["ci_low"],
                    ci_high=st["ci_high"],
                    p_value=st["p_value"],
                    significant=st["p_value"] < alpha,
                    n_items=len(ids),
                )
                if len(ids) < min_paired_items(alpha):
                    _untested(row, len(ids), alpha)
            rows.append(row)
    return rows


def p_family(row: dict[str, Any], kind: str | None = None) -> str:
    """The family a row's p-value is corrected in (``kind``: its source kind, when the row lacks one)."""
    if row.get("kind") == "bpb":
        kind = row.get("source_kind") or kind or "unknown"
        return f"bpb/all-{kind}" if row.get("pooled") else f"bpb/{kind} sources"
    if row.get("kind") == "probe":  # one probe set's accuracy and macro-F1 back one conclusion
        return f"probe/{row.get('task')}"
    return "tasks"


def adjust_rows(
    rows: list[dict[str, Any]], alpha: float, family: Callable[[dict[str, Any]], str] = p_family
) -> list[dict[str, Any]]:
    """Holm within each family, in place: ``p_adjusted``, ``p_adjust_method``, ``p_family``,
    ``p_family_size`` (tests in the family), ``significant`` (adjusted p < alpha) and ``significant_raw``
    (p < alpha) on every row; rows without a p-value get ``None`` for the p's and flags."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(family(r), []).append(r)
    for name, members in groups.items():
        adjusted = holm([r.get("p_value") for r in members])
        size = sum(1 for a in adjusted if a is not None)
        for r, a in zip(members, adjusted, strict=True):
            p = r.get("p_value")
            r.update(
                p_adjusted=a,
                p_adjust_method=P_ADJUST_METHOD,
                p_family=name,
                p_family_size=size,
                significant=None if a is None else a < alpha,
                significant_raw=None if a is None else p < alpha,
            )
    return rows
