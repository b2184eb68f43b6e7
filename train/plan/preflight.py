"""The plan of a configured run, and the train preflight that refuses a run predicted not to fit.

``dapt train`` calls :func:`preflight` before it starts workers: a run whose predicted peak memory per
GPU exceeds the device's usable memory stops at once with the plan and the changes that would fit,
instead of failing with ``CUDA out of memory`` hours in. ``--no-preflight`` skips it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError, PreflightError
from dapt.train.plan import compute, encoders, gpus
from dapt.train.plan.plan import format_plan, make_plan

_ALIASES = {
    "vocab": ("vocab_size", "n_vocab", "padded_vocab_size"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim", "d_ff"),
    "tied": ("tie_word_embeddings",),
}


def _config_dict(model_config: Any) -> dict[str, Any]:
    if hasattr(model_config, "to_dict"):
        return model_config.to_dict()
    if hasattr(model_config, "model_dump"):
        d = model_config.model_dump()
        d.update(d.pop("extra", {}) or {})
        return d
    return dict(model_config)


def resolve_objective(model_config: Any, requested: str | None = "auto") -> str:
    """The training objective: ``requested`` (``train.objective``), or for ``auto`` what the train
    stage infers from the architecture (``dapt.train.objectives.infer_objective``, the same function)."""
    if requested and requested != "auto":
        return str(requested)
    from types import SimpleNamespace

    from dapt.train.objectives import infer_objective

    cfg = model_config
    if not hasattr(cfg, "to_dict"):  # infer_objective reads attributes, as of a PretrainedConfig
        d = _config_dict(model_config)
        try:  # the config class fills what a dict leaves out (T5's is_encoder_decoder)
            from transformers import AutoConfig

            cfg = AutoConfig.for_model(**d)
        except Exception:  # noqa: BLE001 - no transformers, or a type it does not know
            cfg = SimpleNamespace(**d)
    return infer_objective(cfg)


def arch_from_model_config(model_config: Any, objective: str | None = "clm") -> dict[str, Any]:
    """Architecture numbers from a transformers ``PretrainedConfig``, a dict (config.json) or the run
    config's ``model.from_config`` section; missing ones are None (the estimate fills Llama defaults).

    ``objective`` (``auto`` infers it as the train stage does): for ``mlm`` / ``span`` the dict also
    holds ``model``, the encoder / encoder-decoder description (``encoders.describe``), whose numbers
    fill ``layers`` ... ``tied``."""
    d = _config_dict(model_config)
    if isinstance(d.get("text_config"), dict):  # multimodal wrappers keep the LM here
        d = {**d, **d["text_config"]}
    arch: dict[str, Any] = {}
    for key, names in _ALIASES.items():
        arch[key] = next((d[n] for n in names if d.get(n) is not None), None)
    arch["tied"] = bool(arch["tied"]) if arch["tied"] is not None else False
    arch["model_type"] = d.get("model_type")
    arch["objective"] = resolve_objective(model_config, objective)
    if arch["objective"] != "clm":
        spec = encoders.describe(d, arch["objective"])
        arch["model"] = spec
        for key in ("layers", "hidden", "heads", "intermediate", "vocab", "tied"):
            arch[key] = spec[key]
        arch["kv_heads"] = spec["heads"]
    return arch


def span_geometry(seq_len: int, density: float = 0.15, mean_span: float = 3.0) -> tuple[tuple[int, int], int]:
    """((input, target) lengths, data tokens per block) of span corruption at ``mix.seq_len``, from the
    functions the mix and the batches use (``dapt.train.objectives``): the packed block holds
    ``block_tokens`` tokens, sized so that its corrupted input fills ``seq_len``; where that function is
    absent, the block is ``seq_len`` tokens, corrupted."""
    from dapt.train import objectives

    if hasattr(objectives, "block_tokens"):
        raw = int(objectives.block_tokens("span", int(seq_len), 0, float(density), float(mean_span)))
    else:
        raw = int(seq_len)
    return tuple(objectives.corrupted_lengths(raw, float(density), float(mean_span))), raw


def requested_objective(cfg: Any) -> str:
    """The configured objective: ``model.objective``, else ``train.objective`` (where an older config
    keeps it), else ``auto``."""
    v = getattr(_section(cfg, "model"), "objective", None) or _train(cfg, "objective", None)
    return str(v or "auto")


def span_options(cfg: Any) -> tuple[float, float]:
    """(noise density, mean span length): ``mix.span_*``, else ``train.span_*``, else T5's 0.15 and 3."""
    mix = _section(cfg, "mix")
    density = getattr(mix, "span_noise_density", None) or _train(cfg, "span_noise_density", 0.15)
    mean = getattr(mix, "span_mean_length", None) or _train(cfg, "span_mean_length", 3.0)
    return float(density), float(mean)


