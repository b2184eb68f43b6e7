"""The ``train`` stage: continued pretraining on Ray Train, resumable, with a forgetting monitor.

The driver (this module) resolves inputs, runs the preflight, builds the monitor windows, turns the
config into a plain ``spec`` dict and launches ``train.loop.train_loop`` on
``train.num_workers`` Ray Train workers. Workers write checkpoints and logs under ``ctx.work_dir`` (so
they survive a killed run and a Ray restart after a worker failure) and the export into
``ctx.out_dir/model``; the driver copies the logs into the stage folder at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.stages import StageContext, compute_fingerprint
from dapt.train.config import TrainConfig
from dapt.train.schedule import warmup_steps


def _resolve(stage_dir: Path, p: str | None) -> str | None:
    """A manifest path: relative to the stage folder unless absolute; a hub id if it is neither."""
    if not p:
        return None
    q = Path(p)
    if q.is_absolute():
        return str(q)
    if (stage_dir / q).exists():
        return str((stage_dir / q).resolve())
    return p  # a hub id (the tokenizer stage in ``base`` mode points at the original model)


def _has_tokenizer(path: str) -> bool:
    """A local folder with tokenizer files, or a hub id (assumed to carry its tokenizer)."""
    p = Path(path)
    if not p.is_dir():
        return not p.is_absolute()
    return any((p / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def plan_steps(tc: TrainConfig, n_blocks: int) -> dict[str, int]:
    """Steps, warmup and batch geometry from the config and the number of packed blocks."""
    blocks_per_step = tc.micro_batch_size * tc.num_workers * tc.grad_accum
    tokens_per_step = blocks_per_step * tc.seq_len
    target = tc.tokens if tc.tokens is not None else n_blocks * tc.seq_len
    steps = max(1, -(-target // tokens_per_step))
    if tc.max_steps is not None:
        steps = min(steps, tc.max_steps)
    return {
        "steps": steps,
        "warmup_steps": warmup_steps(steps, tc.warmup_fraction, tc.warmup_steps_min),
        "grad_accum": tc.grad_accum,
        "blocks_per_step": blocks_per_step,
        "tokens_per_step": tokens_per_step,
        "epochs": round(steps * blocks_per_step / max(n_blocks, 1), 4),
    }


def build_spec(ctx: StageContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker spec and the facts the manifest needs (paths checked, nothing started)."""
    cfg, tc = ctx.cfg, ctx.cfg.train
    mix_dir, mix = ctx.upstream_dir("mix"), ctx.upstream_manifest("mix")
    tok_dir, tok = ctx.upstream_dir("tokenizer"), ctx.upstream_manifest("tokenizer")
    outs = mix.get("outputs", {})
    tokens_path = _resolve(mix_dir, outs.get("train_tokens"))
    if not tokens_path or not Path(tokens_path).is_file():
        raise InputError(
            f"{mix_dir}/manifest.json: outputs.train_tokens missing or not a file ({tokens_path})"
        )
    import numpy as np

    arr = np.load(tokens_path, mmap_mode="r")
    if arr.ndim != 2 or arr.shape[1] != tc.seq_len + 1:
        raise ConfigError(
            f"train.seq_len: {tc.seq_len} does not match the packed blocks {tokens_path} of shape "
            f"{tuple(arr.shape)} (want (n, {tc.seq_len + 1})); rerun `dapt mix`"
        )
    n_blocks = int(arr.shape[0])
    if n_blocks == 0:
        raise InputError(f"{tokens_path}: no packed blocks")
    model_path = _resolve(tok_dir, tok.get("outputs", {}).get("model"))
    tokenizer_path = _resolve(tok_dir, tok.get("outputs", {}).get("tokenizer"))
    if tokenizer_path is None and model_path and _has_tokenizer(model_path):
        tokenizer_path = model_path
    model_config = None
    if model_path is None:
        fc = cfg.model.from_config
        if fc is None:
            model_path = cfg.model.name_or_path
        else:
            model_config = {
                "model_type": fc.model_type,
                "vocab_size": int(mix.get("vocab_size") or fc.vocab_size),
                "hidden_size": fc.hidden_size,
                "intermediate_size": fc.intermediate_size,
                "num_hidden_layers": fc.num_hidden_layers,
                "num_attention_heads": fc.num_attention_heads,
                "num_key_value_heads": fc.num_key_value_heads or fc.num_attention_heads,
                "max_position_embeddings": fc.max_position_embeddings,
                "tie_word_embeddings": fc.tie_word_embeddings,
                **fc.extra,
            }
    geometry = plan_steps(tc, n_blocks)
    fingerprint, _ = compute_fingerprint(cfg, ctx.spec)
    seed = cfg.seed if tc.seed is None else tc.seed
    spec: dict[str, Any] = {
        **tc.model_dump(),
        **geometry,
        "seed": seed,
        "init_seed": cfg.model.from_config.seed if cfg.model.from_config else seed,
        "data_path": str(Path(tokens_path).resolve()),
        "model_path": model_path,
        "model_config": model_config,
        "tokenizer_path": tokenizer_path,
        "fingerprint": fingerprint,
        "checkpoint_dir": str((ctx.work_dir / "checkpoints").resolve()),
        "log_dir": str((ctx.work_dir / "logs").resolve()),
        "export_dir": str((ctx.out_dir / "model").resolve()),
        "monitor_path": None,
        "cpu_threads": int(tc.cpus_per_worker),
    }
    for key in ("fail_at_step", "fail_marker", "progress"):
        if key in ctx.extra:
            spec[key] = ctx.extra[key]
    facts = {
        "n_blocks": n_blocks,
        "mix_dir": mix_dir,
        "heldout": _resolve(mix_dir, outs.get("heldout")),
        "eos_id": mix.get("eos_id"),
        "vocab_size": mix.get("vocab_size"),
    }
    return spec, facts


