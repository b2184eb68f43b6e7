"""``dapt plan``: memory per GPU, what fits, compute, cost and Chinchilla for a run, before it starts.

Two ways in: ``dapt plan --config FILE [key=value ...]`` plans the configured run (model from
``model.from_config`` or the model folder's config.json; knobs from ``train:``; hardware and prices from
``plan:``), and free-form ``dapt plan --params 7e9 --precision bf16 --gpus 8 --sharding zero3 ...``.
Flags given with ``--config`` override the config. ``--json`` prints the plan as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dapt.pipeline.errors import ConfigError
from dapt.train.plan import compute, gpus, memory
from dapt.train.plan.plan import format_plan, make_plan


def _num(text: str) -> float:
    """Numbers like 7e9, 7B, 1.4T, 350M, 2k."""
    t = text.strip().replace("_", "").replace(",", "")
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    try:
        if t and t[-1].lower() in mult:
            return float(t[:-1]) * mult[t[-1].lower()]
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _pos_int(text: str) -> int:
    v = _num(text)
    if v < 1 or v != int(v):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(v)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dapt plan`` flags (the dapt CLI calls this for its ``plan`` subcommand)."""
    parser.add_argument("--config", "-c", help="run config YAML; plan the configured run")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides (with --config)"
    )
    g = parser.add_argument_group("model (free-form; or --model for a local HF folder / hub id)")
    g.add_argument("--model", help="local HF model folder (reads config.json) or hub id (needs the network)")
    g.add_argument("--params", type=_num, help="parameter count, e.g. 7e9 or 7B")
    g.add_argument("--layers", type=_pos_int)
    g.add_argument("--hidden", type=_pos_int)
    g.add_argument("--heads", type=_pos_int)
    g.add_argument("--kv-heads", type=_pos_int)
    g.add_argument("--intermediate", type=_pos_int, help="MLP width (default: Llama's 8/3 x hidden)")
    g.add_argument("--vocab", type=_pos_int)
    g.add_argument("--tied", action="store_true", default=None, help="input embedding tied to the LM head")
    g.add_argument(
        "--objective",
        choices=("auto", "clm", "mlm", "span"),
        help="clm (decoders), mlm (BERT-style encoders), span (T5 encoder-decoders); auto (default): "
        "train.objective, else from the model's architecture as the train stage infers it",
    )
    r = parser.add_argument_group("run")
    r.add_argument("--precision", choices=memory.PRECISIONS)
    r.add_argument("--sharding", choices=memory.SHARDINGS)
    r.add_argument("--gpus", type=_pos_int, help="data-parallel workers (GPUs)")
    r.add_argument(
        "--shard-group", type=_pos_int, help="ranks per shard group for hybrid (default GPUs per node)"
    )
    r.add_argument("--seq-len", type=_pos_int)
    r.add_argument("--micro-batch", type=_pos_int, help="sequences per GPU per forward/backward")
    r.add_argument("--optimizer", choices=memory.OPTIMIZERS)
    r.add_argument("--checkpointing", action="store_true", default=None, help="activation checkpointing")
    r.add_argument(
        "--checkpoint-every", type=_pos_int, help="with --checkpointing: every k-th block only (selective)"
    )
    r.add_argument(
        "--loss-chunk-tokens",
        type=int,
        help="tokens per chunk of the chunked loss (default 1024, as train.loss_chunk_tokens; 0: full logits)",
    )
    r.add_argument("--cpu-offload", action="store_true", default=None)
    r.add_argument("--eager", action="store_true", default=None, help="attention that keeps the s x s scores")
    r.add_argument("--layout", choices=memory.LAYOUTS, help="model-state bookkeeping (torch: FSDP2/DDP)")
    r.add_argument("--tokens", type=_num, help="training tokens, e.g. 2e9 or 2B")
    r.add_argument("--pretraining-tokens", type=_num, help="tokens the base model was pretrained on")
    h = parser.add_argument_group("hardware and cost")
    h.add_argument("--gpu", help=f"GPU type ({', '.join(x.name for x in gpus.GPUS.values())})")
    h.add_argument("--gpu-mem", type=float, help="GPU memory in GiB (overrides the GPU table)")
    h.add_argument("--headroom", type=float, help="fraction of GPU memory kept free (default 0.08)")
    h.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: measured, else 0.40)")
    h.add_argument("--price", type=float, help="price per GPU-hour")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _knob_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pairs = {
        "precision": "precision",
        "sharding": "sharding",
        "gpus": "world_size",
        "seq_len": "seq_len",
        "micro_batch": "micro_batch",
        "optimizer": "optimizer",
        "checkpointing": "activation_checkpointing",
        "checkpoint_every": "checkpoint_every",
        "loss_chunk_tokens": "loss_chunk_tokens",
        "cpu_offload": "cpu_offload",
        "layout": "layout",
        "shard_group": "gpus_per_node",
        "headroom": "headroom_fraction",
    }
    for a, k in pairs.items():
        v = getattr(args, a, None)
        if v is not None:
            out[k] = v
    if args.eager:
        out["flash_attention"] = False
    return out


