"""What the train driver settles before any worker starts: the objective the mix packed for (and its
special tokens), options that need a GPU, the planner's preflight, and the forgetting monitor's
windows. Each failure here is one line from the driver instead of an error in every Ray worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError
from dapt.pipeline.stages import StageContext
from dapt.train.config import TrainConfig
from dapt.train.spec import TrainSpec


def resolve_objective(tc: TrainConfig, spec: TrainSpec, mix: dict[str, Any]) -> tuple[str, Any]:
    """The objective the mix stage packed for (resolved from ``model.objective`` by the tokenizer
    stage; a mix manifest from before objectives were recorded packed causal-LM blocks) and its token
    roles (None for clm), which the monitor windows use too. Document masking is a causal-LM option;
    the other objectives' tokens are checked here, before any worker starts."""
    from dapt.train.loop import spec_token_roles
    from dapt.train.setup import load_model_config

    objective = str(mix.get("objective") or "clm")
    if objective == "clm":
        return objective, None
    if tc.attention == "document":
        raise ConfigError(
            f"train.attention: document applies to causal LM training; this run's objective is {objective}"
        )
    try:
        vocab = int(load_model_config(spec).vocab_size)
        return objective, spec_token_roles(spec.replace(objective=objective), vocab)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def preflight_plan(ctx: StageContext, spec: TrainSpec, facts: dict[str, Any]) -> dict[str, Any] | None:
    """The plan of this run on the device it will use; raises PreflightError if it cannot fit."""
    if not ctx.extra.get("preflight", True):
        return None
    try:
        from dapt.train.plan.preflight import preflight
    except ImportError:
        ctx.log.info("preflight: train.plan.preflight not available; skipped")
        return None
    from dapt.train.setup import load_model_config

    mem = None
    kind = "cpu"
    if spec.use_gpu:
        try:
            import torch

            if torch.cuda.is_available():
                kind = torch.cuda.get_device_name(0)
                mem = int(torch.cuda.get_device_properties(0).total_memory)
            else:
                kind = "cuda"
        except Exception:  # the driver may sit on a CPU-only head node
            kind = "cuda"
    else:
        import psutil

        mem = int(psutil.virtual_memory().total)
    return preflight(
        ctx.cfg,
        load_model_config(spec),
        kind,
        mem,
        seq_len=spec.seq_len,
        pretraining_tokens=facts.get("pretraining_tokens"),
        objective=spec.objective,
        span_noise_density=spec.span_noise_density,
        span_mean_length=spec.span_mean_length,
    )


def refuse_gpu_only(tc: TrainConfig, use_gpu: bool) -> None:
    """``train.cpu_offload`` or ``train.float8`` on CPU workers is a ConfigError, before any worker starts.

    Why not ignore them: on a CPU device the parameters, gradients and optimizer state already live in
    host memory, so FSDP2's CPUOffloadPolicy has nothing to move (checked: with ``pin_memory=False`` it
    is a no-op, with its default ``pin_memory=True`` it raises "Cannot access accelerator device");
    float8 matmuls need float8 tensor cores. A user who asked for either is counting on a saving that
    a GPU run would give and this one not."""
    why = "train.use_gpu: false" if tc.use_gpu is False else "the Ray cluster has no GPU"
    if tc.cpu_offload and not use_gpu:
        raise ConfigError(
            f"train.cpu_offload: this run computes on CPUs ({why}), where parameters, gradients and "
            "optimizer state already live in host memory; FSDP2 CPU offload is for GPU runs only: "
            "remove train.cpu_offload"
        )
    if tc.float8 and not use_gpu:
        raise ConfigError(
            f"train.float8: this run computes on CPUs ({why}); float8 training needs GPUs with float8 "
            "tensor cores (compute capability 8.9+: L40S, H100, H200): remove train.float8"
        )


def detect_gpu(tc: TrainConfig) -> bool:
    if tc.use_gpu is not None:
        return tc.use_gpu
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def monitor_windows(ctx: StageContext, spec: TrainSpec, facts: dict[str, Any]) -> dict[str, Any] | None:
    """Tokenise the held-out validation windows once, for every worker; None when there are none."""
    from dapt.train.monitor import build_monitor_file

    heldout = facts["heldout"]
    if not (heldout and Path(heldout).is_dir() and spec.tokenizer_path):
        ctx.log.warning("no held-out split or tokenizer: the forgetting monitor is off")
        return None
    sep = facts["eos_id"] if facts["eos_id"] is not None else 0
    mon_path = ctx.work_dir / "monitor_windows.npz"
    mon = build_monitor_file(
        Path(heldout),
        spec.tokenizer_path,
        spec.seq_len,
        ctx.cfg.train.monitor_max_tokens,
        int(sep),
        mon_path,
        objective=spec.objective,
        block_len=facts["block_len"],
        roles=facts["roles"],
        seed=int(spec.seed),
    )
    ctx.log.info("monitor windows: %s", mon)
    return {"path": str(mon_path.resolve()), "windows": mon}
