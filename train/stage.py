"""The ``train`` stage: continued pretraining on Ray Train, resumable, with a forgetting monitor.

The driver (this module) resolves inputs from the upstream manifests (the mix stage's packed blocks
and block length, the tokenizer stage's model and tokenizer), runs the preflight, builds the monitor
windows, turns the config into a :class:`~dapt.train.spec.TrainSpec` and launches
``train.loop.train_loop`` on ``train.num_workers`` Ray Train workers. Workers write checkpoints and
logs under ``ctx.work_dir`` (so they survive a killed run and a Ray restart after a worker failure)
and the export into ``ctx.out_dir/model``; the driver copies the logs into the stage folder at the end.
Before launching, ``train.resume`` decides what the run resumes: checkpoints are keyed by
``ctx.state_key``, so a larger budget continues them and a changed ``lr`` moves them aside (never
deletes them); the manifest's ``resumed`` and ``set_aside`` record the decision.
The stage writes no model card: the report stage owns it and the publish stage ships it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import has_tokenizer_files, resolve_output
from dapt.pipeline.stages import StageContext
from dapt.pipeline.tracking import target_dict
from dapt.train.config import TrainConfig
from dapt.train.prelaunch import (
    detect_gpu,
    monitor_windows,
    preflight_plan,
    refuse_gpu_only,
    resolve_objective,
)
from dapt.train.ranks import PLACEMENT_FILE, read_placement
from dapt.train.schedule import warmup_steps
from dapt.train.spec import TrainSpec

TEST_HOOKS = ("fail_at_step", "fail_marker", "pause_at_step", "pause_marker", "progress")
"""``ctx.extra`` keys passed through to the spec (fault injection and quiet runs in tests)."""


def _manifest_path(stage_dir: Path, p: str | None) -> str | None:
    """A path an upstream manifest names (relative to its folder unless absolute), as an absolute
    string; a relative name that is no file there is a hub id and is returned unchanged."""
    q = resolve_output(stage_dir, p)
    if q is None:
        return None
    if Path(p).is_absolute():
        return str(q)
    return str(q.resolve()) if q.exists() else p


def plan_steps(tc: TrainConfig, n_blocks: int, seq_len: int) -> dict[str, int]:
    """Steps, warmup and batch geometry from the config, the number of packed blocks and their length."""
    accum = tc.grad_accum(seq_len)
    blocks_per_step = tc.micro_batch_size * tc.num_workers * accum
    tokens_per_step = blocks_per_step * seq_len
    target = tc.token_target(n_blocks * seq_len)
    steps = max(1, -(-target // tokens_per_step))
    if tc.max_steps is not None:
        steps = min(steps, tc.max_steps)
    return {
        "steps": steps,
        "warmup_steps": warmup_steps(steps, tc.warmup_fraction, tc.warmup_steps_min),
        "grad_accum": accum,
        "blocks_per_step": blocks_per_step,
        "tokens_per_step": tokens_per_step,
        "epochs": round(steps * blocks_per_step / max(n_blocks, 1), 4),
    }


def _packed_blocks(mix_dir: Path, mix: dict[str, Any]) -> tuple[str, int, int]:
    """(absolute path, block length, number of blocks) of the mix stage's packed blocks, checked."""
    outs = mix.get("outputs") or {}
    tokens_path = _manifest_path(mix_dir, outs.get("train_tokens"))
    if not tokens_path or not Path(tokens_path).is_file():
        raise InputError(
            f"{mix_dir}/manifest.json: outputs.train_tokens missing or not a file ({tokens_path})"
        )
    seq_len = mix.get("seq_len")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise InputError(f"{mix_dir}/manifest.json: no block length (seq_len: {seq_len!r}); rerun `dapt mix`")
    from dapt.corpora.mix.store import open_blocks

    try:
        blocks = open_blocks(tokens_path)
    except ValueError as e:  # names its file
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"{tokens_path}: cannot read the packed blocks ({e}); rerun `dapt mix`") from None
    want = int(mix.get("block_len") or seq_len + 1)  # manifests before objectives: seq_len + 1
    if blocks.block_len != want:
        raise InputError(
            f"{tokens_path}: blocks of {blocks.block_len} tokens do not match the mix manifest's "
            f"block_len {want}; rerun `dapt mix`"
        )
    n_blocks = len(blocks)
    if n_blocks == 0:
        raise InputError(f"{tokens_path}: no packed blocks")
    return str(Path(tokens_path).resolve()), seq_len, n_blocks


