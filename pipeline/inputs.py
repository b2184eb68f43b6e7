"""What each stage reads outside ``run_dir``: the files whose content enters its fingerprint.

Why a module of its own: these listings are what ``dapt status`` repeats for every stage, so each goes
through ``fsutil.cached_listing`` (one glob or walk per command, see ``fsutil.input_facts``); the stage
table in ``stages.py`` names them as its rows' ``inputs`` and ``shared_paths``.
"""

from __future__ import annotations

from pathlib import Path

from dapt.pipeline.config import RunConfig
from dapt.pipeline.fsutil import cached_listing


def source_files(cfg: RunConfig) -> list[str]:
    """The clean stage's inputs. Each glob is listed once per command (``SourceConfig.files`` goes
    through ``fsutil.cached_listing``), however many stages' statuses ask for the clean fingerprint."""
    return [f for s in cfg.sources for f in s.files()]


def _folder_files(p: str | None) -> list[Path]:
    """Every file under a local folder (a base model's), listed once per command like the sources."""

    def walk() -> list[str]:
        return sorted(str(f) for f in Path(p).rglob("*") if f.is_file()) if p and Path(p).is_dir() else []

    return [Path(f) for f in cached_listing(("folder", p), walk)]


def model_files(cfg: RunConfig) -> list[Path]:
    """A local base model's files (so replacing the weights reruns the tokenizer stage)."""
    return _folder_files(cfg.model.name_or_path)


def decontamination_task_files(cfg: RunConfig) -> list[Path]:
    """The data of the tasks the mix decontaminates against: rebuilt tasks change the mix."""
    return _task_files(cfg.mix.decontamination.task_dirs or [])


def eval_task_files(cfg: RunConfig) -> list[Path]:
    """The data of the tasks eval scores: rebuilt tasks change the results."""
    return _task_files([*cfg.eval.task_dirs, *cfg.eval.probe.sets])


def eval_local_paths(cfg: RunConfig) -> list[Path]:
    """What eval reads outside ``run_dir``: its task files and an ``eval.base_model`` folder."""
    return eval_task_files(cfg) + _folder_files(cfg.eval.base_model)


def _task_files(dirs: list[str]) -> list[Path]:
    """Task data files under ``dirs`` (mix and eval both read them), listed once per command."""

    def walk() -> list[str]:
        files: list[Path] = []
        for d in dirs:
            root = Path(d)
            if root.is_dir():
                files.extend(
                    f
                    for f in root.rglob("*")
                    if f.is_file() and f.suffix in {".jsonl", ".json", ".yaml", ".yml"}
                )
        return [str(f) for f in sorted(files)]

    return [Path(f) for f in cached_listing(("tasks", *dirs), walk)]
