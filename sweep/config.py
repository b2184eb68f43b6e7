"""The ``sweep:`` section: proxy runs over domain fractions x token budgets, and what to recommend."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dapt.pipeline.knobs import NOT_FINGERPRINTED


def token_budgets(v: list[int]) -> list[int]:
    """Distinct positive token counts, sorted."""
    if any(b < 1 for b in v) or len(set(v)) != len(v):
        raise ValueError(f"budgets must be distinct positive token counts, got {v}")
    return sorted(v)


class ScalingGridConfig(BaseModel):
    """A small N x D grid for Chinchilla's approach 3 on the run's own data (``model.from_config``
    families only: the sizes are built from the run's config with these overrides)."""

    model_config = ConfigDict(extra="forbid")

    sizes: list[dict[str, int]] = Field(min_length=2)
    """Overrides of ``model.from_config`` per size, e.g. ``{hidden_size: 64, intermediate_size: 128}``."""
    budgets: list[int] = Field(min_length=2)
    """Training tokens per run of each size."""
    fraction: float = Field(default=0.5, gt=0, lt=1)
    """The domain fraction of these runs."""
    flops: float | None = Field(default=None, gt=0)
    """The compute budget for the compute-optimal N and D; None: ``sweep.compute_budget``'s FLOPs, else
    6 x the run's model size x its target tokens."""

    _budgets = field_validator("budgets")(classmethod(lambda cls, v: token_budgets(v)))

    @model_validator(mode="after")
    def _enough_runs(self) -> ScalingGridConfig:
        if len(self.sizes) * len(self.budgets) < 7:
            raise ValueError(
                f"{len(self.sizes)} sizes x {len(self.budgets)} budgets: approach 3 fits 5 parameters "
                "and needs at least 7 runs"
            )
        return self


class ComputeBudgetConfig(BaseModel):
    """What the target run may spend, in one unit: the recommendation then chooses its token budget too
    (up to what this buys at ``dapt plan``'s FLOPs per token; sweep/budget.py)."""

    model_config = ConfigDict(extra="forbid")

    flops: float | None = Field(default=None, gt=0)
    """Training FLOPs (PaLM's count, as ``dapt plan`` gives it)."""
    gpu_hours: float | None = Field(default=None, gt=0)
    """GPU-hours of ``plan.gpu`` at ``plan.mfu`` (else the MFU a finished train stage measured, else 0.40)."""
    cost: float | None = Field(default=None, gt=0)
    """Money, at ``price_per_gpu_hour``."""
    # The conversion from GPU-hours or money; None: the ``plan`` section's value, filled in on load so
    # that the sweep's fingerprint follows it (``plan`` itself is not fingerprinted: it computes nothing).
    gpu: str | None = None
    """The GPU whose peak FLOP/s a GPU-hour has (``plan.gpu``; train/plan/gpus.py lists them)."""
    peak_tflops: float | None = Field(default=None, gt=0)
    """Override of that peak (``plan.peak_tflops``)."""
    mfu: float | None = Field(default=None, gt=0, le=1)
    """Model FLOPs utilisation (``plan.mfu``, else 0.40, stated as assumed)."""
    price_per_gpu_hour: float | None = Field(default=None, gt=0)
    """``plan.price_per_gpu_hour``; a ``cost`` budget needs one."""

    @model_validator(mode="after")
    def _one_unit(self) -> ComputeBudgetConfig:
        given = [k for k in ("flops", "gpu_hours", "cost") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of flops, gpu_hours, cost (got {given or 'none'})")
        return self


class SweepConfig(BaseModel):
    """Proxy continued-pretraining runs (``dapt sweep``), each from the run's real base model (after the
    tokenizer stage) on a mix of ``fraction`` domain tokens and ``budget`` tokens in all, scored on the
    validation split by the forgetting monitor; a mixture law fitted per side; the recommended fraction.

    Defaults follow D-CPT Law's setup in miniature: 5 fractions, 3 budgets, the least the law's budget
    term can be fitted to (simpler laws are used below that; the manifest says which)."""

    model_config = ConfigDict(extra="forbid")

    fractions: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9], min_length=2)
    """Domain fractions r in (0, 1) to try."""
    budgets: list[int] = Field(default_factory=lambda: [1 << 19, 1 << 20, 1 << 21], min_length=1)
    """Training tokens per proxy run. Three or more for D-CPT's budget term, which carries the fit to the
    target run's budget; with two, a simpler law is fitted (sweep/fit.py says why)."""
    max_general_regression: float = Field(default=0.02, ge=0)
    """The largest predicted relative rise of general validation bits-per-byte over the base model that a
    recommendation may have (0.02: +2%)."""
    target_tokens: int | None = Field(default=None, gt=0)
    """The target run's token budget (the recommendation's D); None: ``train.tokens``, else the largest
    sweep budget. The sweep's cost is reported as a fraction of it. Not with ``compute_budget``."""
    compute_budget: ComputeBudgetConfig | None = None
    """Choose the token budget as well: the (fraction, tokens) with the largest predicted domain gain
    among budgets up to what this buys; ``train.tokens: auto`` then trains the recommended tokens."""
    concurrency: int = Field(default=2, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    """Trials at once (Ray Tune's ``max_concurrent_trials``); Ray also caps it by the cluster's CPUs/GPUs."""
    cpus_per_trial: float = Field(default=1.0, gt=0, json_schema_extra=NOT_FINGERPRINTED)
    gpus_per_trial: float = Field(default=0.0, ge=0, json_schema_extra=NOT_FINGERPRINTED)
    max_failures: int = Field(default=2, ge=0, json_schema_extra=NOT_FINGERPRINTED)
    """Retries of a failed trial; a retry resumes from the trial's last checkpoint."""
    checkpoint_every: int = Field(default=50, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    bootstrap: int = Field(default=200, ge=10)
    """Bootstrap refits for the parameter and prediction intervals."""
    confidence: float = Field(default=0.9, gt=0, lt=1)
    seed: int | None = None
    scaling: ScalingGridConfig | None = None
    """Also fit L(N, D) from runs of several sizes (Chinchilla approach 3) and give the compute-optimal
    size and tokens, set against the published fits in the report."""

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0 < r < 1]
        if bad:
            raise ValueError(f"every fraction must be in (0, 1), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("fractions repeat")
        return sorted(v)

    _budgets = field_validator("budgets")(classmethod(lambda cls, v: token_budgets(v)))

    @model_validator(mode="after")
    def _one_target(self) -> SweepConfig:
        if self.target_tokens is not None and self.compute_budget is not None:
            raise ValueError("set sweep.target_tokens or sweep.compute_budget, not both")
        return self