def exact_param_shapes(model_config: Any, objective: str = "clm") -> list[tuple[int, ...]] | None:
    """The real parameter shapes, by building the model on the meta device (no memory, ~0.1-2 s) with
    the Auto class the train loop builds it with for ``objective`` (``dapt.train.objectives.auto_class``).

    Returns None when transformers/torch are missing or the config cannot be built; the plan then
    uses the closed form (Llama, or the encoder description's).
    """
    try:
        import torch
        from transformers import AutoConfig, PretrainedConfig

        from dapt.train.objectives import auto_class
    except ImportError:
        return None
    try:
        cfg = model_config
        if not isinstance(cfg, PretrainedConfig):
            d = arch_dict = dict(cfg)
            if "model_type" not in arch_dict:
                return None
            cfg = AutoConfig.for_model(**d)
        with torch.device("meta"):
            model = auto_class(objective).from_config(cfg)
        return [tuple(p.shape) for p in model.parameters()]
    except Exception:  # an exotic architecture: the closed form is still a useful estimate
        return None


def model_config_from_run(cfg: Any) -> Any:
    """The run's model config: ``model.from_config`` as a dict, or the local folder's config.json, or
    the hub config via ``transformers.AutoConfig`` (an offline hub id gives a ConfigError)."""
    m = cfg.model
    if m.from_config is not None:
        d = m.from_config.model_dump()
        extra = d.pop("extra", {}) or {}
        d.pop("seed", None)
        d.update(extra)
        return d
    return load_model_config(
        m.name_or_path, getattr(m, "revision", None), getattr(m, "trust_remote_code", False)
    )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """The hub endpoint if a TCP connection to it fails (or ``HF_HUB_OFFLINE`` is set), else None.

    Why: on a machine without network, transformers retries the hub with back-off for ~25 s before
    failing; one connect attempt answers in milliseconds. Behind a proxy the probe is skipped (the
    direct connection may be blocked while the proxy works)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        return endpoint
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    u = urlparse(endpoint)
    try:
        socket.create_connection(
            (u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout
        ).close()
    except OSError:
        return endpoint
    return None


def load_model_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """config.json of a local model folder (read directly), or a hub id through AutoConfig."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise ConfigError(f"model.name_or_path: {p} has no config.json")
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f}: line {e.lineno}: invalid JSON: {e.msg}") from None
    hint = "offline, point it at a local model folder or give --params/--layers/--hidden"
    try:
        from transformers import AutoConfig

        try:  # the local hub cache first: instant, and all an offline machine has
            return AutoConfig.from_pretrained(
                name_or_path, revision=revision, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except Exception:  # noqa: BLE001 - not cached: ask the hub, if it can be reached at all
            pass
        endpoint = hub_unreachable()
        if endpoint:
            raise ConfigError(
                f"model.name_or_path: {name_or_path!r} is not in the local cache and the hub ({endpoint}) "
                f"cannot be reached; {hint}"
            )
        return AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"model.name_or_path: cannot load the config of {name_or_path!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); {hint}"
        ) from None


def _section(cfg: Any, name: str) -> Any:
    """A config section, or None. The train stage's ``ctx.cfg`` exposes only its declared sections
    (``train``, ``plan``, ...) and raises AttributeError for the others; ``dapt plan`` has them all."""
    try:
        return getattr(cfg, name)
    except AttributeError:
        return None


def _train(cfg: Any, name: str, default: Any) -> Any:
    """A train-section field, with a default: that section evolves, the planner must not break."""
    v = getattr(_section(cfg, "train"), name, default)
    return default if v is None else v


def run_seq_len(cfg: Any, seq_len: int | None = None) -> int:
    """The block length: given (the train stage passes the mix manifest's), else the config's
    ``mix.seq_len`` (``dapt plan --config``), else 2048."""
    if seq_len:
        return int(seq_len)
    v = getattr(_section(cfg, "mix"), "seq_len", None)
    return int(v) if v else 2048


def _upstream_manifest(cfg: Any, stage: str) -> dict[str, Any] | None:
    try:
        path = Path(cfg.run_path) / stage / "manifest.json"
        if (Path(cfg.run_path) / stage / "_DONE").exists():
            return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    return None


