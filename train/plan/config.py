"""The ``plan:`` section of the run config: hardware and cost assumptions of ``dapt plan`` and the
train preflight. (Imports pydantic only.)

The training knobs themselves (sharding, precision, micro-batch, checkpointing, workers, tokens) are
read from the ``train:`` section, so the plan always describes the run that would start.

Every field here is declared ``NOT_FINGERPRINTED``: the section is read by the train stage only for its
preflight, which either lets the run start or refuses it (``PreflightError``) and never changes a step,
a batch or a weight. Changing a planning assumption (the GPU type, the price, the assumed MFU) therefore
keeps a finished train stage done; its manifest's ``plan`` stays the preflight as it was when that
training ran, and ``dapt plan`` prints the plan under the new assumptions. (The report, which describes
the config, still counts every field.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dapt.pipeline.knobs import NOT_FINGERPRINTED

_NF = NOT_FINGERPRINTED


class PlanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpu: str = Field(default="H100-80GB", json_schema_extra=_NF)
    """GPU type for ``dapt plan`` (memory and peak FLOP/s from the table in train/plan/gpus.py:
    H200-141GB, H100-80GB, H100-PCIe-80GB, A100-80GB, A100-40GB, L40S-48GB, A10G-24GB, L4-24GB,
    RTX4090-24GB, V100-32GB, T4-16GB, MI300X-192GB). The preflight uses the device it runs on."""
    gpu_mem_gib: float | None = Field(default=None, gt=0, le=4096, json_schema_extra=_NF)
    """Override the GPU's memory (GiB, as the driver reports it)."""
    peak_tflops: float | None = Field(default=None, gt=0, le=100000, json_schema_extra=_NF)
    """Override the GPU's dense peak TFLOP/s in the run's precision."""
    gpus_per_node: int = Field(default=8, ge=1, le=64, json_schema_extra=_NF)
    """GPUs per node: the shard group of ``hybrid`` sharding when ``train.hybrid_shard_size`` is unset."""
    headroom_fraction: float = Field(default=0.08, ge=0, le=0.9, json_schema_extra=_NF)
    """Share of device memory kept free: the CUDA context, NCCL buffers and allocator fragmentation are
    outside the estimate (which is calibrated against ``torch.cuda.max_memory_allocated``)."""
    mfu: float | None = Field(default=None, gt=0, le=1, json_schema_extra=_NF)
    """Model FLOPs utilisation for time and cost. Default: the MFU measured by a finished train stage of
    this run when there is one, else 0.40 (stated as assumed)."""
    price_per_gpu_hour: float | None = Field(default=None, ge=0, le=10000, json_schema_extra=_NF)
    """Price of one GPU-hour (any currency) for the cost line; no default, prices vary too much."""
    flash_attention: bool = Field(default=True, json_schema_extra=_NF)
    """Attention that does not keep the s×s score matrix (SDPA flash / memory-efficient kernels)."""
    layout: Literal["torch", "deepspeed"] = Field(default="torch", json_schema_extra=_NF)
    """Model-state bookkeeping: ``torch`` (FSDP2/DDP as dapt trains: fp32 master params) or ``deepspeed``
    (the ZeRO paper's 16-bit params + fp32 master in the optimizer)."""
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", json_schema_extra=_NF)
    """Optimizer whose states are counted (dapt's train stage uses AdamW)."""
    tokens: float | None = Field(default=None, gt=0, json_schema_extra=_NF)
    """Training tokens when the train section does not fix them (``train.tokens`` / ``max_steps``);
    otherwise the mix stage's token count when it has run."""
