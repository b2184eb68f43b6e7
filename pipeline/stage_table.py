"""The stage table: every stage, what it runs, what it reads, and what makes it stale.

One row per stage (:class:`StageSpec`); the runner (pipeline/stages.py) reads it, the CLI makes a command
of each row. Kept apart from the runner so the table reads as the pipeline's one-page map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dapt.pipeline.config import RunConfig
from dapt.pipeline.inputs import (
    decontamination_task_files,
    eval_local_paths,
    eval_task_files,
    model_files,
    source_files,
)

if TYPE_CHECKING:
    from dapt.pipeline.stages import StageContext


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table: what the stage runs, what it reads, and what makes it stale."""

    name: str
    target: str | Callable[[StageContext], dict[str, Any] | None]
    """``module:function`` imported lazily, so ``dapt --help`` does not import torch (a callable is
    accepted for rows registered at run time, e.g. by tests)."""
    needs: tuple[str, ...]
    """Upstream stages whose manifests the stage reads (and whose fingerprints enter its own)."""
    config_keys: tuple[str, ...]
    """The config sections the stage reads; ``ctx.cfg`` exposes these and nothing else, and they are
    fingerprinted minus the fields declared ``NOT_FINGERPRINTED`` (see pipeline/knobs.py)."""
    inputs: Callable[[RunConfig], list[Path] | list[str]] | None = None
    help: str = ""
    ignore: tuple[str, ...] = ()
    """Config keys that do not affect this stage: a key of every list item (``sources.*.weight``) or one
    key of a section (``mix.domain_fraction``, which the sweep chooses rather than reads)."""
    chooses: tuple[str, ...] = ()
    """Config keys (``section.key``) the stage decides when the user writes ``auto`` (the sweep:
    ``train.tokens``): once the loader fills them in from the stage's output, the stage's own
    fingerprint still reads ``auto``, so its answer does not make it stale. A value set by hand is an
    input like any other."""
    describes_config: bool = False
    """The stage writes the config into its output (the report, the model card): every field it reads
    counts, including those declared ``NOT_FINGERPRINTED`` for the stages that only compute."""
    placement: Literal["driver", "worker"] = "driver"
    """``worker``: the body runs in one Ray task sized by ``resources`` (pipeline/placement.py), so its
    heavy work lands on a cluster node (a GPU for eval), not the head node where the driver runs."""
    resources: str | Callable[..., Any] | None = None
    """``module:function`` or callable ``(ctx, cluster) -> TaskResources``; None asks for one CPU."""
    uses_ray: bool = False
    """The stage puts work on Ray itself (Ray Data, Ray Train): on a multi-node cluster the runner first
    checks that ``run_dir`` and its input files are visible on every node. Worker stages always do."""
    shared_paths: Callable[[RunConfig], list[Path] | list[str]] | None = None
    """Local paths the stage's work reads besides ``run_dir``, for that check; None: ``inputs``."""


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec(
            "clean",
            "dapt.corpora.clean.stage:run",
            (),
            ("sources", "clean"),
            source_files,
            "read, normalise, filter, redact PII and deduplicate the sources",
            ignore=("sources.*.weight",),
            uses_ray=True,
        ),
        StageSpec(
            "split",
            "dapt.corpora.split.stage:run",
            ("clean",),
            ("split", "sources"),
            None,
            "hold out validation and test documents per source, before anything is fitted on the text",
            ignore=("sources.*.weight",),
            uses_ray=True,
        ),
        StageSpec(
            "tokenizer",
            "dapt.tokenizer.stage:run",
            ("clean", "split"),
            ("model", "tokenizer", "sources", "seed"),
            model_files,
            "train, extend or keep the tokenizer; resize and initialise the model's embeddings",
            placement="worker",
            resources="dapt.tokenizer.stage:resources",
        ),
        StageSpec(
            "sweep",
            "dapt.sweep.stage:run",
            ("clean", "split", "tokenizer"),
            ("sweep", "mix", "train", "sources", "seed"),
            None,
            "proxy runs over domain fractions x token budgets on Ray Tune, a fitted mixture law, the "
            "recommended fraction (read by mix.domain_fraction: auto)",
            ignore=("sources.*.weight", "mix.domain_fraction", "mix.replay"),
            chooses=("train.tokens",),
            uses_ray=True,
        ),
        StageSpec(
            "mix",
            "dapt.corpora.mix.stage:run",
            ("clean", "split", "tokenizer"),
            ("mix", "sources", "seed"),
            decontamination_task_files,
            "decontamination, token-exact domain/general mixing, packing",
            uses_ray=True,
        ),
        StageSpec(
            "train",
            "dapt.train.stage:run",
            ("tokenizer", "mix"),
            ("train", "seed", "plan"),
            None,
            "sharded continued pretraining on Ray Train (FSDP2 / DDP), resumable",
            uses_ray=True,
        ),
        StageSpec(
            "eval",
            "dapt.eval.stage:run",
            ("tokenizer", "split", "mix", "train"),
            ("eval", "seed"),
            eval_task_files,
            "bits-per-byte and lm-eval benchmarks, base vs adapted, quantized variants",
            placement="worker",
            resources="dapt.eval.stage:resources",
            shared_paths=eval_local_paths,
        ),
        StageSpec(
            "report",
            "dapt.eval.report.stage:run",
            ("clean", "split", "tokenizer", "mix", "train", "eval"),
            ("report", "plan", "sources", "model", "seed"),
            None,
            "HTML + Markdown evaluation report and the model card",
            describes_config=True,
        ),
        StageSpec(
            "publish",
            "dapt.train.publish:run",
            ("train", "report"),
            (),
            None,
            "the final model folder: the exported weights with the report's model card as README.md",
        ),
    ]
}
OPTIONAL_STAGES = ("sweep",)
"""Stages that ``dapt run`` runs only when the config asks for them (the sweep: ``mix.domain_fraction:
auto`` or ``train.tokens: auto``); each has its own command."""
STAGE_ORDER = [s for s in STAGES if s not in OPTIONAL_STAGES]
"""The stages ``dapt run`` runs, in order."""


def pipeline_stages(cfg: RunConfig) -> list[str]:
    """What ``dapt run`` runs for this config: the sweep first when it chooses a key (``auto``)."""
    wanted = {"sweep": "auto" in (cfg.mix.domain_fraction, cfg.train.tokens) or bool(cfg.from_sweep)}
    return [s for s in STAGES if s not in OPTIONAL_STAGES or wanted[s]]