def config_model(from_config: dict[str, Any], vocab_size: int | None) -> tuple[dict[str, Any], int]:
    """A ``model.from_config`` section (as the tokenizer manifest records it) as the spec's
    ``model_config`` and init seed, at the tokenizer's vocabulary size."""
    fc = dict(from_config)
    init_seed = int(fc.pop("seed", 0) or 0)
    extra = fc.pop("extra", None) or {}
    config = {
        **fc,
        "vocab_size": int(vocab_size or fc["vocab_size"]),
        "num_key_value_heads": fc.get("num_key_value_heads") or fc.get("num_attention_heads"),
        **extra,
    }
    return config, init_seed


def _base_model(tok_dir: Path, tok: dict[str, Any], mix: dict[str, Any]) -> dict[str, Any]:
    """The model to train, from the tokenizer manifest: its ``outputs.model`` folder (or hub id), else
    the base model it records (``base_model``: a hub id / folder with its revision, or a config to
    build from). Keys: ``model_path``, ``model_revision``, ``model_config``, ``init_seed``,
    ``tokenizer_path``."""
    outs = tok.get("outputs") or {}
    model_path = _manifest_path(tok_dir, outs.get("model"))
    revision = None
    model_config = None
    init_seed = 0
    if model_path is None:
        base = tok.get("base_model")
        if not isinstance(base, dict):
            raise InputError(
                f"{tok_dir}/manifest.json: neither outputs.model nor base_model; rerun `dapt tokenizer`"
            )
        fc = base.get("from_config")
        if fc is None:
            model_path, revision = base.get("name_or_path"), base.get("revision")
            if not model_path:
                raise InputError(f"{tok_dir}/manifest.json: base_model names no model")
        else:
            model_config, init_seed = config_model(fc, mix.get("vocab_size") or tok.get("vocab_size"))
    tokenizer_path = _manifest_path(tok_dir, outs.get("tokenizer"))
    if tokenizer_path is None and model_path and has_tokenizer_files(model_path):
        tokenizer_path = model_path
    return {
        "model_path": model_path,
        "model_revision": revision,
        "model_config": model_config,
        "init_seed": init_seed,
        "tokenizer_path": tokenizer_path,
    }


def build_spec(ctx: StageContext) -> tuple[TrainSpec, dict[str, Any]]:
    """The worker spec and the facts the manifest needs (paths checked, nothing started)."""
    cfg, tc = ctx.cfg, ctx.cfg.train
    mix_dir, mix = ctx.upstream_dir("mix"), ctx.upstream_manifest("mix")
    tok_dir, tok = ctx.upstream_dir("tokenizer"), ctx.upstream_manifest("tokenizer")
    data_path, seq_len, n_blocks = _packed_blocks(mix_dir, mix)
    if tc.attention == "document" and data_path.endswith(".npy"):
        raise ConfigError(
            f"train.attention: document needs the document starts of the mix stage's token store; "
            f"{data_path} is an old packed-blocks file without them: rerun `dapt mix`"
        )
    model = _base_model(tok_dir, tok, mix)
    geometry = plan_steps(tc, n_blocks, seq_len)
    if not ctx.fingerprint or not ctx.state_key:
        raise RuntimeError("train: the runner handed in no fingerprint (run the stage through run_stage)")
    seed = cfg.seed if tc.seed is None else tc.seed
    spec = TrainSpec(
        data_path=data_path,
        seq_len=seq_len,
        steps=geometry["steps"],
        checkpoint_dir=str((ctx.work_dir / "checkpoints").resolve()),
        log_dir=str((ctx.work_dir / "logs").resolve()),
        **model,
        sharding=tc.sharding,
        hybrid_shard_size=tc.hybrid_shard_size,
        precision=tc.precision,
        activation_checkpointing=tc.activation_checkpointing,
        activation_checkpointing_every=tc.activation_checkpointing_every,
        mlm_probability=tc.mlm_probability,
        mlm_whole_word=tc.mlm_whole_word,
        span_noise_density=float((mix.get("packing") or {}).get("span_noise_density", 0.15)),
        span_mean_length=float((mix.get("packing") or {}).get("span_mean_length", 3.0)),
        attention=tc.attention,
        loss_chunk_tokens=tc.loss_chunk_tokens,
        compile=tc.compile,
        float8=tc.float8,
        cpu_offload=tc.cpu_offload,
        use_gpu=bool(tc.use_gpu),
        cpu_threads=int(tc.cpus_per_worker),
        micro_batch_size=tc.micro_batch_size,
        grad_accum=geometry["grad_accum"],
        lr=tc.lr,
        min_lr_ratio=tc.min_lr_ratio,
        schedule=tc.schedule,
        warmup_steps=geometry["warmup_steps"],
        decay_fraction=tc.decay_fraction,
        weight_decay=tc.weight_decay,
        beta1=tc.beta1,
        beta2=tc.beta2,
        eps=tc.eps,
        grad_clip=tc.grad_clip,
        seed=seed,
        fingerprint=ctx.fingerprint,
        state_key=ctx.state_key,
        checkpoint_meta=checkpoint_meta(ctx),
        checkpoint_every=tc.checkpoint_every,
        keep_checkpoints=tc.keep_checkpoints,
        monitor_every=tc.monitor_every,
        max_general_regression=tc.max_general_regression,
        log_every=tc.log_every,
        export_dir=str((ctx.out_dir / "model").resolve()),
        export_dtype=tc.export_dtype,
        tracking=target_dict(ctx.tracking),
        progress_run_dir=str(ctx.run_dir.resolve()),
        tensorboard=cfg.tracking.writes_tensorboard,
        **{k: ctx.extra[k] for k in TEST_HOOKS if k in ctx.extra},
    )
    objective, roles = resolve_objective(tc, spec, mix)
    spec = spec.replace(objective=objective)
    facts = {
        "roles": roles,
        "n_blocks": n_blocks,
        "mix_dir": mix_dir,
        "heldout": _manifest_path(mix_dir, (mix.get("outputs") or {}).get("heldout")),
        "eos_id": mix.get("eos_id"),
        "block_len": int(mix.get("block_len") or seq_len + 1),
        "vocab_size": mix.get("vocab_size"),
        "tokens_per_step": geometry["tokens_per_step"],
        "epochs": geometry["epochs"],
        "pretraining_tokens": (tok.get("base_model") or {}).get("pretraining_tokens"),
    }
    return spec, facts


