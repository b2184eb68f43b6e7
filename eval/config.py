"""Config of the eval stage. (Imports pydantic only.)"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ProbeConfig(BaseModel):
    """The downstream probe of a masked LM (eval/probe.py): a classifier fine-tuned briefly from the base
    and from the adapted encoder on the same data, several seeds, accuracy and macro-F1 compared with a
    paired test (Gururangan et al. 2020). Runs only when the run's objective is ``mlm``."""

    model_config = ConfigDict(extra="forbid")

    sets: list[str] = Field(default_factory=list)
    """Folders with ``train.jsonl``, ``test.jsonl`` and ``probe.json`` (labels), as written by
    ``python -m dapt.eval.probe_data --out data/probe`` (GCIDE subject-labelled definitions: a
    finance/commerce/law set and a general topics set); empty: no probe."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """One fine-tuning run per seed and model (the head's init and the batch order)."""
    steps: int = Field(default=100, ge=1, le=100_000)
    lr: float = Field(default=5e-5, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    max_length: int = Field(default=128, ge=4, le=1 << 16)


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=list)
    """lm-eval task names (built-in, or the project's own YAML tasks under eval/tasks/)."""
    task_dirs: list[str] = Field(default_factory=lambda: ["data/eval_tasks"])
    """Extra folders of lm-eval task YAMLs (include paths), relative to the working directory. The
    default is where ``python -m dapt.eval.build_tasks`` writes the local WordNet tasks. ``eval/tasks/`` (the
    public financial benchmarks) is always included. Missing folders are skipped with a warning."""
    num_fewshot: int | None = Field(default=None, ge=0, le=64)
    """Few-shot examples for every task; None keeps each task's own default (BloombergGPT's settings in
    the shipped financial tasks). Examples are drawn with a fixed seed (``seed``)."""
    limit: int | None = Field(default=None, ge=1)
    """Score at most this many items per task (quick runs); None: all."""
    fail_on_unavailable: bool = False
    """A task whose data cannot be loaded (a hub dataset offline) is recorded as unavailable in
    results.json and skipped; True makes it an error instead."""

    heldout_splits: list[Literal["test", "validation"]] = Field(
        default_factory=lambda: ["test"], min_length=1
    )
    """Which held-out splits of the mix stage the bits-per-byte is measured on."""
    max_docs_per_source: int | None = Field(default=None, ge=1)
    """Cap on held-out documents per source (first N in file order); None: all."""
    max_length: int | None = Field(default=None, ge=8, le=1 << 20)
    """Window length in tokens for bits-per-byte and lm-eval; None: ``train.seq_len``."""
    stride: int | None = Field(default=None, ge=1, le=1 << 20)
    """New tokens scored per sliding window after the first. None: half the window, i.e. every token
    after the first window sees at least ``max_length / 2`` tokens of context (BloombergGPT)."""
    batch_size: int = Field(default=8, ge=1, le=4096)
    """Windows (bits-per-byte) and lm-eval requests (``hf`` backend) or packed rows (``dapt`` backend)
    per forward pass."""
    pll_batch_size: int = Field(default=64, ge=1, le=1 << 16)
    """Rows per forward pass of the pseudo-log-likelihood (masked LMs): a row is one window with one
    token masked, so a window of n tokens costs n rows; larger than ``batch_size`` because each row
    reads one position's logits only."""
    lm_backend: Literal["dapt", "hf"] = "dapt"
    """How lm-eval tasks are scored. ``dapt`` (eval/lm_backend.py): lm-eval's ``HFLM`` with each context
    run once for all its continuations and requests packed into rows, same log-likelihoods, less
    compute. ``hf``: lm-eval's stock ``HFLM``, for a run that must use exactly lm-eval's code path."""
    pack_tokens: int = Field(default=512, ge=16, le=1 << 16)
    """Row length the ``dapt`` backend packs requests into (its attention mask is pack_tokens² per row)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Precision the base and adapted models are compared in (the precision table is separate)."""

    compare_base: bool = True
    """Evaluate the base model too and report deltas. The base is the original pretrained model with its
    own tokenizer; for a ``model.from_config`` run (no pretrained base) the tokenizer stage's initial
    model is used instead."""
    base_model: str | None = None
    """Override the base model folder (an HF folder with its tokenizer)."""
    bootstrap_iters: int = Field(default=1000, ge=100, le=100_000)
    """Resamples for the paired bootstrap test and for lm-eval's standard errors."""
    alpha: float = Field(default=0.05, gt=0, lt=1)
    """A delta is marked significant when its Holm-adjusted paired-bootstrap p-value is below alpha
    (Holm within the rows behind one conclusion: the per-source bpb rows of a source kind, each pooled
    row alone, all task metrics); ``significant_raw`` keeps the uncorrected decision."""

    precisions: list[Literal["fp32", "bf16", "fp16", "int8"]] = Field(
        default_factory=lambda: ["fp32", "bf16", "fp16", "int8"]
    )
    """Precision variants of the adapted model for the quantization table (size in memory, on disk, and
    bits-per-byte per source). int8 is weight-only via torchao. Empty: no table."""
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    """Downstream classification probe for masked LMs (see :class:`ProbeConfig`)."""
    crosscheck_lmeval: bool = False
    """Also score the held-out text with lm-eval's ``loglikelihood_rolling`` (disjoint windows, the same
    context handling) for the adapted model, and record both values and the time each took."""

    @model_validator(mode="after")
    def _stride_fits(self) -> EvalConfig:
        if self.stride is not None and self.max_length is not None and self.stride > self.max_length:
            raise ValueError(f"stride ({self.stride}) must be <= max_length ({self.max_length})")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks: duplicate task names")
        return self
