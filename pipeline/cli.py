"""The `dapt` command. Stage subcommands share one shape: ``dapt STAGE --config FILE [key=value ...]``.

Heavy libraries (torch, ray, transformers) are imported only inside the command that needs them, so
`dapt --help` and config errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from dapt.pipeline.errors import ConfigError, DaptError
from dapt.pipeline.stages import STAGES  # noqa: E402  (pydantic only: --help stays fast)

STAGE_NAMES = list(STAGES)  # every stage command, the optional sweep included, in pipeline order

# Subcommands implemented by a component: (module exposing add_arguments(parser) and main(args) -> int, help).
EXTERNAL_COMMANDS = {
    "plan": (
        "dapt.train.plan.cli",
        "memory, compute, cost and Chinchilla arithmetic for a run, before it starts",
    ),
    "import-gguf": ("dapt.corpora.recipes.gguf", "import a GGUF model file into a Hugging Face model folder"),
    "corpus": ("dapt.corpora.recipes.cli", "build the demo corpora from installed Debian packages"),
}


def _add_config(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("--config", "-c", required=True, help="run config YAML (configs/*.yaml)")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def build_parser() -> argparse.ArgumentParser:
    from dapt.pipeline.stages import STAGES

    parser = argparse.ArgumentParser(
        prog="dapt", description="Domain-adaptive continued pretraining pipeline (clean -> report)."
    )
    parser.add_argument("--version", action="version", version=f"dapt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in STAGE_NAMES:
        p = sub.add_parser(name, help=STAGES[name].help, description=STAGES[name].help)
        _add_config(p)
        p.add_argument("--force", action="store_true", help="rerun even if up to date")
        if name == "train":
            p.add_argument("--no-preflight", action="store_true", help="skip the memory preflight check")
        if name == "publish":
            p.add_argument("--repo-id", help="also upload the model folder to this Hub repo (ORG/NAME)")
            p.add_argument("--private", action="store_true", help="create the repo private")
            p.add_argument("--endpoint", help="a private Hub's URL (default: HF_ENDPOINT or huggingface.co)")
            p.add_argument(
                "--dry-run", action="store_true", help="list what would be uploaded; upload nothing"
            )
            p.add_argument(
                "--with-report", action="store_true", help="upload report.html/.md to dapt-report/"
            )
    p = sub.add_parser("run", help="run every stage in order (each skipped when up to date)")
    _add_config(p)
    p.add_argument("--force", action="store_true", help="rerun every selected stage")
    p.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, help="first stage to run")
    p.add_argument("--to", dest="to_stage", choices=STAGE_NAMES, help="last stage to run")
    p.add_argument("--no-preflight", action="store_true", help="skip the train memory preflight check")
    p = sub.add_parser("status", help="show each stage as done / stale / missing / running")
    _add_config(p)
    p.add_argument("--watch", action="store_true", help="refresh until no stage runs (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes (--watch)")
    p.add_argument("--for", dest="for_s", type=float, help="stop watching after this many seconds")
    p = sub.add_parser("submit", help="run a stage (or `run`) as a Ray job on a cluster")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("stage", choices=[*STAGE_NAMES, "run", "status"])
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--address", help="job server, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    p.add_argument("--no-wait", action="store_true", help="submit and return without following the job")
    p = sub.add_parser(
        "cluster",
        help="start or stop a local Ray cluster on 127.0.0.1 (token auth on)",
        description="`up` starts a head plus N-1 worker nodes on 127.0.0.1 (token auth on, dashboard on "
        "loopback) and records every process it started in a state file; `down` stops exactly those.",
    )
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--nodes", type=int, default=1, help="Ray nodes, the head included (default 1)")
    p.add_argument(
        "--cpus-per-node",
        "--num-cpus",
        dest="cpus_per_node",
        type=int,
        default=None,
        help="CPUs each node offers (default: the machine's CPUs / nodes)",
    )
    p.add_argument("--object-store-gb", type=float, default=1.0, help="object store per node (default 1)")
    p.add_argument("--port", type=int, default=6379, help="GCS port of the head (default 6379)")
    p.add_argument(
        "--dashboard-port", type=int, default=8265, help="dashboard / job server port (default 8265)"
    )
    p.add_argument(
        "--state", help="state file recording the started pids (default ~/.dapt/cluster-PORT.json)"
    )
    for cmd, (module, help_) in EXTERNAL_COMMANDS.items():
        p = sub.add_parser(cmd, help=help_, description=help_)
        p.set_defaults(_external=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ImportError as e:  # a component not installed in this checkout
            p.set_defaults(_import_error=str(e))
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dapt-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def _cmd_stage(args: argparse.Namespace) -> int:
    from dapt.pipeline.config import load_config
    from dapt.pipeline.stages import run_stage

    cfg = load_config(args.config, args.overrides, check_inputs=args.command == "clean")
    extra: dict = {"preflight": not getattr(args, "no_preflight", False)}
    hub = getattr(args, "repo_id", None)
    if hub:  # the upload happens in the stage body: run it even when the folder is up to date
        keys = ("repo_id", "private", "endpoint", "dry_run", "with_report")
        extra["hub"] = {k: getattr(args, k) for k in keys}
    man = run_stage(cfg, args.command, force=args.force or bool(hub), extra=extra)
    if hub:
        _print_hub(man.get("hub") or {})
    return 0


def _print_hub(rec: dict) -> None:
    """What ``dapt publish --repo-id`` uploaded, or with ``--dry-run`` would upload."""
    verb = "would upload" if rec.get("dry_run") else "uploaded"
    print(f"{verb} {len(rec.get('files', []))} files ({rec.get('bytes', 0):,} bytes) to {rec.get('repo_id')}")
    for f in rec.get("files", []):
        print(f"  {f['path']}  {f['bytes']:,} bytes")
    card = rec.get("card", {})
    print(f"model card: ok ({card.get('eval_results', 0)} evaluation results, license {card.get('license')})")
    if rec.get("commit_url"):
        print(f"commit: {rec['commit_url']}")


def _cmd_run(args: argparse.Namespace) -> int:
    from dapt.pipeline.config import load_config
    from dapt.pipeline.stages import pipeline_stages, run_pipeline

    cfg = load_config(args.config, args.overrides, check_inputs=True)
    order = pipeline_stages(cfg)
    for flag in (args.from_stage, args.to_stage):
        if flag and flag not in order:
            raise ConfigError(f"--from/--to {flag}: not a stage this config runs ({', '.join(order)})")
    lo = order.index(args.from_stage) if args.from_stage else 0
    hi = order.index(args.to_stage) if args.to_stage else len(order) - 1
    run_pipeline(cfg, order[lo : hi + 1], force=args.force, extra={"preflight": not args.no_preflight})
    report = cfg.run_path / "report" / "report.html"
    if report.exists():
        print(f"report: {report.resolve()}")
    published = cfg.run_path / "publish" / "model"
    if published.exists():
        print(f"model: {published.resolve()}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import time

    from dapt.pipeline.config import load_config
    from dapt.pipeline.fsutil import forget_input_facts
    from dapt.pipeline.progress import stage_view
    from dapt.pipeline.ray_runtime import dashboard_hint
    from dapt.pipeline.stages import pipeline_stages, stage_dir, stage_status

    cfg = load_config(args.config, args.overrides)
    started = time.monotonic()
    while True:
        lines = [f"run {cfg.name}: {cfg.run_path}", f"Ray dashboard: {dashboard_hint(cfg.ray)}"]
        memo: dict[str, str] = {}  # each stage's status once (main's input_facts: each input listed once)
        whole = stage_view(cfg.run_path, "run")
        running = whole is not None and whole.state == "running"
        if whole is not None:
            lines.append(f"  {'dapt run':<10} {whole.state:<8} {whole.detail.removeprefix('starting ')}")
        for name in pipeline_stages(cfg):
            view = stage_view(cfg.run_path, name)
            if view is not None:
                running = running or view.state == "running"
                lines.append(f"  {name:<10} {view.state:<8} {view.detail}")
            else:
                lines.append(f"  {name:<10} {stage_status(cfg, name, memo):<8} {stage_dir(cfg, name)}")
        if args.watch and sys.stdout.isatty():
            print("\033[2J\033[H", end="")  # clear the terminal, as `watch` does
        print("\n".join(lines), flush=True)
        if not args.watch or not running and time.monotonic() - started > args.interval:
            return 0
        if args.for_s is not None and time.monotonic() - started + args.interval > args.for_s:
            return 0
        time.sleep(args.interval)
        forget_input_facts()  # the stage wrote meanwhile: list and stat the inputs afresh


def _cmd_submit(args: argparse.Namespace) -> int:
    from dapt.pipeline.cluster import submit
    from dapt.pipeline.config import load_config

    load_config(args.config, args.overrides)  # fail fast here rather than on the cluster
    return submit(args.config, args.stage, args.overrides, address=args.address, wait=not args.no_wait)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from dapt.pipeline.cluster import cluster_command

    return cluster_command(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **{name: _cmd_stage for name in STAGE_NAMES},
    "run": _cmd_run,
    "status": _cmd_status,
    "submit": _cmd_submit,
    "cluster": _cmd_cluster,
}


def main(argv: list[str] | None = None) -> int:
    from dapt.pipeline import quiet
    from dapt.pipeline.fsutil import input_facts
    from dapt.pipeline.ray_runtime import reap_orphans

    quiet.install()  # before any stage imports transformers (and through it torchao)
    reap_orphans()  # Ray processes a SIGKILLed earlier run left behind (its own only)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # One command, one view of the inputs: each source glob listed and each input file stat-ed once
        # (pipeline/fsutil.py, input_facts), and afresh by the next command even in the same process.
        with input_facts():
            if getattr(args, "_external", None):
                if getattr(args, "_import_error", None):
                    raise DaptError(f"`dapt {args.command}` is unavailable: {args._import_error}")
                return int(importlib.import_module(args._external).main(args) or 0)
            return COMMANDS[args.command](args)
    except DaptError as e:
        _leave_ray()
        print(f"dapt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dapt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        tb = traceback.format_exc()
        first = (str(e).strip().splitlines() or [""])[0]  # a RayTaskError carries the worker's traceback
        _leave_ray()
        print(f"dapt: error: {type(e).__name__}: {first}", file=sys.stderr)
        print(
            "(the traceback is in the stage log under <run_dir>/logs/; set DAPT_DEBUG=1 to print it)",
            file=sys.stderr,
        )
        if os.environ.get("DAPT_DEBUG"):
            print(tb, file=sys.stderr)
        return 1
    finally:
        _leave_ray()


def _leave_ray() -> None:
    """Stop the Ray this command started, or leave the cluster it joined. Called before an error line
    is printed: Ray forwards worker log lines to the driver until it disconnects, and one arriving
    after the error (Ray Train's placement-group cleaner logs as it exits) would bury the one line
    the user needs under Ray's."""
    if "ray" in sys.modules:
        from dapt.pipeline.ray_runtime import shutdown_ray

        shutdown_ray()


if __name__ == "__main__":
    sys.exit(main())