def _model_config_for_plan(spec: dict[str, Any]) -> Any:
    from dapt.train.loop import load_model_config

    return load_model_config(spec)


def _preflight(ctx: StageContext, spec: dict[str, Any], use_gpu: bool) -> dict[str, Any] | None:
    if not ctx.extra.get("preflight", True):
        return None
    try:
        from dapt.train.plan.preflight import preflight
    except ImportError:
        ctx.log.info("preflight: train.plan.preflight not available; skipped")
        return None
    mem = None
    kind = "cpu"
    if use_gpu:
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
    return preflight(ctx.cfg, _model_config_for_plan(spec), kind, mem)


def _detect_gpu(tc: TrainConfig) -> bool:
    if tc.use_gpu is not None:
        return tc.use_gpu
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def launch(spec: dict[str, Any], storage: Path, max_failures: int, cpus_per_worker: float) -> None:
    """Run ``train_loop`` on ``spec['num_workers']`` Ray Train workers (Ray must be initialised)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dapt.train.loop import train_loop

    use_gpu = bool(spec["use_gpu"])
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**spec, "under_ray": True},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=int(spec["num_workers"]), use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"train-{int(time.time() * 1000)}",
            storage_path=str(storage.resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()


def run(ctx: StageContext) -> dict[str, Any]:
    from dapt.pipeline.ray_runtime import init_ray
    from dapt.train.checkpoint import discard_foreign, list_checkpoints
    from dapt.train.monitor import build_monitor_file

    t0 = time.perf_counter()
    tc = ctx.cfg.train
    spec, facts = build_spec(ctx)

    init_ray(ctx.cfg.ray)
    use_gpu = _detect_gpu(tc)
    spec["use_gpu"] = use_gpu
    if tc.cpu_offload and not use_gpu:
        ctx.log.warning("train.cpu_offload is ignored without GPUs")
    plan = _preflight(ctx, spec, use_gpu)

    if facts["heldout"] and Path(facts["heldout"]).is_dir() and spec["tokenizer_path"]:
        sep = facts["eos_id"] if facts["eos_id"] is not None else 0
        mon_path = ctx.work_dir / "monitor_windows.npz"
        mon = build_monitor_file(
            Path(facts["heldout"]),
            spec["tokenizer_path"],
            tc.seq_len,
            tc.monitor_max_tokens,
            int(sep),
            mon_path,
        )
        spec["monitor_path"] = str(mon_path.resolve())
        ctx.log.info("monitor windows: %s", mon)
    else:
        mon = None
        ctx.log.warning("no held-out split or tokenizer: the forgetting monitor is off")

    ckpt_root = Path(spec["checkpoint_dir"])
    if ctx.force and ckpt_root.exists():  # --force means train again, not "finish the old run"
        shutil.rmtree(ckpt_root)
        ctx.log.info("--force: removed the checkpoints of earlier runs")
    for p in discard_foreign(ckpt_root, spec["fingerprint"]):
        ctx.log.info("discarded checkpoint of another run fingerprint: %s", p.name)
    existing = list_checkpoints(ckpt_root, spec["fingerprint"])
    if existing:
        ctx.log.info("resuming from checkpoint step %d", existing[-1][0])
    summary_file = Path(spec["log_dir"]) / "summary.json"
    summary_file.unlink(missing_ok=True)

    ctx.log.info(
        "training %d steps x %d tokens on %d %s worker(s), %s, %s",
        spec["steps"],
        spec["tokens_per_step"],
        tc.num_workers,
        "GPU" if use_gpu else "CPU",
        tc.sharding,
        tc.precision,
    )
    launch(spec, ctx.work_dir / "ray", tc.max_failures, tc.cpus_per_worker)
    if not summary_file.exists():
        raise RuntimeError(f"training finished without a summary ({summary_file})")
    summary = json.loads(summary_file.read_text())

    log_dir = Path(spec["log_dir"])
    for name in ("metrics.jsonl", "monitor.jsonl"):
        src = log_dir / name
        if src.exists():
            shutil.copyfile(src, ctx.out_dir / name)
        else:
            (ctx.out_dir / name).write_text("")
    if (log_dir / "tb").is_dir():
        shutil.copytree(log_dir / "tb", ctx.out_dir / "tb", dirs_exist_ok=True)
    else:
        (ctx.out_dir / "tb").mkdir()

    hyper = {
        k: spec[k]
        for k in (
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
            "cpu_offload",
            "seed",
        )
    }
    hyper["global_batch_tokens"] = spec["tokens_per_step"]
    hyper["optimizer"] = "AdamW"
    return {
        "outputs": {
            "model": "model",
            "metrics": "metrics.jsonl",
            "monitor": "monitor.jsonl",
            "tensorboard": "tb",
        },
        "counts": {"steps": summary["steps"], "tokens": summary["tokens"], "blocks": facts["n_blocks"]},
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "mfu": summary["mfu"],
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "device": summary["device"],
        "num_workers": tc.num_workers,
        "sharding": tc.sharding,
        "effective_sharding": tc.sharding if tc.num_workers > 1 else "none (one worker: unsharded model)",
        "precision": tc.precision,
        "hyperparameters": hyper,
        "plan": plan,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "early_stopped": summary["early_stopped"],
        "planned_steps": spec["steps"],
        "epochs": spec["epochs"],
        "params": summary["params_total"],
        "base_model": spec["model_path"],
        "resumed_from_step": summary["resumed_from_step"],
        "monitor": {
            "base": summary["base_monitor"],
            "final": summary["final_monitor"],
            "windows": mon,
        },
        "train_seconds": summary["train_seconds"],
    }
