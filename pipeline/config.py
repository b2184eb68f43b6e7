"""The run config: one YAML file per run, validated into typed models.

Each component owns its section's model (``corpora.clean.config.CleanConfig`` and so on); this module
only assembles them, so a change to one stage's knobs never touches another's file. Configs are read
with ``yaml.safe_load`` only and every model forbids unknown keys, so a typo is an error, not a no-op.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dapt.corpora.clean.config import CleanConfig, StepSpec
from dapt.corpora.mix.config import MixConfig
from dapt.corpora.split.config import SplitConfig
from dapt.eval.config import EvalConfig
from dapt.eval.report.config import ReportConfig
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import cached_listing, is_input_file
from dapt.pipeline.knobs import NOT_FINGERPRINTED
from dapt.sweep.config import SweepConfig
from dapt.tokenizer.config import TokenizerConfig
from dapt.train.config import TrainConfig
from dapt.train.plan.config import PlanConfig

CONFIG_VERSION = 2
"""2: ``train.seq_len`` is ``mix.seq_len`` (the block length is the mix stage's fact) and ``mix.split`` is
the top-level ``split`` section (held-out documents are chosen before the tokenizer sees any text)."""

MIGRATIONS: list[tuple[str, str]] = [("train.seq_len", "mix.seq_len"), ("mix.split", "split")]
"""Keys of config version 1 and where version 2 keeps them."""


def migrate(data: dict[str, Any], origin: str, overwrite: bool = False) -> list[str]:
    """Move version-1 keys to their version-2 place in ``data``; one note per key moved.

    A key given in both places of one file is an error (which would win is not obvious); an override on
    the command line (``overwrite``) replaces the value the file gave."""
    notes = []
    for old, new in MIGRATIONS:
        old_top, old_leaf = old.split(".")
        new_top, *new_leaf = new.split(".")
        section = data.get(old_top)
        if not isinstance(section, dict) or old_leaf not in section:
            continue
        value = section.pop(old_leaf)
        if not new_leaf:
            target, key = data, new_top
        else:
            if not isinstance(data.get(new_top), dict):
                data[new_top] = {}
            target, key = data[new_top], new_leaf[0]
        if key in target and not overwrite:
            raise ConfigError(f"{origin}: {old}: set {new} only ({old} is its config-version-1 name)")
        target[key] = value
        notes.append(f"{origin}: {old} is read as {new} (config version {CONFIG_VERSION}; rename it)")
    return notes


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "txt"}
_COMPRESSIONS = (".gz", ".zst")


def infer_format(path: str) -> str | None:
    """Format from a path or glob's suffix, ignoring a trailing .gz/.zst."""
    p = path
    for c in _COMPRESSIONS:
        if p.endswith(c):
            p = p[: -len(c)]
    return _FORMATS.get(Path(p).suffix.lower())


class SourceConfig(StrictModel):
    """One input corpus. ``kind`` decides which side of the mix it feeds and its default cleaning profile."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["domain", "general"]
    paths: list[str] = Field(min_length=1)
    format: Literal["jsonl", "parquet", "txt"] | None = None
    text_field: str = "text"
    id_field: str | None = None
    date_field: str | None = None
    txt_mode: Literal["file", "blocks"] = "file"
    """For ``txt``: one document per file, or one per blank-line-separated block."""
    steps: list[StepSpec] | None = None
    """Overrides the default cleaning steps of this source's kind (see docs/cleaning.md)."""
    weight: float = Field(default=1.0, gt=0)
    """Relative weight among the sources on the same side of the mix."""
    license: str | None = Field(default=None, json_schema_extra=NOT_FINGERPRINTED)
    provenance: str | None = Field(default=None, json_schema_extra=NOT_FINGERPRINTED)
    """Licence and provenance are reported (model card, data section), never change a stage's output."""

    @model_validator(mode="after")
    def _infer_format(self) -> SourceConfig:
        if self.format is None:
            fmts = {infer_format(p) for p in self.paths}
            if len(fmts) != 1 or None in fmts:
                raise ValueError(
                    f"cannot infer format from paths {self.paths}; set format: jsonl|parquet|txt"
                )
            self.format = fmts.pop()
        return self

    def files(self) -> list[str]:
        """The files the globs match, sorted (deterministic order matters for ids and resumption).
        Local paths, or URIs (``s3://``, ``gs://``, ``file://``...) read through ``pipeline.remote``."""
        out: set[str] = set()
        for pattern in self.paths:
            out.update(expand_pattern(pattern))
        return sorted(out)


def expand_pattern(pattern: str) -> list[str]:
    """Files matching one local glob (``~`` expanded, ``**`` recursive) or one object-storage URI glob.

    Listed once per command (``fsutil.input_facts``: the config check, every fingerprint and the clean
    stage's plan share the listing; a bucket listing is paged network calls), afresh outside one."""
    return cached_listing(("glob", pattern), lambda: _expand_pattern(pattern))


def _expand_pattern(pattern: str) -> list[str]:
    from dapt.pipeline import remote

    if remote.is_remote(pattern):
        return remote.expand(pattern)
    if remote.scheme(pattern):
        raise InputError(f"{pattern}: URI scheme not supported (supported: {', '.join(remote.SCHEMES)})")
    return [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if is_input_file(p)]


class FromConfigModel(StrictModel):
    """A model built from a config (random init): tiny test models, or training from scratch."""

    model_type: str = "llama"
    vocab_size: int = Field(default=32000, gt=0)
    hidden_size: int = Field(default=64, gt=0)
    intermediate_size: int = Field(default=128, gt=0)
    num_hidden_layers: int = Field(default=2, gt=0)
    num_attention_heads: int = Field(default=4, gt=0)
    num_key_value_heads: int | None = None
    max_position_embeddings: int = Field(default=2048, gt=0)
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


class ModelConfig(StrictModel):
    """The base model: a hub id or local HF folder (``name_or_path``), or ``from_config``."""

    name_or_path: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    """Tokenizer id/folder; defaults to ``name_or_path``. Needed with ``from_config`` unless the
    tokenizer stage trains one (``tokenizer.mode: replace``)."""
    from_config: FromConfigModel | None = None
    trust_remote_code: bool = False
    pretraining_tokens: float | None = Field(default=None, gt=0)
    """Tokens the base model was pretrained on, for the planner's continued-pretraining arithmetic."""
    objective: Literal["auto", "clm", "mlm", "span"] = "auto"
    """The pretraining objective the model is adapted with: ``clm`` causal LM (decoders), ``mlm``
    masked LM (BERT-style encoders), ``span`` T5's span corruption (encoder-decoders); ``auto``: the
    one the model's architecture was pretrained with. It lives here, not under ``train``, because it
    changes the tokenizer (mask or sentinel tokens), the mix (block lengths) and eval too: the
    tokenizer stage resolves it and records it in its manifest, where the later stages read it."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("set exactly one of name_or_path or from_config")
        return self

    @property
    def tokenizer_path(self) -> str | None:
        return self.tokenizer or self.name_or_path


class RayConfig(StrictModel):
    """How to reach Ray. ``address`` (or env RAY_ADDRESS) joins a cluster; otherwise a local one starts."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    object_store_memory_gb: float = Field(default=1.5, gt=0)
    stage_placement: Literal["auto", "driver"] = Field(default="auto", json_schema_extra=NOT_FINGERPRINTED)
    """``auto``: a stage whose row says ``placement="worker"`` (tokenizer, eval) runs its body in one Ray
    task sized for it (pipeline/placement.py); ``driver``: every stage body runs in the driver process
    (for pdb, or a test that monkeypatches the driver). Where the work runs cannot change what it writes."""


class TrackingConfig(StrictModel):
    """Where experiment tracking goes. A run-level section like ``ray``: it changes where numbers are
    copied to, never what a stage computes, so no stage's fingerprint reads it.

    ``tensorboard`` (default) keeps today's event files under ``train/tb`` and nothing else; ``mlflow``
    and ``wandb`` add one parent run per run folder with a child per stage (pipeline/tracking.py);
    ``none`` writes neither (``metrics.jsonl`` is always written: the report reads it)."""

    backend: Literal["tensorboard", "mlflow", "wandb", "none"] = "tensorboard"
    uri: str | None = None
    """MLflow tracking URI (``http://host:5000``, ``databricks``, ``sqlite:///...``); None: a local
    SQLite store at ``<run_dir>/mlruns/mlflow.db`` with artifacts beside it (MLflow 3 keeps local runs
    in a database; its plain-file store is in maintenance mode)."""
    experiment: str | None = None
    """MLflow experiment / W&B project; None: the run's ``name``."""
    entity: str | None = None
    """W&B entity (team); None: the account's default."""
    mode: Literal["offline", "online"] = "offline"
    """W&B mode. Offline by default: nothing leaves the machine until ``wandb sync <run_dir>/wandb``."""
    tensorboard: bool = True
    """Also write TensorBoard events under ``train/tb`` when the backend is mlflow or wandb."""

    @property
    def writes_tensorboard(self) -> bool:
        return self.backend == "tensorboard" or (self.backend in ("mlflow", "wandb") and self.tensorboard)


class RunConfig(StrictModel):
    """The whole run. Sections default to sensible values so a config can be a dozen lines."""

    config_version: int = Field(default=CONFIG_VERSION, ge=1, le=CONFIG_VERSION)
    """Version of the config layout; older layouts are migrated on load (see ``MIGRATIONS``)."""
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    run_dir: str | None = None
    seed: int = 0
    sources: list[SourceConfig] = Field(min_length=1)
    model: ModelConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    # Set by the loader, not by users: where the config came from (for messages and relative paths).
    config_path: str | None = Field(default=None, exclude=True)
    # Set by the loader, not by users: the ``auto`` keys a finished sweep's recommendation filled in
    # (dotted key -> its overlay file); the sweep's own fingerprint reads them as ``auto`` again.
    from_sweep: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate source names: {sorted(dup)}")
        kinds = {s.kind for s in v}
        if "domain" not in kinds:
            raise ValueError("at least one source must have kind: domain")
        return v

    @model_validator(mode="after")
    def _wire_sections(self) -> RunConfig:
        """The composition root's one cross-section default: the mix decontaminates against the tasks
        eval scores unless told otherwise. Filled in here so the mix stage reads only its own section
        (and its fingerprint follows the task list)."""
        d = self.mix.decontamination
        if d.tasks is None:
            d.tasks = list(self.eval.tasks)
        if d.task_dirs is None:
            d.task_dirs = list(self.eval.task_dirs)
        return self

    @model_validator(mode="after")
    def _sweep_budget(self) -> RunConfig:
        """The sweep's compute budget converts at the ``plan`` section's GPU, MFU and price unless it
        names its own: copied in here, so the sweep reads its own section and is fingerprinted by them."""
        budget = self.sweep.compute_budget
        if self.train.tokens == "auto" and budget is None:
            raise ValueError(
                "train.tokens: auto takes the sweep's recommended tokens, which it chooses only under a "
                "compute budget: set sweep.compute_budget (flops, gpu_hours or cost)"
            )
        if budget is None:
            return self
        for key in ("gpu", "peak_tflops", "mfu", "price_per_gpu_hour"):
            if getattr(budget, key) is None:
                setattr(budget, key, getattr(self.plan, key))
        if budget.cost is not None and budget.price_per_gpu_hour is None:
            raise ValueError(
                "sweep.compute_budget.cost: needs a price per GPU-hour (plan.price_per_gpu_hour or "
                "sweep.compute_budget.price_per_gpu_hour)"
            )
        return self

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def sources_of(self, kind: str) -> list[SourceConfig]:
        return [s for s in self.sources if s.kind == kind]

    def section(self, dotted: str) -> Any:
        """Value at a dotted key, as JSON-able data (used for fingerprints)."""
        node: Any = self.model_dump(mode="json")
        for part in dotted.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node


def _set_dotted(data: dict, key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"{origin}: override {key}: no list item {part!r}") from None
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        if not isinstance(node[part], dict | list):
            raise ConfigError(f"{origin}: override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"{origin}: override {key}: no list item {last!r}") from None
    else:
        node[last] = value


def parse_overrides(overrides: list[str], origin: str = "command line") -> list[tuple[str, Any]]:
    """``a.b=value`` pairs; values are YAML scalars/lists (``0.6``, ``true``, ``[a, b]``)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{origin}: override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"{origin}: override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{origin}: override {key}: cannot parse value {raw!r}: {e}") from None
        out.append((key, value))
    return out


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def format_validation_error(path: str, err: ValidationError) -> str:
    """The first error as one line, ``FILE: dotted.key: message`` (plus a count of the rest)."""
    errors = err.errors()
    first = errors[0]
    key = _loc(first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        value = first.get("input")
        while isinstance(value, dict) and len(value) == 1:  # name the whole dotted key the user wrote
            ((k, value),) = value.items()
            key = f"{key}.{k}"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return f"{path}: {key}: {msg}{more}"


def load_config(
    path: str | os.PathLike, overrides: list[str] | None = None, check_inputs: bool = False
) -> RunConfig:
    """Read, override, validate. Raises ConfigError with a one-line ``file: key: problem`` message."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    notes = migrate(data, path)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value, path)
    notes += migrate(data, "command line", overwrite=True)
    for note in notes:
        print(f"dapt: note: {note}", file=sys.stderr)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from None
    cfg.config_path = path
    resolve_sweep_choices(cfg)
    if check_inputs:
        check_input_files(cfg)
    return cfg


SWEEP_OVERLAY = ("sweep", "recommendation.yaml")


def resolve_sweep_choices(cfg: RunConfig) -> None:
    """``mix.domain_fraction: auto`` and ``train.tokens: auto`` become the finished sweep's
    recommendation (its overlay file); they stay ``auto`` until ``dapt sweep`` has run, and the stage
    that needs them then says so. ``cfg.from_sweep`` records what was filled in."""
    wanted = [
        (key, section, leaf)
        for key, section, leaf in (
            ("mix.domain_fraction", cfg.mix, "domain_fraction"),
            ("train.tokens", cfg.train, "tokens"),
        )
        if getattr(section, leaf) == "auto" or key in cfg.from_sweep
    ]
    folder = cfg.run_path / SWEEP_OVERLAY[0]
    if not wanted or not (folder / "_DONE").exists():
        return
    overlay_file = folder / SWEEP_OVERLAY[1]
    try:
        overlay = yaml.safe_load(overlay_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{overlay_file}: unreadable sweep recommendation ({e})") from None
    for key, section, leaf in wanted:
        top, _ = key.split(".")
        given = overlay.get(top) if isinstance(overlay, dict) else None
        if leaf == "tokens" and not (isinstance(given, dict) and leaf in given):
            # a sweep run without a compute budget: stale for this config, which reruns it first
            if cfg.from_sweep.pop(key, None):
                section.tokens = "auto"
            continue
        try:
            raw = given[leaf]
            value = float(raw) if leaf == "domain_fraction" else int(raw)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{overlay_file}: {key}: no usable value in the sweep recommendation ({e})"
            ) from None
        setattr(section, leaf, value)
        cfg.from_sweep[key] = str(overlay_file)


def check_input_files(cfg: RunConfig) -> None:
    """Every source glob must match at least one file (a missing corpus is a config error)."""
    where = cfg.config_path or "config"
    for i, src in enumerate(cfg.sources):
        for j, pattern in enumerate(src.paths):
            try:
                found = expand_pattern(pattern)
            except InputError as e:
                raise ConfigError(f"{where}: sources.{i}.paths.{j}: {e}") from None
            if not found:
                raise ConfigError(f"{where}: sources.{i}.paths.{j}: no file matches {pattern!r}")
    m = cfg.model
    if m.name_or_path and _looks_local(m.name_or_path) and not Path(m.name_or_path).exists():
        raise ConfigError(f"{where}: model.name_or_path: local path {m.name_or_path!r} does not exist")


def _looks_local(name: str) -> bool:
    """Hub ids are ``org/name``; anything starting with /, ./, ../ or ~ is a local path."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, written into the run folder."""
    return yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)
