"""``TrainSpec``: what one training worker needs, as one typed, frozen value.

The driver (``train.stage``) builds it from the ``train:`` config section and the upstream manifests;
Ray Train pickles it to every worker, where ``train.loop.train_loop`` runs it. It imports neither
torch nor pydantic, so the driver can build it and a test can write one by hand. Every field is a
plain value (str, int, float, bool, None, a dict of plain values), so the spec also round-trips
through JSON (:meth:`TrainSpec.from_dict`), which is how scripts such as ``bench/gpu_check.py`` call
the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dapt.train.schedule import PLAN_KEYS

HYPERPARAMETERS = (
    "objective",
    "mlm_probability",
    "mlm_whole_word",
    "span_noise_density",
    "span_mean_length",
    "lr",
    "min_lr_ratio",
    "schedule",
    "warmup_steps",
    "decay_fraction",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "micro_batch_size",
    "grad_accum",
    "seq_len",
    "activation_checkpointing",
    "activation_checkpointing_every",
    "attention",
    "loss_chunk_tokens",
    "compile",
    "float8",
    "cpu_offload",
    "seed",
)
"""The spec fields the train manifest records under ``hyperparameters``."""


@dataclass(frozen=True)
class TrainSpec:
    """One training run as a worker sees it. Paths are absolute strings (workers may run elsewhere)."""

    # --- data and length -------------------------------------------------------------------------
    data_path: str
    """The mix stage's packed blocks: an ``(n, seq_len + 1)`` ``.npy`` array."""
    seq_len: int
    """Predicted tokens per block (the mix manifest's ``seq_len``)."""
    steps: int
    """Optimizer steps of the whole run (a resumed attempt stops at the same step)."""
    checkpoint_dir: str
    log_dir: str
    """``metrics.jsonl``, ``monitor.jsonl``, ``tb/`` and ``summary.json`` (rank 0)."""

    # --- model -----------------------------------------------------------------------------------
    model_path: str | None = None
    """A local HF folder or hub id; None: random init from ``model_config``."""
    model_revision: str | None = None
    """Hub revision of ``model_path`` (and of ``tokenizer_path`` when it is the same id)."""
    model_config: dict[str, Any] | None = None
    """``transformers`` config fields (``model_type`` first) for a model built from a config."""
    init_seed: int = 0
    """Seed of the random init of a model built from ``model_config``."""
    tokenizer_path: str | None = None
    """Saved with the export, so the exported folder loads with ``AutoTokenizer``."""

    # --- objective ---------------------------------------------------------------------------------
    objective: str = "clm"
    """``clm``, ``mlm`` or ``span`` (train.objectives); the stage resolves ``auto`` from the model."""
    mlm_probability: float = 0.15
    mlm_whole_word: bool = False
    span_noise_density: float = 0.15
    span_mean_length: float = 3.0

    # --- parallelism and precision ---------------------------------------------------------------
    sharding: str = "zero3"
    hybrid_shard_size: int | None = None
    precision: str = "bf16"
    activation_checkpointing: bool = False
    activation_checkpointing_every: int = 1
    """Recompute every k-th block only (with ``activation_checkpointing``)."""
    attention: str = "causal"
    """``causal`` or ``document`` (position ids restart per document; attention stays inside it)."""
    loss_chunk_tokens: int = 1024
    """Tokens per chunk of the chunked output projection + loss (``train.loss``); 0: full logits."""
    compile: bool = False
    """``torch.compile`` per transformer block."""
    float8: bool = False
    """torchao float8 training of the linear layers (GPUs of compute capability 8.9+)."""
    cpu_offload: bool = False
    use_gpu: bool = False
    cpu_threads: int | None = None
    """Intra-op threads per worker on CPU (None: leave torch's default)."""
    under_ray: bool = False
    """Set by the launcher: device and local world size come from Ray Train's context."""

    # --- batch, schedule, optimizer --------------------------------------------------------------
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-5
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0

    # --- checkpoints, monitor, logs, export ------------------------------------------------------
    fingerprint: str = ""
    """The train stage's fingerprint (recorded in each checkpoint)."""
    state_key: str = ""
    """The train stage's state key (``ctx.state_key``): only checkpoints carrying it are resumed;
    empty: the fingerprint (loop-level callers such as tests and bench scripts)."""
    checkpoint_meta: dict[str, Any] | None = None
    """Stored as-is in every checkpoint's ``trainer.json`` (``meta``): the state-relevant config and the
    CONTINUES_RUN values, so a later run can name what changed (see ``train.resume``)."""
    discard_after_checkpoint: tuple[str, ...] = ()
    """Set-aside checkpoint folders rank 0 deletes once this run has written its first checkpoint."""
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    final_checkpoint: bool = True
    monitor_path: str | None = None
    """Pre-tokenised monitor windows (``.npz``, see ``train.monitor``); None: no monitor."""
    monitor_every: int = 100
    max_general_regression: float | None = None
    log_every: int = 10
    progress: bool = True
    tracking: dict[str, Any] | None = None
    """The train stage's child run in the experiment tracker (``pipeline.tracking.TrackingTarget`` as a
    dict): rank 0 streams its curves into it; None: no tracker."""
    tensorboard: bool = True
    progress_run_dir: str | None = None
    """The run folder: rank 0 writes its step count there for ``dapt status --watch``; None: not."""
    """Rank 0 also writes TensorBoard events under ``log_dir/tb``."""
    export_dir: str | None = None
    export_dtype: str = "fp32"

    # --- fault injection (tests of crash recovery) -----------------------------------------------
    fail_at_step: int | None = None
    """The last rank raises at this step (once, when ``fail_marker`` is given)."""
    fail_marker: str | None = None
    pause_at_step: int | None = None
    """Every rank holds at this step (once, when ``pause_marker`` is given) so a test can kill a node
    at a known point of the run; rank 0 writes the marker when the pause starts."""
    pause_marker: str | None = None
    pause_s: float = 300.0
    """Longest pause: the worker group is normally torn down long before (a killed node's rank dies)."""

    def __post_init__(self) -> None:
        if self.model_path is None and self.model_config is None:
            raise ValueError("TrainSpec: give model_path or model_config")
        for name in ("seq_len", "steps", "micro_batch_size", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainSpec.{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "discard_after_checkpoint", tuple(self.discard_after_checkpoint))

    @property
    def checkpoint_key(self) -> str:
        return self.state_key or self.fingerprint

    def lr_plan(self) -> dict[str, Any]:
        """What every update's learning rate depends on (``train.schedule.PLAN_KEYS``)."""
        return {k: getattr(self, k) for k in PLAN_KEYS}

    def replace(self, **changes: Any) -> TrainSpec:
        return dataclasses.replace(self, **changes)

    def hyperparameters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HYPERPARAMETERS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainSpec:
        """A spec from plain keys; an unknown key is an error (a typo must not be a silent no-op)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"TrainSpec: unknown field(s) {unknown}")
        return cls(**dict(d))


def as_spec(spec: TrainSpec | Mapping[str, Any]) -> TrainSpec:
    return spec if isinstance(spec, TrainSpec) else TrainSpec.from_dict(spec)