def _plan_overrides(args: argparse.Namespace) -> list[str]:
    """Flags that map onto the ``plan:`` and ``train:`` config sections."""
    out = []
    if args.gpu:
        out.append(f"plan.gpu={args.gpu}")
    if args.gpu_mem:
        out.append(f"plan.gpu_mem_gib={args.gpu_mem}")
    if args.mfu:
        out.append(f"plan.mfu={args.mfu}")
    if args.price is not None:
        out.append(f"plan.price_per_gpu_hour={args.price}")
    return out


def _check_free_form(args: argparse.Namespace) -> None:
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ConfigError("--mfu: must be in (0, 1]")
    if args.headroom is not None and not 0 <= args.headroom < 1:
        raise ConfigError("--headroom: must be in [0, 1)")
    if args.gpu_mem is not None and args.gpu_mem <= 0:
        raise ConfigError("--gpu-mem: must be > 0 GiB")
    if args.params is not None and args.params <= 0:
        raise ConfigError("--params: must be > 0")
    if args.loss_chunk_tokens is not None and args.loss_chunk_tokens < 0:
        raise ConfigError("--loss-chunk-tokens: must be >= 0 (0: full logits)")


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The plan the flags (and config) describe; raises ConfigError on bad input."""
    _check_free_form(args)
    knobs = _knob_overrides(args)
    if args.config:
        from dapt.pipeline.config import load_config
        from dapt.train.plan.preflight import load_model_config, plan_for_run

        cfg = load_config(args.config, list(args.overrides or []) + _plan_overrides(args))
        model_config = load_model_config(args.model) if args.model else None
        objective = args.objective if args.objective not in (None, "auto") else None
        plan = plan_for_run(cfg, model_config, knob_overrides=knobs, tokens=args.tokens, objective=objective)
        plan["config"] = args.config
        return plan
    if args.overrides:
        raise ConfigError(f"key=value overrides ({args.overrides[0]}) need --config")
    arch: dict[str, Any] = {}
    if args.model:
        from dapt.train.plan.preflight import arch_from_model_config, exact_param_shapes, load_model_config

        mc = load_model_config(args.model)
        arch = arch_from_model_config(mc, args.objective or "auto")
        shapes = exact_param_shapes(mc, arch["objective"])
        if shapes:
            arch["param_shapes"] = shapes
    elif args.objective in ("mlm", "span"):
        arch = _free_form_encoder(args)
    flags = ("params", "layers", "hidden", "heads", "kv_heads", "intermediate", "vocab", "tied")
    for key in flags:
        v = getattr(args, key)
        if v is not None:
            arch[key] = v
    if arch.get("model") and any(getattr(args, k) is not None for k in flags[1:]):
        _override_description(arch)
    if arch.get("params") is not None and arch.get("param_shapes") is not None:
        arch.pop("param_shapes")
    if not arch.get("params") and not (
        arch.get("layers") and arch.get("hidden") and arch.get("heads") and arch.get("vocab")
    ):
        raise ConfigError("give --config, --model, --params, or --layers/--hidden/--heads/--vocab")
    try:
        gpu = gpus.lookup(args.gpu or gpus.DEFAULT_GPU)
    except KeyError as e:
        raise ConfigError(f"--gpu: {e.args[0]}") from None
    mem = int(args.gpu_mem * 2**30) if args.gpu_mem else None
    defaults = dict(
        seq_len=2048,
        micro_batch=1,
        precision="bf16",
        sharding="zero3",
        world_size=1,
        optimizer="adamw",
        activation_checkpointing=False,
        checkpoint_every=1,
        loss_chunk_tokens=1024,
        cpu_offload=False,
        flash_attention=True,
        layout="torch",
        gpus_per_node=8,
        headroom_fraction=0.08,
    )
    defaults.update(knobs)
    if arch.get("objective") == "span":
        from dapt.train.plan.preflight import span_geometry

        # T5's noise density 0.15 and mean span 3 (with --config: mix.span_noise_density / span_mean_length)
        defaults["span_lengths"], defaults["block_tokens"] = span_geometry(defaults["seq_len"])
    try:
        return make_plan(
            arch,
            gpu=gpu,
            device_mem_bytes=mem,
            tokens=args.tokens,
            mfu=args.mfu or compute.DEFAULT_MFU,
            mfu_source="--mfu" if args.mfu else "assumed",
            price_per_gpu_hour=args.price,
            pretraining_tokens=args.pretraining_tokens,
            **defaults,
        )
    except ValueError as e:
        raise ConfigError(f"dapt plan: {e}") from None


def _free_form_encoder(args: argparse.Namespace) -> dict[str, Any]:
    """``--objective mlm|span`` with architecture flags: a BERT or T5 (v1.0 layout) of that size."""
    from dapt.train.plan.preflight import arch_from_model_config

    if not (args.layers and args.hidden and args.heads and args.vocab):
        raise ConfigError(f"--objective {args.objective}: give --model or --layers/--hidden/--heads/--vocab")
    if args.objective == "mlm":
        config = {
            "model_type": "bert",
            "num_hidden_layers": args.layers,
            "hidden_size": args.hidden,
            "num_attention_heads": args.heads,
            "intermediate_size": args.intermediate or 4 * args.hidden,
            "vocab_size": args.vocab,
        }
    else:
        config = {
            "model_type": "t5",
            "num_layers": args.layers,
            "d_model": args.hidden,
            "num_heads": args.heads,
            "d_kv": args.hidden // args.heads,
            "d_ff": args.intermediate or 4 * args.hidden,
            "vocab_size": args.vocab,
        }
    return arch_from_model_config(config, args.objective)


def _override_description(arch: dict[str, Any]) -> None:
    """Carry architecture flags into the encoder description (the activations and FLOPs read it); the
    parameter count then comes from it too (or from ``--params``)."""
    spec = dict(arch["model"])
    head_dim = spec["inner"] // spec["heads"]
    for key in ("layers", "hidden", "heads", "intermediate", "vocab", "tied"):
        if arch.get(key) is not None:
            spec[key] = arch[key]
    spec["inner"] = spec["hidden"] if spec["family"] != "t5" else spec["heads"] * head_dim
    arch["model"] = spec
    arch.pop("param_shapes", None)


def _jsonable(plan: dict[str, Any]) -> dict[str, Any]:
    out = dict(plan)
    out.pop("table", None)
    return out


def main(args: argparse.Namespace) -> int:
    """Print the plan (table or ``--json``); exit 0. The table also says whether the run fits."""
    plan = plan_from_args(args)
    if args.json:
        json.dump(_jsonable(plan), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_plan(plan))
        if plan.get("tokens_source") and plan.get("compute"):
            print(f"  (tokens from {plan['tokens_source']})")
        if plan.get("measured_peak_memory_bytes"):
            print(
                f"  (this run's train stage measured a peak of "
                f"{plan['measured_peak_memory_bytes'] / 2**30:.2f} GiB per GPU)"
            )
    return 0
