"""The ``split`` stage: hold out each source's validation and test documents as soon as text is clean.

Before this stage existed the tokenizer was fitted on every kept document, test documents included,
and the held-out choice lived inside mix. Now the choice is made once, here, and everything fitted on
the text downstream (the tokenizer, the mix) reads ``heldout_ids.txt`` and leaves those documents out;
eval scores exactly the files written here. The selection rule is in :mod:`select` (a stable hash of
the text, or a date cut).

Output::

    heldout/<source>/validation.jsonl   {"id", "source", "kind", "text"} per line
    heldout/<source>/test.jsonl
    heldout_ids.txt                     "<source>\\t<id>" per line, every held-out document

With ``by: date`` the consumers also apply the date rule (:class:`HeldoutRule`): documents dated after
the cut beyond the test sample are in no file but must not be trained on either.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt.corpora.clean.outputs import kept_files
from dapt.corpora.split.select import HeldoutDoc, HeldoutSet, is_after, select_heldout, split_key
from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import atomic_write_text

SPLITS = ("validation", "test")


def heldout_id(source: str, doc_id: str) -> str:
    """One line of ``heldout_ids.txt`` (ids are unique within a source, not across sources)."""
    return f"{source}\t{doc_id}"


def read_heldout_ids(path: Any) -> frozenset[str]:
    """The ``heldout_ids.txt`` lines as a set (see :func:`heldout_id`)."""
    with open(path, encoding="utf-8") as f:
        return frozenset(line.rstrip("\n") for line in f if line.strip())


@dataclass(frozen=True)
class HeldoutRule:
    """What must stay out of anything fitted on the text: the held-out documents by id, and with
    ``by: date`` every document dated after the cut (the test set is a sample of those; the rest are in
    no file, so the rule, not a list, keeps them out)."""

    ids: frozenset[str]
    after: dt.date | None = None

    def excludes(self, source: str, doc_id: str, date: object = None) -> bool:
        return heldout_id(source, doc_id) in self.ids or (
            self.after is not None and is_after(date, self.after)
        )


def heldout_rule(ids: frozenset[str], split_manifest: dict[str, Any]) -> HeldoutRule:
    """The rule of a finished split stage, from its ``heldout_ids`` and its manifest's ``rule``."""
    rule = split_manifest.get("rule") or {}
    after = rule.get("after") if rule.get("by") == "date" else None
    return HeldoutRule(ids, dt.date.fromisoformat(after[:10]) if after else None)


def read_heldout_docs(
    folder: Path, sources: dict[str, str], splits: tuple[str, ...] = SPLITS
) -> list[HeldoutDoc]:
    """The held-out documents this stage wrote under ``folder`` (``outputs.heldout``), per source in
    ``sources`` order; a missing file is an error naming it (the split output is incomplete)."""
    docs: list[HeldoutDoc] = []
    for name, kind in sources.items():
        for split in splits:
            path = folder / name / f"{split}.jsonl"
            if not path.is_file():
                raise InputError(f"{path}: held-out file missing (re-run `dapt split`)")
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    try:
                        rec = json.loads(line)
                        text = rec["text"]
                        doc_id = str(rec["id"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise InputError(
                            f"{path}:{lineno}: not a held-out record (re-run `dapt split`)"
                        ) from None
                    docs.append(HeldoutDoc(split_key(text), doc_id, name, kind, text, split))
    return docs


def _write(heldout: HeldoutSet, sources: dict[str, str], out: Any) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for name in sources:
        counts[name] = {}
        for split in SPLITS:
            docs = heldout.of(name, split)
            path = out / "heldout" / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for h in docs:
                    rec = {"id": h.id, "source": h.source, "kind": h.kind, "text": h.text}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[name][split] = len(docs)
    ids = "".join(heldout_id(h.source, h.id) + "\n" for h in heldout.docs)
    atomic_write_text(out / "heldout_ids.txt", ids)
    return counts


def _ray_tasks(ctx: Any):
    """The selection's mapper: one Ray task per call (pipeline.ray_runtime.map_in_tasks)."""
    from dapt.pipeline.ray_runtime import init_ray, map_in_tasks

    init_ray(ctx.cfg.ray)
    return lambda fn, calls: map_in_tasks(fn, calls, name=f"dapt:split-{fn.__name__}")


def run(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see the module docstring)."""
    sources = {s.name: s.kind for s in ctx.cfg.sources}
    heldout = select_heldout(kept_files(ctx), ctx.cfg.split, run=_ray_tasks(ctx))
    counts = _write(heldout, sources, ctx.out_dir)
    ctx.log.info("held out: %s", counts)
    return {
        "outputs": {"heldout": "heldout", "heldout_ids": "heldout_ids.txt"},
        "sources": sources,
        "rule": {"by": ctx.cfg.split.by, "after": ctx.cfg.split.after},
        "heldout": counts,
        "heldout_stats": heldout.stats,
        "counts": {
            "documents": sum(s["docs"] for s in heldout.stats.values()),
            "validation_docs": sum(c["validation"] for c in counts.values()),
            "test_docs": sum(c["test"] for c in counts.values()),
        },
    }