def run_knobs(cfg: Any, seq_len: int | None = None) -> dict[str, Any]:
    """The training knobs the plan needs, read from ``cfg.train`` (with defaults) and ``cfg.plan``;
    ``seq_len`` as :func:`run_seq_len` finds it."""
    pc = cfg.plan
    world = int(_train(cfg, "num_workers", 1))
    seq_len = run_seq_len(cfg, seq_len)
    micro = int(_train(cfg, "micro_batch_size", 1))
    gbt = _train(cfg, "global_batch_tokens", None)
    accum = max(1, math.ceil(gbt / (micro * seq_len * world))) if gbt else 2
    sharding = str(_train(cfg, "sharding", "zero3"))
    shard_group = _train(cfg, "hybrid_shard_size", None) or pc.gpus_per_node
    return {
        "seq_len": seq_len,
        "micro_batch": micro,
        "precision": str(_train(cfg, "precision", "bf16")),
        "sharding": sharding,
        "world_size": world,
        "optimizer": str(_train(cfg, "optimizer", pc.optimizer)).lower(),
        "activation_checkpointing": bool(_train(cfg, "activation_checkpointing", False)),
        "checkpoint_every": int(_train(cfg, "activation_checkpointing_every", 1)),
        "loss_chunk_tokens": int(_train(cfg, "loss_chunk_tokens", 1024)),
        "cpu_offload": bool(_train(cfg, "cpu_offload", False)),
        "flash_attention": pc.flash_attention,
        "layout": pc.layout,
        "gpus_per_node": int(shard_group),
        "grad_accumulation": accum > 1,
        "headroom_fraction": pc.headroom_fraction,
    }


def run_tokens(cfg: Any) -> tuple[float | None, str]:
    """Training tokens and where the number came from."""
    steps = _train(cfg, "max_steps", None)
    gbt = _train(cfg, "global_batch_tokens", None)
    if steps and gbt:
        return float(steps) * float(gbt), "train.max_steps x train.global_batch_tokens"
    t = _train(cfg, "tokens", None)
    if t and t != "auto":  # auto before the sweep has chosen: plan with what else is known
        chosen = "train.tokens" in getattr(cfg, "from_sweep", {})
        return float(t), "train.tokens" + (" (the sweep's recommendation)" if chosen else "")
    if cfg.plan.tokens:
        return float(cfg.plan.tokens), "plan.tokens"
    mix = _upstream_manifest(cfg, "mix")
    if mix:
        total = mix.get("total_tokens") or (mix.get("counts") or {}).get("tokens")
        if total:
            return float(total), "the mix stage's packed tokens (one pass)"
    return None, "unknown (set train.tokens or plan.tokens)"


def measured_mfu(cfg: Any) -> float | None:
    """MFU recorded by this run's finished train stage (manifest key ``mfu``), if any."""
    man = _upstream_manifest(cfg, "train")
    v = man.get("mfu") if man else None
    return float(v) if isinstance(v, int | float) and 0 < v <= 1 else None


