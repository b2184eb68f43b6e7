"""Finding and loading lm-eval tasks: built-in ones, the shipped YAMLs in ``eval/tasks/`` and built ones.

lm-eval resolves a YAML task's relative ``dataset_kwargs.data_files`` against the *working directory*
(verified with 0.4.13), so a task folder only works when run from one place. We instead copy every task
folder into a private include directory at run time, rewriting relative ``data_files`` to absolute paths
resolved against the YAML file that names them. Everything else in the YAML (``include:``, ``!function``
tags, sibling ``utils.py``) is kept, so the copy behaves exactly like the original.

Loading is per task, so a task whose data cannot be reached (a hub dataset on an offline machine) is
reported as unavailable with its error instead of failing the others; a name lm-eval does not know at
all is a configuration error (a typo should stop the run before any model is loaded).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dapt.pipeline.errors import ConfigError

SHIPPED_TASKS = Path(__file__).resolve().parent / "tasks"
log = logging.getLogger("dapt.eval")


@dataclass
class _Tagged:
    """A YAML node with a custom tag (``!function utils.f``), kept verbatim through load/dump."""

    tag: str
    value: Any


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_multi_constructor(
    "!", lambda loader, suffix, node: _Tagged("!" + suffix, loader.construct_scalar(node))
)
_Dumper.add_representer(_Tagged, lambda dumper, t: dumper.represent_scalar(t.tag, t.value))


def _resolve_files(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        p = Path(value)
        return value if p.is_absolute() or "://" in value else str((base / p).resolve())
    if isinstance(value, list):
        return [_resolve_files(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_files(v, base) for k, v in value.items()}
    return value


def resolve_task_yaml(src: Path, dst: Path) -> bool:
    """Copy one task YAML, making relative ``dataset_kwargs.data_files`` absolute (relative to ``src``).
    Returns whether anything was rewritten (files without data_files are copied byte for byte)."""
    text = src.read_text(encoding="utf-8")
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    files = data.get("dataset_kwargs", {}).get("data_files") if isinstance(data, dict) else None
    if files is None:
        shutil.copyfile(src, dst)
        return False
    data["dataset_kwargs"]["data_files"] = _resolve_files(files, src.parent.resolve())
    dst.write_text(yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return True


def prepare_include_dir(task_dirs: list[str | Path], dest: Path) -> Path:
    """Copy ``eval/tasks/`` and each of ``task_dirs`` (YAML and .py files, structure kept) into ``dest``
    with data paths resolved. Missing ``task_dirs`` are skipped with a warning. Returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    roots = [SHIPPED_TASKS, *[Path(d).expanduser() for d in task_dirs]]
    for i, root in enumerate(roots):
        if not root.is_dir():
            log.warning(
                "eval task folder %s does not exist (build it with `python -m dapt.eval.build_tasks`)", root
            )
            continue
        for src in sorted(root.rglob("*")):
            if src.suffix not in {".yaml", ".yml", ".py"} or "__pycache__" in src.parts:
                continue
            dst = dest / f"{i:02d}_{root.name}" / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".py":
                shutil.copyfile(src, dst)
            else:
                resolve_task_yaml(src, dst)
    return dest


def with_local_data(yaml_text: str, data_files: dict[str, Path]) -> str:
    """A task YAML's text with its one ``dataset_path:`` line (a hub dataset) replaced by local JSON files
    per split, everything else unchanged: how a hub task is run on data that has been copied locally."""
    import re

    local = "dataset_path: json\ndataset_kwargs:\n  data_files:\n" + "".join(
        f"    {split}: {Path(f).resolve()}\n" for split, f in data_files.items()
    )
    out, n = re.subn(r"^dataset_path: .*\n", lambda _: local, yaml_text, flags=re.M)
    if n != 1:
        raise ValueError(f"expected one dataset_path line, found {n}")
    return out


def write_rolling_task(dest: Path, name: str, data_file: Path, text_field: str = "text") -> Path:
    """A ``loglikelihood_rolling`` task over a jsonl file (one document per line): lm-eval's own
    word_perplexity / byte_perplexity / bits_per_byte of that text, used to cross-check ``eval.bpb``."""
    dest.mkdir(parents=True, exist_ok=True)
    cfg = {
        "task": name,
        "tag": ["dapt_heldout"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{" + text_field + "}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "{{" + text_field + "}}",
        "metric_list": [
            {"metric": m, "aggregation": agg, "higher_is_better": False}
            for m, agg in (
                ("word_perplexity", "weighted_perplexity"),
                ("byte_perplexity", "weighted_perplexity"),
                ("bits_per_byte", "bits_per_byte"),
            )
        ],
        "metadata": {"version": 1.0},
    }
    path = dest / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class LoadedTasks:
    """Task objects by requested name (a group/tag name maps to several leaf tasks), and the requested
    names that could not be loaded with the reason."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def _leaves(task_dict: dict) -> dict[str, Any]:
    """Flatten lm-eval's nested {group: {task: Task}} dict into {task_name: Task}."""
    out: dict[str, Any] = {}
    for key, val in task_dict.items():
        if isinstance(val, dict):
            out.update(_leaves(val))
        else:
            out[getattr(key, "group_name", None) or getattr(val, "config", {}).task or str(key)] = val
    return out


def seeds(seed: int) -> dict[str, int]:
    """``simple_evaluate`` keyword arguments fixing every random seed lm-eval uses (Python, NumPy, torch and
    the few-shot sampler), so a rerun draws the same few-shot examples."""
    return {
        "random_seed": seed,
        "numpy_random_seed": seed,
        "torch_random_seed": seed,
        "fewshot_random_seed": seed,
    }


def task_manager(include_dir: Path | None, include_defaults: bool = True):
    """An lm-eval TaskManager over our include folder. Indexing lm-eval's thousands of built-in task
    YAMLs costs tens of seconds on a small machine, so callers skip it when only local tasks are named."""
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(include_dir) if include_dir else None, include_defaults=include_defaults
    )


def load_tasks(names: list[str], include_dir: Path | None, where: str = "eval.tasks") -> LoadedTasks:
    """Load each named task (or group/tag). Unknown names raise ConfigError; tasks whose data cannot
    be loaded are returned in ``unavailable`` with a one-line reason."""
    from lm_eval.tasks import get_task_dict

    tm = task_manager(include_dir, include_defaults=False) if include_dir else None
    if tm is None or not set(names) <= set(tm.all_tasks):  # a built-in task is named: index those too
        tm = task_manager(include_dir)
    known = set(tm.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        import difflib

        hints = {n: difflib.get_close_matches(n, known, n=3) for n in unknown}
        msg = "; ".join(
            f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items()
        )
        raise ConfigError(
            f"{where}: unknown lm-eval task(s) {msg}; local WordNet tasks need `python -m dapt.eval.build_tasks` "
            "and their folder in eval.task_dirs"
        )
    out = LoadedTasks()
    for n in names:
        try:
            out.tasks[n] = _leaves(get_task_dict([n], tm))
        except Exception as e:  # noqa: BLE001 - any data-loading failure makes the task unavailable
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log.warning("eval task %s is unavailable: %s", n, reason)
            out.unavailable[n] = reason
    return out
