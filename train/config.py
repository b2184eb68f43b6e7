"""Config of the train stage. (Imports pydantic only: the CLI validates configs without torch.)

The block length is not a train knob: the mix stage packs the blocks and records ``seq_len`` in its
manifest, where the train stage reads it (config version 1 had ``train.seq_len``; it migrates to
``mix.seq_len``).

Fields declared ``json_schema_extra=NOT_FINGERPRINTED`` (log and checkpoint cadence, retention, retries,
threads per worker) cannot change the trained weights, so changing them keeps a finished train stage
done and an interrupted run resumes its checkpoints.

Fields declared ``CONTINUES_RUN`` (the budget ``tokens`` / ``max_steps``, the schedule shape, the early-
stop threshold) change the result, so the stage reruns, but they are left out of the state key that
checkpoints are keyed by (``ctx.state_key``): the rerun continues from the last checkpoint with the new
value (train/schedule.py says what that means for each schedule; the manifest's ``resumed`` records it).
Every other field (``lr``, ``seed``, the batch geometry, the optimizer, ...) changes what a checkpoint
means: its checkpoints are moved aside, never resumed (train/resume.py).

Defaults follow the continued-pretraining literature (see docs/training.md): re-warm the learning rate
over ~1% of the steps to a modest peak (3e-5..1e-4 for 1B-7B models, well below the original
pretraining peak) and re-decay it with cosine to ~10% of the peak. AdamW betas (0.9, 0.95) and weight
decay 0.1 are the usual LLM pretraining values.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dapt.pipeline.errors import ConfigError
from dapt.pipeline.knobs import CONTINUES_RUN, NOT_FINGERPRINTED


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- parallelism -------------------------------------------------------------------------------
    num_workers: int = Field(default=1, ge=1, le=4096)
    """Ray Train workers (processes); one per GPU when GPUs are used."""
    use_gpu: bool | None = None
    """None: use GPUs when the Ray cluster has any; True/False forces it."""
    cpus_per_worker: float = Field(default=1.0, gt=0, le=256, json_schema_extra=NOT_FINGERPRINTED)
    """CPUs Ray reserves per worker (and intra-op threads on CPU): speed, not the trajectory (thread
    counts can change float reduction order in the last bits, not the data, schedule or optimizer)."""
    sharding: Literal["ddp", "zero2", "zero3", "hybrid"] = "zero3"
    """ddp: replicated model (DDP). zero2: FSDP2 without resharding after forward (grads and optimizer
    state sharded, parameters kept gathered between forward and backward). zero3: FSDP2 ``fully_shard``
    per transformer block (parameters, grads, optimizer state sharded). hybrid: HSDP, shard within a
    group of ``hybrid_shard_size`` ranks (a node), replicate across groups."""
    hybrid_shard_size: int | None = Field(default=None, ge=1, le=4096)
    """Ranks per shard group for ``hybrid``; default: the workers on one node (GPUs per node)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Compute dtype. Master weights and optimizer state stay fp32; fp16 uses dynamic loss scaling."""
    mlm_whole_word: bool = False
    """mlm: choose whole words (every sub-token of a chosen word is predicted together; BERT's
    whole-word masking) instead of single tokens. Word starts come from the tokenizer: WordPiece pieces
    without ``##``, sentencepiece pieces with ``▁``, byte-level BPE tokens with ``Ġ`` or ``Ċ``."""
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    """Fraction of non-special tokens chosen for prediction when ``model.objective`` is mlm (dynamic
    masking: a new mask each time a block is read)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in backward: ~30% more compute, far less memory."""
    activation_checkpointing_every: int = Field(default=1, ge=1, le=1024, json_schema_extra=NOT_FINGERPRINTED)
    """With ``activation_checkpointing``: recompute every k-th transformer block only (1: all of them,
    full checkpointing; 2: every other block, selective). Memory for speed; the planner counts the
    blocks kept. Same math either way, so it is not fingerprinted."""
    attention: Literal["causal", "document"] = "causal"
    """causal: a token attends to every earlier token of its packed block, across document boundaries.
    document: attention stops at the document starts the mix stage recorded, and position ids restart
    at each document (Llama 3 found it matters for continued pretraining on long sequences). Why
    causal is the default: docs/training.md, "Attention across documents"."""
    loss_chunk_tokens: int = Field(default=1024, ge=0, le=1 << 24, json_schema_extra=NOT_FINGERPRINTED)
    """The output projection and the loss run over chunks of this many tokens, so the full ``[batch,
    seq, vocab]`` fp32 logits never exist (train/loss.py); 0: full logits (what model families outside
    ``train.loss.DIRECT_LOGITS`` get anyway). Same loss up to float rounding."""
    compile: bool = Field(default=False, json_schema_extra=NOT_FINGERPRINTED)
    """``torch.compile`` each transformer block (inductor), the FSDP2-friendly granularity. Needs a C++
    compiler on CPU workers and Triton on GPUs; refused with one line where they are missing. The
    first steps pay the compilation. Same math up to kernel rounding."""
    float8: bool = False
    """Float8 training of the linear layers (torchao ``convert_to_float8_training``, tensorwise
    scaling) on GPUs with float8 tensor cores (compute capability 8.9 or newer: L40S, H100, H200);
    refused on CPUs and older GPUs. The output projection stays in the compute dtype."""
    cpu_offload: bool = False
    """FSDP2 ``CPUOffloadPolicy``: sharded parameters, gradients and optimizer state in host memory,
    copied to the GPU per layer. GPU runs of a sharded strategy (zero2, zero3, hybrid) with at least two
    workers only: on CPU devices the state is in host memory already (the train stage refuses it before
    any worker starts), DDP keeps a full replica on each GPU, and one worker trains unsharded."""

    # --- batch and length ----------------------------------------------------------------------------
    micro_batch_size: int = Field(default=4, ge=1, le=65536)
    """Sequences per worker per forward/backward."""
    global_batch_tokens: int = Field(default=65536, ge=8, le=1 << 34)
    """Tokens per optimizer step over all workers; gradient accumulation makes up the difference. Rounded
    up to a multiple of ``micro_batch_size * seq_len * num_workers`` (``seq_len``: the mix manifest's
    block length; the manifest records the result)."""
    tokens: Annotated[int, Field(ge=1, le=1 << 50)] | Literal["auto"] | None = Field(
        default=None, union_mode="left_to_right", json_schema_extra=CONTINUES_RUN
    )
    """Training tokens; default one pass over the packed blocks. Rounded up to whole steps. Raising it
    continues the last checkpoint. ``auto``: the tokens ``dapt sweep`` recommends under
    ``sweep.compute_budget`` (its ``recommendation.yaml``)."""
    max_steps: int | None = Field(default=None, ge=1, le=1 << 31, json_schema_extra=CONTINUES_RUN)
    """Hard cap on optimizer steps (wins over ``tokens``). Raising it continues the last checkpoint."""

    # --- optimisation --------------------------------------------------------------------------------
    lr: float = Field(default=5e-5, gt=0, le=1.0)
    """Peak learning rate after re-warming. Continued pretraining uses a modest peak (Gupta et al. 2023;
    Ibrahim et al. 2024): high enough to adapt, low enough to limit forgetting."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, json_schema_extra=CONTINUES_RUN)
    """Final learning rate as a fraction of ``lr`` (re-decay to 10%)."""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = Field(
        default="cosine", json_schema_extra=CONTINUES_RUN
    )
    """Shape after warmup. wsd: warmup-stable-decay, constant until the last ``decay_fraction``; the run
    that extends it continues exactly from the checkpoint at the start of the decay. The schedule knobs
    continue a run like the budget does: the updates already made keep the old schedule."""
    warmup_fraction: float = Field(default=0.01, ge=0, le=1, json_schema_extra=CONTINUES_RUN)
    """Re-warm steps as a fraction of all steps (at least ``warmup_steps_min``). A continued run past
    the old warmup keeps the old warmup length."""
    warmup_steps_min: int = Field(default=0, ge=0, le=1 << 31, json_schema_extra=CONTINUES_RUN)
    decay_fraction: float = Field(default=0.2, gt=0, le=1, json_schema_extra=CONTINUES_RUN)
    """wsd only: fraction of steps spent decaying (linearly) to ``min_lr``."""
    weight_decay: float = Field(default=0.1, ge=0, le=10)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0, le=1e6)
    """Clip the global gradient norm to this (0 disables)."""

    # --- checkpoints, monitor, logging ---------------------------------------------------------------
    checkpoint_every: int = Field(default=200, ge=1, le=1 << 31, json_schema_extra=NOT_FINGERPRINTED)
    """Steps between DCP checkpoints (one is always written at the end). Resuming is bit-identical, so
    the cadence changes only how much work a crash costs."""
    keep_checkpoints: int = Field(default=2, ge=1, le=1000, json_schema_extra=NOT_FINGERPRINTED)
    """Complete checkpoints kept in the work folder (older ones are deleted)."""
    max_failures: int = Field(default=1, ge=0, le=1000, json_schema_extra=NOT_FINGERPRINTED)
    """Ray Train restarts after a worker failure, each resuming from the last checkpoint."""
    monitor_every: int = Field(default=100, ge=1, le=1 << 31)
    """Steps between forgetting-monitor evaluations (also run before the first and after the last step).
    Fingerprinted: early stopping (``max_general_regression``) is decided at these steps, so the cadence
    can change where training stops, and ``monitor.jsonl`` is an output."""
    monitor_max_tokens: int = Field(default=65536, ge=16, le=1 << 32)
    """Validation tokens per side (domain / general) used by the monitor: a cheap, fixed subsample."""
    max_general_regression: float | None = Field(default=None, gt=0, le=10, json_schema_extra=CONTINUES_RUN)
    """Stop early when general bits-per-byte exceeds the base model's by more than this fraction. The
    stop is saved in the checkpoint: a rerun does not train past it, unless this is raised or removed
    (the stored regression is re-checked against the new value and the run continues)."""
    export_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype of the exported weights. fp32 (default) reproduces the trained model's loss exactly; bf16
    halves the export for serving."""
    log_every: int = Field(default=10, ge=1, le=1 << 31, json_schema_extra=NOT_FINGERPRINTED)
    """Steps between rows of ``metrics.jsonl`` / TensorBoard (logging only)."""
    seed: int | None = None
    """Training seed (data order after the first epoch, RNG); default the run's top-level seed."""

    @field_validator("cpu_offload")
    @classmethod
    def _offload_needs_sharding(cls, v: bool, info: ValidationInfo) -> bool:
        """Refused rather than ignored: a user who asked for offload is counting on its memory saving."""
        if not v:
            return v
        if info.data.get("sharding") == "ddp":
            raise ValueError(
                "needs a sharded strategy (train.sharding: zero2, zero3 or hybrid); ddp keeps a full "
                "replica of the model state on every GPU, so there is nothing to offload shard by shard"
            )
        if info.data.get("num_workers") == 1:
            raise ValueError(
                "needs train.num_workers >= 2: one worker trains the model unsharded (no FSDP), so "
                "nothing would be offloaded"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.hybrid_shard_size is not None and self.num_workers % self.hybrid_shard_size:
            raise ValueError(
                f"hybrid_shard_size ({self.hybrid_shard_size}) must divide num_workers ({self.num_workers})"
            )
        return self

    def token_target(self, default: int) -> int:
        """The tokens to train: ``tokens``, else ``default`` (one pass over the packed blocks)."""
        if self.tokens == "auto":
            raise ConfigError(
                "train.tokens: auto reads the sweep's recommended tokens, and there is none yet: run "
                "`dapt sweep --config ...` first (or `dapt run`, which runs it)"
            )
        return default if self.tokens is None else self.tokens

    def grad_accum(self, seq_len: int) -> int:
        """Micro-batches per worker per optimizer step, for blocks of ``seq_len`` predicted tokens."""
        per_micro = self.micro_batch_size * seq_len * self.num_workers
        return max(1, -(-self.global_batch_tokens // per_micro))