def plan_for_run(
    cfg: Any,
    model_config: Any | None = None,
    *,
    gpu: gpus.GPU | None = None,
    device_mem_bytes: int | None = None,
    knob_overrides: dict[str, Any] | None = None,
    tokens: float | None = None,
    seq_len: int | None = None,
    pretraining_tokens: float | None = None,
    objective: str | None = None,
    span_noise_density: float | None = None,
    span_mean_length: float | None = None,
) -> dict[str, Any]:
    """The plan of a configured run (``dapt plan --config`` and the preflight share it).

    ``knob_overrides`` replace run knobs read from the config (``run_knobs`` keys); ``tokens``
    replaces the token budget the config implies. ``seq_len`` and ``pretraining_tokens`` are the
    train stage's facts from upstream manifests (its config view has no ``mix`` or ``model``
    section); without them they come from ``mix.seq_len`` and ``model.pretraining_tokens``.
    ``objective`` is the resolved objective (the train stage passes its own, and the span options it
    trains with); without it, ``model.objective`` (:func:`requested_objective`) with ``auto`` inferred
    from the model config as the train stage does, and the span options from :func:`span_options`."""
    pc = cfg.plan
    if model_config is None:
        model_config = model_config_from_run(cfg)
    arch = arch_from_model_config(model_config, objective or requested_objective(cfg))
    shapes = exact_param_shapes(model_config, arch["objective"])
    if shapes is not None:
        arch["param_shapes"] = shapes
    if not (arch["layers"] and arch["hidden"] and arch["heads"] and arch["vocab"]):
        raise ConfigError(
            "model: cannot tell the model's size from its config (need vocab_size, hidden_size, "
            "num_hidden_layers, num_attention_heads)"
        )
    knobs = run_knobs(cfg, seq_len)
    knobs.update(knob_overrides or {})
    if arch["objective"] == "span":
        density, mean = span_options(cfg)
        knobs["span_lengths"], knobs["block_tokens"] = span_geometry(
            knobs["seq_len"], span_noise_density or density, span_mean_length or mean
        )
    if gpu is None:
        try:
            gpu = gpus.lookup(pc.gpu)
        except KeyError as e:
            raise ConfigError(f"plan.gpu: {e.args[0]}") from None
    if pc.gpu_mem_gib:
        device_mem_bytes = int(pc.gpu_mem_gib * 2**30)
    if pc.peak_tflops:
        gpu = gpus.GPU(gpu.name, gpu.memory_bytes, pc.peak_tflops * 1e12, pc.peak_tflops * 1e12)
    tokens_source = "--tokens"
    if not tokens:
        tokens, tokens_source = run_tokens(cfg)
    mfu, mfu_source = pc.mfu, "plan.mfu"
    if mfu is None:
        mfu = measured_mfu(cfg)
        mfu_source = "measured by this run's train stage" if mfu else "assumed"
    if mfu is None:
        mfu = compute.DEFAULT_MFU
    try:
        plan = make_plan(
            arch,
            gpu=gpu,
            device_mem_bytes=device_mem_bytes,
            tokens=tokens,
            mfu=mfu,
            mfu_source=mfu_source,
            price_per_gpu_hour=pc.price_per_gpu_hour,
            pretraining_tokens=pretraining_tokens
            or getattr(_section(cfg, "model"), "pretraining_tokens", None),
            **knobs,
        )
    except ValueError as e:
        raise ConfigError(f"plan: {e}") from None
    plan["tokens_source"] = tokens_source
    man = _upstream_manifest(cfg, "train")
    if man and man.get("peak_memory_bytes"):
        plan["measured_peak_memory_bytes"] = man["peak_memory_bytes"]
    return plan


def preflight(
    cfg: Any, model_config: Any, device_kind: str, device_mem_bytes: int | None, **kwargs: Any
) -> dict[str, Any]:
    """Plan the configured run on this device; raise PreflightError when it cannot fit.

    ``model_config``: a transformers ``PretrainedConfig`` or a config dict. ``device_kind``: "cpu",
    "cuda" or a CUDA device name (``torch.cuda.get_device_name()``, used to find the peak FLOP/s).
    ``device_mem_bytes``: the device's total memory (``torch.cuda.get_device_properties(0).total_memory``).
    On CPU nothing is refused (the plan is returned with the judgement against host memory for
    information); on a GPU the run is refused when the predicted peak per GPU exceeds the usable memory
    (``plan.headroom_fraction`` kept free). Returns the plan as a JSON-able dict, with the text under
    ``"table"`` and ``"refused": False``.
    """
    kind = (device_kind or "cpu").strip()
    on_cpu = kind.lower() == "cpu"
    gpu = None
    if not on_cpu:
        gpu = gpus.match_device_name(kind, device_mem_bytes)
        if gpu is None:
            try:
                gpu = gpus.lookup(cfg.plan.gpu)
            except KeyError:
                gpu = None
        if gpu is not None and device_mem_bytes:
            gpu = gpus.GPU(
                gpu.name if kind.lower() == "cuda" else kind,
                int(device_mem_bytes),
                gpu.bf16_flops,
                gpu.fp32_flops,
            )
    mem = device_mem_bytes
    if on_cpu and device_mem_bytes:
        # Judge against host memory shared by the workers on this machine, for information only; the
        # compute lines still use plan.gpu, the hardware the run is being planned for.
        mem = int(device_mem_bytes // int(_train(cfg, "num_workers", 1)))
    plan = plan_for_run(cfg, model_config, gpu=gpu, device_mem_bytes=mem, **kwargs)
    plan["device_kind"] = kind
    if on_cpu:
        plan["device_label"] = "host RAM per worker"
    table = format_plan(plan)
    plan["table"] = table
    est = plan["memory"]
    plan["refused"] = False
    if not on_cpu and est.get("fits") is False:
        plan["refused"] = True
        usable = est["usable"] / 2**30
        raise PreflightError(
            f"preflight: predicted peak {est['total'] / 2**30:.2f} GiB per GPU exceeds the usable "
            f"{usable:.2f} GiB of {kind} ({est['device_mem'] / 2**30:.2f} GiB less "
            f"{cfg.plan.headroom_fraction:.0%} headroom); not starting.\n{table}\n"
            "(rerun with --no-preflight to start anyway)"
        )
    return plan