def launch(
    spec: TrainSpec, num_workers: int, storage: Path, max_failures: int, cpus_per_worker: float
) -> None:
    """Run ``train_loop`` on ``num_workers`` Ray Train workers (Ray must be initialised)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dapt.train.loop import ray_worker

    resources = {"CPU": cpus_per_worker}
    if spec.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"spec": spec.replace(under_ray=True)},
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=int(num_workers),
            use_gpu=spec.use_gpu,
            resources_per_worker=resources,
            # PACK (Ray's default, named here because hybrid relies on it): fill a node before the next,
            # so with a worker's share sized to 1/k of a node (one GPU of k, or cpus_per_worker) each
            # node holds k workers and HSDP shard groups stay node-local. SPREAD would scatter a shard
            # group over nodes; STRICT_SPREAD allows one worker per node. train.ranks checks the result.
            placement_strategy="PACK",
        ),
        run_config=RunConfig(
            name=f"train-{int(time.time() * 1000)}",
            storage_path=str(storage.resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()


def checkpoint_meta(ctx: StageContext) -> dict[str, Any]:
    """What every checkpoint stores about the run that wrote it, so a later run can name what changed:
    ``state`` (the config sections as the state key sees them, and the upstream fingerprints) and
    ``continuing`` (the values of the CONTINUES_RUN fields, e.g. ``train.max_steps``)."""
    from dapt.pipeline.knobs import continuing_fields, state_view

    state: dict[str, Any] = {k: state_view(getattr(ctx.cfg, k)) for k in ctx.spec.config_keys}
    state["upstream"] = {u: ctx.upstream_manifest(u).get("fingerprint") for u in ctx.spec.needs}
    tc = ctx.cfg.train
    continuing = {}
    for name in continuing_fields(TrainConfig):
        value: Any = tc
        for part in name.split("."):
            value = getattr(value, part)
        continuing[f"train.{name}"] = value
    return {"state": state, "continuing": continuing}


def _prepare_checkpoints(ctx: StageContext, spec: TrainSpec) -> tuple[TrainSpec, Any]:
    """Decide what this run resumes (``train.resume.prepare``: nothing is deleted, checkpoints of
    another run state are moved aside); returns the spec with the decision applied."""
    from dapt.train.resume import prepare

    prep = prepare(
        Path(spec.checkpoint_dir),
        Path(spec.log_dir),
        spec.checkpoint_key,
        spec.lr_plan(),
        spec.checkpoint_meta or {},
        ctx.force,
        ctx.log,
    )
    changes: dict[str, Any] = {"discard_after_checkpoint": tuple(prep.discard_after_checkpoint)}
    if prep.warmup_steps is not None:
        ctx.log.info(
            "the re-warm is not redone: keeping the resumed run's %d warmup steps (this plan: %d)",
            prep.warmup_steps,
            spec.warmup_steps,
        )
        changes["warmup_steps"] = prep.warmup_steps
    return spec.replace(**changes), prep


def _check_shared_storage(ctx: StageContext, spec: TrainSpec) -> None:
    """On a cluster of several nodes, fail before training when a node cannot see the model it loads.

    Why: every rank reads the model and tokenizer folders, and a restarted worker group may resume on a
    replacement node; on a node-local disk that fails only after work was done. ``run_dir`` (checkpoints,
    packed blocks, logs) is probed by the runner before any Ray stage (pipeline/placement.py), so only
    folders outside it are probed here: a local base model that the tokenizer manifest points at."""
    from dapt.pipeline.placement import probe_on_every_node

    run = ctx.run_dir.resolve()
    paths = [
        p
        for p in dict.fromkeys((spec.model_path, spec.tokenizer_path))
        if p and Path(p).exists() and not Path(p).resolve().is_relative_to(run)
    ]
    probed = probe_on_every_node(paths)  # no-op on a single-node Ray
    if probed:
        ctx.log.info("shared storage: every node sees %s", ", ".join(probed))


def _copy_logs(log_dir: Path, out_dir: Path) -> None:
    for name in ("metrics.jsonl", "monitor.jsonl"):
        src = log_dir / name
        if src.exists():
            shutil.copyfile(src, out_dir / name)
        else:
            (out_dir / name).write_text("")
    if (log_dir / "tb").is_dir():
        shutil.copytree(log_dir / "tb", out_dir / "tb", dirs_exist_ok=True)
    else:
        (out_dir / "tb").mkdir()


def run(ctx: StageContext) -> dict[str, Any]:
    from dapt.pipeline.ray_runtime import init_ray

    t0 = time.perf_counter()
    tc = ctx.cfg.train
    spec, facts = build_spec(ctx)

    if tc.use_gpu is False:
        refuse_gpu_only(tc, False)  # before Ray starts: nothing to detect
    init_ray(ctx.cfg.ray)
    spec = spec.replace(use_gpu=detect_gpu(tc))
    refuse_gpu_only(tc, spec.use_gpu)
    plan = preflight_plan(ctx, spec, facts)
    mon = monitor_windows(ctx, spec, facts)
    if mon is not None:
        spec = spec.replace(monitor_path=mon["path"])
    _check_shared_storage(ctx, spec)
    spec, prep = _prepare_checkpoints(ctx, spec)
    summary_file = Path(spec.log_dir) / "summary.json"
    summary_file.unlink(missing_ok=True)
    placement_file = Path(spec.log_dir) / PLACEMENT_FILE
    placement_file.unlink(missing_ok=True)  # this command's attempts only

    ctx.log.info(
        "training %d steps x %d tokens on %d %s worker(s), %s, %s",
        spec.steps,
        facts["tokens_per_step"],
        tc.num_workers,
        "GPU" if spec.use_gpu else "CPU",
        tc.sharding,
        tc.precision,
    )
    launch(spec, tc.num_workers, ctx.work_dir / "ray", tc.max_failures, tc.cpus_per_worker)
    placement = read_placement(placement_file)
    if not summary_file.exists():
        raise RuntimeError(f"training finished without a summary ({summary_file})")
    summary = json.loads(summary_file.read_text())
    _copy_logs(Path(spec.log_dir), ctx.out_dir)
    for entry in prep.set_aside:
        entry["removed"] = not Path(entry["path"]).exists()
    if summary["early_stopped"]:
        ctx.log.warning(
            "stopped early at step %d of %d (train.max_general_regression)", summary["steps"], spec.steps
        )

    hyper = spec.hyperparameters()
    hyper["global_batch_tokens"] = facts["tokens_per_step"]
    hyper["optimizer"] = "AdamW"
    return {
        "outputs": {
            "model": "model",
            "metrics": "metrics.jsonl",
            "monitor": "monitor.jsonl",
            **({"tensorboard": "tb"} if spec.tensorboard else {}),
        },
        "counts": {"steps": summary["steps"], "tokens": summary["tokens"], "blocks": facts["n_blocks"]},
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "mfu": summary["mfu"],
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "device": summary["device"],
        "num_workers": tc.num_workers,
        "mesh": placement["mesh"],
        "ranks": placement["ranks"],
        "attempts": placement["attempts"],
        "sharding": tc.sharding,
        "effective_sharding": tc.sharding if tc.num_workers > 1 else "none (one worker: unsharded model)",
        "precision": tc.precision,
        "seq_len": spec.seq_len,
        "hyperparameters": hyper,
        "plan": plan,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "early_stopped": summary["early_stopped"],
        "planned_steps": spec.steps,
        "epochs": facts["epochs"],
        "params": summary["params_total"],
        "base_model": spec.model_path,
        "resumed_from_step": summary["resumed_from_step"],
        "resumed": prep.resumed,
        "set_aside": prep.set_aside,
        "restored_steps": prep.restored,
        "schedule_history": summary["schedule_history"],
        "early_stop": summary["early_stop"],
        "monitor": {
            "base": summary["base_monitor"],
            "final": summary["final_monitor"],
            "windows": mon["windows"] if mon else None,
        },
        "train_seconds": summary["train_seconds"],
    }
