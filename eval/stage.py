"""The eval stage: base vs adapted model on held-out bits-per-byte and lm-eval tasks, with significance,
and the adapted model at several precisions. Writes ``results.json`` (schema in docs/evaluation.md).

Order of work: everything that can fail on configuration (task names, upstream paths) is checked before
any model is loaded. Models are evaluated one at a time and freed, so peak memory is about one model
plus one precision variant.

Where it runs: the stage table places this stage on a worker (``placement="worker"``,
pipeline/placement.py). The whole body, the precision/quantization variants of eval/quantize.py
included, runs in one Ray task that asks for what :func:`resources` returns: a GPU when ``eval.device``
is ``cuda`` (or ``auto`` on a cluster with GPUs), else a whole node's CPUs (torch's threads follow the
task's CPUs). ``ray.stage_placement: driver`` runs it in the driver instead.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

from dapt.eval.bpb import LN2, bits_per_byte
from dapt.eval.compare import adjust_rows, bpb_rows, task_rows
from dapt.eval.harness import crosscheck, run_lm_eval
from dapt.eval.inputs import read_heldout, resolve_models
from dapt.eval.tasks_registry import LoadedTasks, load_tasks, prepare_include_dir
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import safetensors_param_count
from dapt.pipeline.progress import StepProgress
from dapt.pipeline.stages import StageContext

RESULTS = "results.json"
SCHEMA_VERSION = 2
"""2: rows carry p_adjusted (Holm within each conclusion's family), p_adjust_method, p_family and
significant_raw; p_value is the shifted-null paired bootstrap. Readers of version 1 files still work."""


# ------------------------------------------------------------------------------------------- placement
BYTES_PER_PARAM_CPU = 12
"""Host memory per parameter on CPU: the fp32 model (4), a precision variant being made from a deep copy
of it (4, before the cast or int8 quantisation), and the comparison copy when ``eval.dtype`` is not fp32."""
BYTES_PER_PARAM_GPU = 4
"""On a GPU the weights move to the device after loading: the host holds about one fp32 copy at a time."""


def resources(ctx: StageContext, cluster: Any) -> Any:
    """What the eval task asks Ray for (the runner fits it to the cluster: CPUs and memory are capped at
    the best node that has the GPUs). ``cuda:N`` asks for N+1 GPUs so that index exists in the task."""
    from dapt.pipeline.placement import TaskResources

    dev = ctx.cfg.eval.device
    if dev.startswith("cuda"):
        gpus = int(dev.split(":", 1)[1]) + 1 if ":" in dev else 1
    else:
        gpus = 1 if dev == "auto" and cluster.gpus > 0 else 0
    reason = f"eval.device: {dev}" + (" (the cluster has GPUs)" if dev == "auto" and gpus else "")
    params = max(
        (
            safetensors_param_count(Path(m["path"])) or 0
            for m in resolve_models(ctx).values()
            if Path(m["path"]).is_dir()
        ),
        default=0,
    )
    memory = params * (BYTES_PER_PARAM_GPU if gpus else BYTES_PER_PARAM_CPU) + (1 << 30) if params else None
    return TaskResources(
        num_cpus=1 if gpus else cluster.max_cpus, num_gpus=gpus, memory=memory, reason=reason
    )


# ---------------------------------------------------------------------------------------------- models
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_model(path: str, tokenizer: str, device: str, objective: str = "clm") -> tuple[Any, Any]:
    """An fp32 model (through the objective's Auto class) and its tokenizer; InputError with the path
    when either cannot be loaded.

    The tokenizer is made ``text_only`` (``dapt.tokenizer.encode``): bits-per-byte, lm-eval's tasks and
    the cross-check then all encode a text that spells a special token as characters, as the mix stage
    did when it built the training blocks."""
    import torch
    from transformers import AutoTokenizer

    from dapt.tokenizer.encode import text_only
    from dapt.train.objectives import auto_class

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
        model = auto_class(objective).from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"cannot load model {path!r} / tokenizer {tokenizer!r}: {first} "
            "(set eval.base_model to a local folder, or eval.compare_base: false)"
        ) from None
    return model.to(device).eval(), text_only(tok, tokenizer)


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- measuring
BPB_METRICS = {
    "clm": "bits per byte (next-token log-likelihood, sliding windows)",
    "mlm": "pseudo-log-likelihood bits per byte (each token masked in turn; Salazar et al. 2020)",
    "span": "denoising bits per byte (span-corruption target loss per byte of the text)",
}
"""What the held-out ``bpb`` rows measure for each objective (results.json ``settings.bpb_metric``).
Only base vs adapted under the same objective is compared: the three are not on one scale."""


def measure_bpb(
    model: Any,
    tok: Any,
    heldout: dict,
    max_length: int,
    stride: int | None,
    batch: int,
    device,
    objective: str = "clm",
    seed: int = 0,
    pll_batch: int = 64,
):
    """Per held-out source, the objective's bits-per-byte result (eval/bpb.py, eval/pll.py): the same
    shape for all three (``bpb``, ``nll_sum``, ``bytes``, ``per_doc``), so the same paired bootstrap
    compares base and adapted."""
    from dapt.eval.pll import denoising_bits_per_byte, pll_bits_per_byte

    out = {}
    for source, h in heldout.items():
        t0 = time.perf_counter()
        if objective == "mlm":
            r = pll_bits_per_byte(model, tok, h["texts"], max_length, batch_size=pll_batch, device=device)
        elif objective == "span":
            r = denoising_bits_per_byte(model, tok, h["texts"], max_length, seed=seed, device=device)
        else:
            r = bits_per_byte(
                model, tok, h["texts"], max_length=max_length, stride=stride, batch_size=batch, device=device
            )
        r["seconds"] = round(time.perf_counter() - t0, 3)
        out[source] = r
    return out


def _jsonable(x: Any) -> Any:
    """Raw corpus-metric items (tuples, sets of entities) as JSON: sets sorted, anything else as text."""
    if isinstance(x, set | frozenset):
        return sorted(x, key=str)
    return str(x)


def _finite(x: Any) -> Any:
    """JSON without NaN/Infinity (the report reads results.json with strict parsers)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def run_probes(
    ctx: StageContext, models: dict[str, dict], objective: str, device: str, timings: dict[str, float]
) -> tuple[dict[str, dict], list[dict]]:
    """The downstream probe (eval/probe.py) of each model on each ``eval.probe.sets`` folder, and the
    base-vs-adapted rows. Masked LMs only: a decoder's classification head reads the last token, and a
    causal run has lm-eval's tasks for the same question."""
    from dapt.eval.probe import compare_probe, probe
    from dapt.eval.probe_data import load_probe_set

    e = ctx.cfg.eval
    if not e.probe.sets:
        return {}, []
    if objective != "mlm":
        ctx.log.warning("eval.probe.sets: the probe fine-tunes masked LMs; objective %s: skipped", objective)
        return {}, []
    results: dict[str, dict] = {role: {} for role in models}
    rows: list[dict] = []
    for folder in e.probe.sets:
        try:
            train, test, labels = load_probe_set(folder)
        except (OSError, ValueError) as err:
            raise InputError(f"eval.probe.sets: {folder}: {err}") from None
        name = Path(folder).name
        for role, info in models.items():
            t0 = time.perf_counter()
            results[role][name] = probe(
                info["path"],
                info["tokenizer"],
                train,
                test,
                labels,
                seeds=e.probe.seeds,
                steps=e.probe.steps,
                lr=e.probe.lr,
                batch_size=e.probe.batch_size,
                max_length=e.probe.max_length,
                device=device,
                name=name,
            )
            timings[f"{role}_probe_{name}"] = round(time.perf_counter() - t0, 3)
            r = results[role][name]
            ctx.log.info("probe %s %s: accuracy %.4f macro-F1 %.4f", role, name, r["accuracy"], r["macro_f1"])
        if "base" in results and "adapted" in results:
            rows += compare_probe(
                results["base"][name], results["adapted"][name], e.bootstrap_iters, e.alpha, ctx.cfg.seed
            )
    return results, rows


# ------------------------------------------------------------------------------------------------ stage
def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from dapt.eval.quantize import memory_bytes, save_variant, variant
    from dapt.tokenizer.encode import vocab_rows

    cfg, e = ctx.cfg, ctx.cfg.eval
    device = _device(e.device)
    mix = ctx.upstream_manifest("mix")
    objective = str(mix.get("objective") or "clm")
    # span windows are raw text (the block length), so that the corrupted input fits the model's row
    default_length = int(mix["block_len"]) if objective == "span" else int(mix["seq_len"])
    max_length = e.max_length or default_length
    stride = min(e.stride, max_length) if e.stride else max(1, max_length // 2)

    # 1. everything that can fail on configuration, before any model is loaded
    models = resolve_models(ctx)
    heldout = read_heldout(ctx)
    loaded = LoadedTasks()
    if e.tasks and objective == "mlm":  # lm-eval has no masked-LM model type
        loaded.unavailable = {
            name: "objective mlm: lm-eval scores causal and seq2seq models only (see the probe rows)"
            for name in e.tasks
        }
    elif e.tasks:
        inc = prepare_include_dir(e.task_dirs, ctx.work_dir / "lm_eval_tasks")
        loaded = load_tasks(e.tasks, inc)
        if loaded.unavailable and e.fail_on_unavailable:
            first = next(iter(loaded.unavailable.items()))
            raise InputError(f"eval.tasks: task {first[0]!r} is unavailable: {first[1]}")
    ctx.log.info(
        "eval: models %s; %d held-out sources; tasks %s (unavailable: %s); max_length %d stride %d on %s",
        {k: v["path"] for k, v in models.items()},
        len(heldout),
        list(loaded.tasks),
        list(loaded.unavailable),
        max_length,
        stride,
        device,
    )

    roles = [r for r in ("base", "adapted") if r in models]
    n_phases = (
        len(roles) * (1 + bool(loaded.tasks))
        + ("adapted" in models) * sum(p != e.dtype for p in e.precisions)
        + (bool(e.probe.sets) and objective == "mlm")
    )
    phases = StepProgress(ctx.run_dir, "eval", "loading models", n_phases, "phases")
    bpb: dict[str, dict] = {}
    tasks: dict[str, dict] = {}
    quant: list[dict[str, Any]] = []
    check: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for role in ("base", "adapted"):
        if role not in models:
            continue
        info = models[role]
        model, tok = load_model(info["path"], info["tokenizer"], device, objective)
        pos = getattr(model.config, "max_position_embeddings", None) if objective != "span" else None
        if pos and max_length > pos:
            raise ConfigError(
                f"eval.max_length: {max_length} exceeds {role} model's max_position_embeddings ({pos})"
            )
        info.update(params=_n_params(model), vocab_size=vocab_rows(tok), model_type=model.config.model_type)
        cmp_model = model if e.dtype == "fp32" else variant(model, e.dtype)
        t0 = time.perf_counter()
        measure = partial(
            measure_bpb,
            tok=tok,
            heldout=heldout,
            max_length=max_length,
            stride=stride,
            batch=e.batch_size,
            device=device,
            objective=objective,
            seed=cfg.seed,
            pll_batch=e.pll_batch_size,
        )
        phases.set(phases.done, f"{role}: bits-per-byte on {len(heldout)} held-out sources")
        bpb[role] = measure(cmp_model)
        phases.update()
        timings[f"{role}_bpb"] = round(time.perf_counter() - t0, 3)
        ctx.log.info("%s bpb: %s", role, {s: round(r["bpb"], 4) for s, r in bpb[role].items()})
        if loaded.tasks:
            t0 = time.perf_counter()
            phases.set(phases.done, f"{role}: lm-eval tasks {', '.join(loaded.tasks)}")
            tasks[role] = run_lm_eval(
                cmp_model,
                tok,
                loaded,
                ctx,
                max_length,
                device,
                objective,
                ctx.out_dir / "lm_eval" / role,
                model_name=str(info["path"]),
            )
            timings[f"{role}_tasks"] = round(time.perf_counter() - t0, 3)
            phases.update()
        if role == "adapted":
            if e.crosscheck_lmeval and objective == "clm":  # lm-eval's rolling loglikelihood is causal
                check = crosscheck(model, tok, heldout, ctx, max_length, device)
            for prec in e.precisions:
                t0 = time.perf_counter()
                v = model if prec == "fp32" else variant(model, prec)
                if prec == e.dtype:
                    res = bpb[role]
                else:
                    phases.set(phases.done, f"adapted at {prec}: bits-per-byte")
                    res = measure(v)
                    phases.update()
                qdir = ctx.work_dir / "precision" / prec
                disk, fmt = save_variant(v, prec, qdir)
                shutil.rmtree(qdir, ignore_errors=True)
                quant.append(
                    {
                        "precision": prec,
                        "bytes_in_memory": memory_bytes(v),
                        "bytes_on_disk": disk,
                        "disk_format": fmt,
                        "bpb": {s: r["bpb"] for s, r in res.items()},
                        "bpb_by_kind": {
                            kind: sum(res[s]["nll_sum"] for s in heldout if heldout[s]["kind"] == kind)
                            / sum(res[s]["bytes"] for s in heldout if heldout[s]["kind"] == kind)
                            / LN2
                            for kind in sorted({h["kind"] for h in heldout.values()})
                        },
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
                ctx.log.info(
                    "precision %s: %s", prec, {k: quant[-1][k] for k in ("bytes_in_memory", "bytes_on_disk")}
                )
                if v is not model:
                    del v
        del cmp_model, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    phases.set(phases.done, "probes" if n_phases > phases.done else "comparing")
    probes, probe_rows = run_probes(ctx, models, objective, device, timings)
    rows = (
        bpb_rows(bpb, heldout, e.bootstrap_iters, e.alpha, cfg.seed)
        + task_rows(tasks, e.bootstrap_iters, e.alpha, cfg.seed)
        + probe_rows
    )
    adjust_rows(rows, e.alpha)  # Holm per family: `significant` is the family-wise decision
    task_status = {n: {"status": "ok", "tasks": sorted(g)} for n, g in loaded.tasks.items()}
    task_status.update({n: {"status": "unavailable", "error": err} for n, err in loaded.unavailable.items()})
    results = {
        "schema_version": SCHEMA_VERSION,
        "models": models,
        "settings": {
            "objective": objective,
            "bpb_metric": BPB_METRICS[objective],
            "max_length": max_length,
            "stride": stride,
            "batch_size": e.batch_size,
            "lm_backend": e.lm_backend,
            "pack_tokens": e.pack_tokens,
            "dtype": e.dtype,
            "device": device,
            "bootstrap_iters": e.bootstrap_iters,
            "alpha": e.alpha,
            "p_value_method": "paired bootstrap, shifted null (Berg-Kirkpatrick et al. 2012), two-sided",
            "p_adjust_method": "holm",
            "seed": cfg.seed,
            "num_fewshot": e.num_fewshot,
            "limit": e.limit,
            "heldout_splits": e.heldout_splits,
        },
        "metrics": rows,
        "bpb": {
            role: {s: {k: v for k, v in r.items() if k != "per_doc"} for s, r in per.items()}
            for role, per in bpb.items()
        },
        "heldout": {
            s: {"kind": h["kind"], "docs": len(h["texts"]), "files": h["files"]} for s, h in heldout.items()
        },
        "tasks": task_status,
        "quantization": quant,
        "probe": probes,
        "crosscheck": check,
        "timings": timings,
    }
    (ctx.out_dir / RESULTS).write_text(json.dumps(_finite(results), indent=2) + "\n", encoding="utf-8")
    items = ctx.out_dir / "items"
    items.mkdir()
    for role, per in bpb.items():  # the per-document numbers behind each bootstrap, for re-analysis
        with open(items / f"bpb_{role}.jsonl", "w", encoding="utf-8") as f:
            for s, r in per.items():
                for i, (nll, nb) in enumerate(r["per_doc"]):
                    f.write(json.dumps({"source": s, "doc": i, "nll": nll, "bytes": nb}) + "\n")
    for role, per_task in tasks.items():  # per-item task values behind each paired test
        with open(items / f"tasks_{role}.jsonl", "w", encoding="utf-8") as f:
            for name, t in per_task.items():
                for metric, vals in t["items"].items():
                    for doc, v in sorted(vals.items()):
                        f.write(json.dumps({"task": name, "metric": metric, "doc": doc, "value": v}) + "\n")
                for metric, c in t.get("corpus", {}).items():
                    for doc, v in sorted(c["items"].items()):
                        row = {"task": name, "metric": metric, "doc": doc, "value": v}
                        f.write(json.dumps(row, default=_jsonable) + "\n")

    summary = {}
    for r in rows:
        if r["kind"] == "bpb" and r["pooled"]:
            summary[f"{r['source_kind']}_bpb"] = r["adapted"]
            summary[f"{r['source_kind']}_bpb_delta_pct"] = r["delta_pct"]
    keys = (
        "name",
        "kind",
        "source",
        "task",
        "metric",
        "base",
        "adapted",
        "delta",
        "delta_pct",
        "p_value",
        "p_adjusted",
        "p_family",
        "significant",
    )
    return _finite(
        {
            "outputs": {"results": RESULTS, "items": "items", **({"lm_eval": "lm_eval"} if tasks else {})},
            "metrics": [{k: r.get(k) for k in keys if k in r} for r in rows],
            "summary": summary,
            "tasks_unavailable": loaded.unavailable,
            "counts": {
                "metrics": len(rows),
                "significant": sum(1 for r in rows if r.get("significant")),
                "heldout_docs": sum(len(h["texts"]) for h in heldout.values()),
                "tasks_run": sum(len(g) for g in loaded.tasks.values()),
                "tasks_unavailable": len(loaded.unavailable),
            },
        }
    )


__all__ = ["resources", "run"]
