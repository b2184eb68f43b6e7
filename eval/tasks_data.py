"""The text of every evaluation item, for decontaminating training data (the mix stage's 13-gram filter).

A benchmark item that also appears in the training mix measures memorisation, not ability. The mix stage
removes training text sharing long n-grams with these texts, so each item contributes its question (the
prompt lm-eval shows, without few-shot examples) together with its answer choices or target. The items
include the few-shot pool (``task_docs``): an example shown in every few-shot prompt is as much a
contamination risk as a scored item.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from dapt.eval.tasks_registry import load_tasks, prepare_include_dir

log = logging.getLogger("dapt.eval")
DEFAULT_TASK_DIRS = ["data/eval_tasks"]


def _as_text(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x] if x.strip() else []
    if isinstance(x, list | tuple):
        return [s for v in x for s in _as_text(v)]
    return []


def doc_texts(task: Any, doc: dict) -> str:
    """Question + choices (multiple choice) or question + target (everything else) of one item."""
    parts = _as_text(task.doc_to_text(doc))
    if task.OUTPUT_TYPE == "multiple_choice":
        parts += _as_text(task.doc_to_choice(doc))
    else:
        target = task.doc_to_target(doc)
        if isinstance(target, int) and task.config.doc_to_choice is not None:
            target = task.doc_to_choice(doc)[target]
        parts += _as_text(target)
    return " ".join(parts)


def task_docs(task: Any) -> list[dict]:
    """Every item a run could score or show as a few-shot example: test, validation, and the docs lm-eval's
    few-shot sampler draws from (``task.fewshot_docs()``: the task's ``fewshot_split``, such as ``train``
    for the shipped financial tasks, its fixed ``samples``, else training/validation docs).

    Few-shot examples are in every prompt of a few-shot run, so a training document containing one
    inflates every item's score, not just one. ``fewshot_docs()`` is the sampler's own source (lm-eval
    builds the sampler from it), so this is exactly the pool a run can show."""
    docs: list[dict] = []
    if task.has_test_docs():
        docs.extend(task.test_docs())
    if task.has_validation_docs():
        docs.extend(task.validation_docs())
    try:
        fewshot = task.fewshot_docs()
    except Exception as e:  # noqa: BLE001 - a task without a usable few-shot pool: nothing more to add
        log.debug("task %s: no few-shot docs (%s)", getattr(task, "config", {}), e)
        fewshot = None
    if fewshot is not None:  # may repeat the validation docs: task_texts drops repeated texts
        docs.extend(fewshot)
    return docs


def task_texts(task_names: list[str], task_dirs: list[str | Path] | None = None) -> dict[str, list[str]]:
    """``{requested name: [item text, ...]}`` for lm-eval task names (built-in, shipped in ``eval/tasks``
    or built into ``task_dirs``, default ``data/eval_tasks``; pass ``cfg.eval.task_dirs``).

    A group name yields the items of all its tasks. A task whose data cannot be loaded (a hub dataset
    offline) yields an empty list and a warning: there is nothing to decontaminate against, and the
    eval stage records it as unavailable. An unknown name raises ConfigError.
    """
    if not task_names:
        return {}
    with tempfile.TemporaryDirectory(prefix="dapt_tasks_") as tmp:
        inc = prepare_include_dir(
            task_dirs if task_dirs is not None else DEFAULT_TASK_DIRS, Path(tmp) / "inc"
        )
        loaded = load_tasks(list(task_names), inc)
        out: dict[str, list[str]] = {}
        for name in task_names:
            texts: list[str] = []
            for task in loaded.tasks.get(name, {}).values():
                texts.extend(t for t in (doc_texts(task, d) for d in task_docs(task)) if t)
            texts = list(dict.fromkeys(texts))  # the same item in two splits is one text
            if name in loaded.unavailable:
                log.warning("no decontamination texts for %s: %s", name, loaded.unavailable[name])
            out[name] = texts
    return out
