"""Gather what the upstream stages recorded: manifests, metrics/monitor rows, results.json, the model.

Nothing here computes a number the stages did not record. Missing stages, keys or files become None /
empty lists (and a line in :attr:`RunData.problems`), so the report renders with "not recorded" holes
instead of failing: a report is most needed exactly when a run went partly wrong.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapt.eval.report.doc import get, num
from dapt.pipeline.errors import DaptError
from dapt.pipeline.fsutil import safetensors_param_count

UPSTREAM = ("clean", "split", "tokenizer", "mix", "train", "eval")
"""The report stage's ``needs`` (pipeline/stages.py), in pipeline order: the default when a RunData is
built by hand; :func:`collect` takes the list from the stage table itself."""


@dataclass
class RunData:
    run_name: str
    cfg: Any
    """The report stage's view of the run config (``ctx.cfg``): only its declared sections (report, plan,
    sources, model, seed). Facts about other stages come from their manifests, never from here."""
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    monitor: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    model_dir: Path | None = None
    model_config: dict[str, Any] | None = None
    n_params: int | None = None
    problems: list[str] = field(default_factory=list)
    upstream: tuple[str, ...] = UPSTREAM
    """The stages the report read (its ``needs``), in order: the summary's stage table lists each."""

    def m(self, stage: str) -> dict[str, Any]:
        """The stage's manifest, or {} if the stage has none."""
        return self.manifests.get(stage, {})

    def output_path(self, stage: str, key: str) -> Path | None:
        """``outputs.<key>`` of a stage, resolved against its folder (paths may also be absolute)."""
        rel = get(self.m(stage), "outputs", key)
        if not isinstance(rel, str) or stage not in self.stage_dirs:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.stage_dirs[stage] / p

    def source_kind(self, source: str) -> str | None:
        """``domain`` / ``general`` for a source name (from the config, else the split or mix manifest)."""
        for s in getattr(self.cfg, "sources", []) or []:
            if s.name == source:
                return s.kind
        kind = get(self.m("split"), "sources", source)
        if kind not in ("domain", "general"):
            kind = get(self.m("mix"), "mix", "per_source", source, "kind")
        return kind if kind in ("domain", "general") else None

    def recorded(self, key: str) -> Any:
        """The first upstream manifest's value of a key every manifest carries (``versions``,
        ``git_revision``), or None."""
        return next((m[key] for m in self.manifests.values() if m.get(key)), None)

    def heldout_counts(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """``({source: {validation: n, test: n}}, stage that recorded them)``: the split stage's counts;
        a mix manifest written before the split stage existed carried them itself."""
        for stage in ("split", "mix"):
            held = self.m(stage).get("heldout")
            if isinstance(held, dict) and held and all(isinstance(v, dict) for v in held.values()):
                return held, stage
        return {}, None

    # ---- the results.json tables, whatever the exact key names turn out to be

    def metric_rows(self) -> list[dict[str, Any]]:
        rows = _first_list(self.results, ("metrics", "rows", "comparison", "comparisons", "results"))
        if rows is None:
            rows = _first_list(self.m("eval"), ("metrics",))
        return [r for r in rows or [] if isinstance(r, dict) and ("base" in r or "adapted" in r)]

    def quantization_rows(self) -> list[dict[str, Any]]:
        rows = _first_list(self.results, ("quantization", "quantized", "precisions"))
        if rows is None:
            rows = _first_list(self.m("eval"), ("quantization",))
        return [r for r in rows or [] if isinstance(r, dict) and "precision" in r]


def _first_list(obj: Any, keys: tuple[str, ...]) -> list[Any] | None:
    if isinstance(obj, list):
        return obj
    if not isinstance(obj, dict):
        return None
    for k in keys:
        v = obj.get(k)
        if isinstance(v, list):
            return v
        if isinstance(v, dict) and isinstance(v.get("rows"), list):
            return v["rows"]
    return None


def read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a killed writer) is skipped and noted, not fatal."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    problems.append(f"{path}:{i}: unreadable JSON line skipped")
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError as e:
        problems.append(f"{path}: {e.strerror or e}")
    return rows


def collect(ctx: Any) -> RunData:
    """Read every upstream stage through the StageContext (the runner's contract)."""
    log: logging.Logger = ctx.log
    data = RunData(run_name=ctx.cfg.name, cfg=ctx.cfg, upstream=tuple(ctx.spec.needs))
    for stage in data.upstream:
        try:
            data.manifests[stage] = ctx.upstream_manifest(stage)
            data.stage_dirs[stage] = Path(ctx.upstream_dir(stage))
        except DaptError as e:  # StageMissingError: render what exists
            data.problems.append(str(e))
            log.warning("%s", e)

    sweep = get(data.m("mix"), "fraction_from", "sweep_manifest")
    if sweep:  # the mix took its fraction from `dapt sweep`: its manifest, for the report's sweep section
        try:
            data.manifests["sweep"] = json.loads(Path(sweep).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            data.problems.append(f"sweep manifest {sweep} (named by the mix manifest): {e}")

    for key, attr in (("metrics", "metrics"), ("monitor", "monitor")):
        p = data.output_path("train", key)
        if p is None:
            data.problems.append(f"train manifest has no outputs.{key}")
        elif p.is_file():
            setattr(data, attr, read_jsonl(p, data.problems))
        else:
            data.problems.append(f"train outputs.{key} file {p} is missing")

    p = data.output_path("eval", "results")
    if p is None:
        data.problems.append("eval manifest has no outputs.results")
    else:
        try:
            data.results = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            data.problems.append(f"eval results {p}: {e}")

    model = data.output_path("train", "model")
    if model is not None and model.is_dir():
        data.model_dir = model
        cfg_file = model / "config.json"
        if cfg_file.is_file():
            try:
                data.model_config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                data.problems.append(f"{cfg_file}: {e}")
        try:
            data.n_params = safetensors_param_count(model)
        except (OSError, ValueError, KeyError, struct.error) as e:
            data.problems.append(f"cannot read safetensors headers in {model}: {e}")
    else:
        data.problems.append("train manifest's outputs.model folder is missing")
    if data.n_params is None:
        # The trainer (or the planner) records it too; a recorded number is still not an invented one.
        plan_params = num(data.m("train").get("params")) or num(get(data.m("train"), "plan", "params"))
        data.n_params = int(plan_params) if plan_params else None
    for msg in data.problems:
        log.info("report: %s", msg)
    return data
