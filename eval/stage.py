"""The eval stage: base vs adapted model on held-out bits-per-byte and lm-eval tasks, with significance,
and the adapted model at several precisions. Writes ``results.json`` (schema in docs/evaluation.md).

Order of work: everything that can fail on configuration (task names, upstream paths) is checked before
any model is loaded. Models are evaluated one at a time and freed, so peak memory is about one model
plus one precision variant.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from dapt.eval.bpb import LN2, bits_per_byte
from dapt.eval.significance import paired_bootstrap, paired_bootstrap_corpus
from dapt.eval.tasks_registry import LoadedTasks, load_tasks, prepare_include_dir, seeds, write_rolling_task
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.stages import StageContext

RESULTS = "results.json"
SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------- inputs
def _resolve(base: Path, p: str | None) -> Path | None:
    if not p:
        return None
    q = Path(p)
    return q if q.is_absolute() else base / q


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def resolve_models(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """``{"base": {...}, "adapted": {...}}`` with ``path``, ``tokenizer`` and ``role`` of each model."""
    cfg = ctx.cfg
    tok_dir, tok_man = ctx.upstream_dir("tokenizer"), ctx.upstream_manifest("tokenizer")
    train_dir, train_man = ctx.upstream_dir("train"), ctx.upstream_manifest("train")
    tok_out = tok_man.get("outputs") or {}
    new_tok = _resolve(tok_dir, tok_out.get("tokenizer"))
    adapted = _resolve(train_dir, (train_man.get("outputs") or {}).get("model"))
    if adapted is None or not adapted.is_dir():
        raise InputError(f"{train_dir}/manifest.json: outputs.model is missing or not a folder ({adapted})")
    models: dict[str, dict[str, Any]] = {
        "adapted": {
            "path": str(adapted),
            "tokenizer": str(adapted if _has_tokenizer(adapted) else new_tok),
            "role": "adapted (train stage output)",
        }
    }
    if not cfg.eval.compare_base:
        return models
    base_info = tok_man.get("base") or {}
    if cfg.eval.base_model:
        path = cfg.eval.base_model
        models["base"] = {"path": path, "tokenizer": path, "role": "base (eval.base_model)"}
    elif base_info.get("model"):
        path = str(base_info["model"])
        models["base"] = {
            "path": path,
            "tokenizer": str(base_info.get("tokenizer") or path),
            "role": "base (original pretrained model and tokenizer)",
        }
    else:
        initial = _resolve(tok_dir, tok_out.get("model"))
        if initial is None:
            raise InputError(f"{tok_dir}/manifest.json: neither base.model nor outputs.model is set")
        models["base"] = {
            "path": str(initial),
            "tokenizer": str(initial if _has_tokenizer(initial) else new_tok),
            "role": "base (initial model before training: model.from_config has no pretrained base)",
        }
    return models


def read_heldout(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """Held-out texts per source: ``{source: {"kind", "texts", "files"}}`` from the mix stage."""
    cfg = ctx.cfg
    mix_dir, mix_man = ctx.upstream_dir("mix"), ctx.upstream_manifest("mix")
    root = _resolve(mix_dir, (mix_man.get("outputs") or {}).get("heldout"))
    if root is None or not root.is_dir():
        raise InputError(f"{mix_dir}/manifest.json: outputs.heldout is missing or not a folder ({root})")
    kinds = {s.name: s.kind for s in cfg.sources}
    out: dict[str, dict[str, Any]] = {}
    for src_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        texts: list[str] = []
        kind = kinds.get(src_dir.name)
        files = []
        for split in cfg.eval.heldout_splits:
            f = src_dir / f"{split}.jsonl"
            if not f.exists():
                continue
            files.append(str(f))
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{f}:{lineno}: invalid JSON: {e.msg}") from None
                    text = rec.get("text")
                    if not isinstance(text, str):
                        raise InputError(f"{f}:{lineno}: no string field 'text'")
                    kind = kind or rec.get("kind")
                    if text.strip():
                        texts.append(text)
        cap = cfg.eval.max_docs_per_source
        if cap is not None:
            texts = texts[:cap]
        if texts:
            out[src_dir.name] = {"kind": kind or "unknown", "texts": texts, "files": files}
    if not out:
        raise InputError(f"{root}: no held-out documents in splits {cfg.eval.heldout_splits}")
    return out


# ---------------------------------------------------------------------------------------------- models
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_model(path: str, tokenizer: str, device: str) -> tuple[Any, Any]:
    """An fp32 causal LM and its tokenizer; InputError with the path when either cannot be loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"cannot load model {path!r} / tokenizer {tokenizer!r}: {first} "
            "(set eval.base_model to a local folder, or eval.compare_base: false)"
        ) from None
    return model.to(device).eval(), tok


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- measuring
def measure_bpb(model: Any, tok: Any, heldout: dict, max_length: int, stride: int | None, batch: int, device):
    out = {}
    for source, h in heldout.items():
        t0 = time.perf_counter()
        r = bits_per_byte(
            model, tok, h["texts"], max_length=max_length, stride=stride, batch_size=batch, device=device
        )
        r["seconds"] = round(time.perf_counter() - t0, 3)
        out[source] = r
    return out


def _metric_value(res: dict, metric: str) -> tuple[float | None, float | None]:
    """lm-eval's aggregated value and stderr of ``metric`` (keys ``metric,filter``)."""
    for key, val in res.items():
        if key.split(",")[0] == metric and "," in key:
            filt = key.split(",", 1)[1]
            se = res.get(f"{metric}_stderr,{filt}")
            return (
                float(val) if isinstance(val, int | float) else None,
                float(se) if isinstance(se, int | float) else None,
            )
    return None, None


def run_lm_eval(
    model: Any, tok: Any, loaded: LoadedTasks, ctx: StageContext, max_length: int, device: str
) -> dict[str, Any]:
    """Run every loaded task on the in-memory model. Returns per leaf task: metrics (value, stderr,
    aggregation, higher_is_better), per-item values by doc id, versions and sample counts."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.lm_backend import DaptLM

    e = ctx.cfg.eval
    leaves: dict[str, Any] = {}
    for group in loaded.tasks.values():
        leaves.update(group)
    if not leaves:
        return {}
    common = dict(
        pretrained=model, tokenizer=tok, batch_size=e.batch_size, max_length=max_length, device=device
    )
    lm = DaptLM(**common, pack_tokens=e.pack_tokens) if e.lm_backend == "dapt" else HFLM(**common)
    seed = ctx.cfg.seed
    res = simple_evaluate(
        model=lm,
        tasks=list(leaves.values()),
        num_fewshot=e.num_fewshot,
        limit=e.limit,
        bootstrap_iters=e.bootstrap_iters,
        log_samples=True,
        **seeds(seed),
    )
    return task_results(res, leaves)


def task_results(res: dict[str, Any], leaves: dict[str, Any]) -> dict[str, Any]:
    """Per leaf task of a ``simple_evaluate`` result (run with ``log_samples``): metrics (value, stderr,
    aggregation, higher_is_better), per-item values by doc id for mean-aggregated metrics, and for
    corpus-level metrics (weighted F1, MCC...) the raw per-item values with lm-eval's aggregation
    function under ``corpus`` (in memory only), so both can get a paired bootstrap."""
    from lm_eval.api.metrics import mean as lm_mean

    out: dict[str, Any] = {}
    for name in leaves:
        r = res["results"].get(name, {})
        conf = res.get("configs", {}).get(name, {})
        try:
            agg_fns = dict(leaves[name].aggregation())
        except Exception:  # noqa: BLE001 - a task object without aggregation(): no corpus bootstrap
            agg_fns = {}
        metrics = {}
        items: dict[str, dict[int, float]] = {}
        corpus: dict[str, dict[str, Any]] = {}
        samples = res.get("samples", {}).get(name, [])
        for m in conf.get("metric_list", []):
            mname = m["metric"] if isinstance(m["metric"], str) else str(m["metric"])
            value, stderr = _metric_value(r, mname)
            agg = m.get("aggregation")
            metrics[mname] = {
                "value": value,
                "stderr": stderr,
                "aggregation": agg if isinstance(agg, str) else "custom",
                "higher_is_better": bool(m.get("higher_is_better", True)),
            }
            raw = {int(s["doc_id"]): s[mname] for s in samples if mname in s}
            if agg == "mean" or agg_fns.get(mname) is lm_mean or (agg is None and mname not in agg_fns):
                items[mname] = {i: float(v) for i, v in raw.items() if isinstance(v, int | float | bool)}
            elif callable(agg_fns.get(mname)) and raw:
                corpus[mname] = {"fn": agg_fns[mname], "items": raw}
        out[name] = {
            "metrics": metrics,
            "items": items,
            "corpus": corpus,
            "version": res.get("versions", {}).get(name),
            "n_samples": res.get("n-samples", {}).get(name),
            "num_fewshot": res.get("n-shot", {}).get(name),
        }
    return out


def crosscheck(model: Any, tok: Any, heldout: dict, ctx: StageContext, max_length: int, device: str) -> dict:
    """dapt's bits-per-byte vs lm-eval's loglikelihood_rolling on the same text, same context handling
    (disjoint windows, one prefix token, no BOS added by the tokenizer); both values and both times."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.tasks_registry import task_manager

    e = ctx.cfg.eval
    inc = ctx.work_dir / "crosscheck"
    if inc.exists():
        shutil.rmtree(inc)
    inc.mkdir(parents=True)
    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        batch_size=e.batch_size,
        max_length=max_length,
        device=device,
        add_bos_token=False,
    )
    out = {}
    for source, h in heldout.items():
        data = inc / f"{source}.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in h["texts"]), encoding="utf-8")
        name = f"dapt_heldout_{source}".replace("-", "_").replace(".", "_")
        write_rolling_task(inc / "tasks", name, data)
        tm = task_manager(inc / "tasks", include_defaults=False)
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[name], task_manager=tm, bootstrap_iters=0, log_samples=False)
        lm_s = time.perf_counter() - t0
        lm_bpb = _metric_value(res["results"][name], "bits_per_byte")[0]
        t0 = time.perf_counter()
        ours = bits_per_byte(
            model, tok, h["texts"], max_length=max_length, stride=None, batch_size=e.batch_size
        )
        ours_s = time.perf_counter() - t0
        out[source] = {
            "dapt_bpb": ours["bpb"],
            "lmeval_bpb": lm_bpb,
            "rel_diff": abs(ours["bpb"] - lm_bpb) / lm_bpb if lm_bpb else None,
            "dapt_seconds": round(ours_s, 3),
            "lmeval_seconds": round(lm_s, 3),
            "speedup": round(lm_s / ours_s, 3) if ours_s > 0 else None,
        }
        ctx.log.info("crosscheck %s: %s", source, out[source])
    return out


# ------------------------------------------------------------------------------------------ comparison
def _row_common(base: float | None, adapted: float | None, higher_is_better: bool) -> dict[str, Any]:
    delta = adapted - base if base is not None and adapted is not None else None
    pct = 100.0 * delta / abs(base) if delta is not None and base else None
    better = None if delta is None else (delta > 0) == higher_is_better and delta != 0
    return {"delta": delta, "delta_pct": pct, "higher_is_better": higher_is_better, "improved": better}


def bpb_rows(bpb: dict[str, dict], heldout: dict, iters: int, alpha: float, seed: int) -> list[dict]:
    """One row per source plus one pooled row per source kind (domain / general)."""
    groups: list[tuple[str, str, list[str], bool]] = [(s, h["kind"], [s], False) for s, h in heldout.items()]
    for kind in sorted({h["kind"] for h in heldout.values()}):
        members = [s for s, h in heldout.items() if h["kind"] == kind]
        groups.append((f"all-{kind}", kind, members, True))
    rows = []
    for label, kind, members, pooled in groups:
        a_items = [it for s in members for it in bpb["adapted"][s]["per_doc"]]
        row: dict[str, Any] = {
            "name": f"bpb/{label}",
            "kind": "bpb",
            "source": label,
            "source_kind": kind,
            "pooled": pooled,
            "sources": members,
            "metric": "bits_per_byte",
            "n_items": len(a_items),
        }
        a_nll = [n for n, _ in a_items]
        nbytes = [b for _, b in a_items]
        if "base" in bpb:
            b_items = [it for s in members for it in bpb["base"][s]["per_doc"]]
            st = paired_bootstrap(
                [n for n, _ in b_items], a_nll, nbytes, nbytes, scale=1 / LN2, iters=iters, seed=seed
            )
            row.update(
                base=st["base"],
                adapted=st["adapted"],
                **_row_common(st["base"], st["adapted"], higher_is_better=False),
                base_stderr=st["base_stderr"],
                adapted_stderr=st["adapted_stderr"],
                ci_low=st["ci_low"],
                ci_high=st["ci_high"],
                p_value=st["p_value"],
                significant=st["p_value"] < alpha,
            )
        else:
            st = paired_bootstrap(a_nll, a_nll, nbytes, nbytes, scale=1 / LN2, iters=iters, seed=seed)
            row.update(
                base=None,
                adapted=st["adapted"],
                **_row_common(None, st["adapted"], False),
                base_stderr=None,
                adapted_stderr=st["adapted_stderr"],
                ci_low=None,
                ci_high=None,
                p_value=None,
                significant=None,
            )
        rows.append(row)
    return rows


def task_rows(tasks: dict[str, dict], iters: int, alpha: float, seed: int) -> list[dict]:
    rows = []
    adapted = tasks.get("adapted", {})
    base = tasks.get("base", {})
    for name, a in adapted.items():
        b = base.get(name)
        for metric, am in a["metrics"].items():
            bm = b["metrics"].get(metric) if b else None
            row: dict[str, Any] = {
                "name": f"{name}/{metric}",
                "kind": "task",
                "task": name,
                "metric": metric,
                "aggregation": am["aggregation"],
                "version": a["version"],
                "num_fewshot": a["num_fewshot"],
                "base": bm["value"] if bm else None,
                "adapted": am["value"],
                **_row_common(bm["value"] if bm else None, am["value"], am["higher_is_better"]),
                "base_stderr": bm["stderr"] if bm else None,
                "adapted_stderr": am["stderr"],
                "ci_low": None,
                "ci_high": None,
                "p_value": None,
                "significant": None,
                "n_items": len(a["items"].get(metric, {})) or (a["n_samples"] or {}).get("effective"),
            }
            ai = a["items"].get(metric)
            bi = b["items"].get(metric) if b else None
            ac = a.get("corpus", {}).get(metric)
            bc = b.get("corpus", {}).get(metric) if b else None
            st = None
            if ai and bi:  # paired test over the items both models scored
                ids = sorted(set(ai) & set(bi))
                st = paired_bootstrap([bi[i] for i in ids], [ai[i] for i in ids], iters=iters, seed=seed)
            elif ac and bc:  # corpus-level metric: its own aggregation on each resample
                ids = sorted(set(ac["items"]) & set(bc["items"]))
                st = paired_bootstrap_corpus(
                    [bc["items"][i] for i in ids],
                    [ac["items"][i] for i in ids],
                    ac["fn"],
                    iters=iters,
                    seed=seed,
                )
            if st is not None:
                row.update(
                    ci_low=st["ci_low"],
                    ci_high=st["ci_high"],
                    p_value=st["p_value"],
                    significant=st["p_value"] < alpha,
                    n_items=len(ids),
                )
            rows.append(row)
    return rows


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


# ------------------------------------------------------------------------------------------------ stage
def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from dapt.eval.quantize import memory_bytes, save_variant, variant

    cfg, e = ctx.cfg, ctx.cfg.eval
    device = _device(e.device)
    max_length = e.max_length or cfg.train.seq_len
    stride = min(e.stride, max_length) if e.stride else max(1, max_length // 2)

    # 1. everything that can fail on configuration, before any model is loaded
    models = resolve_models(ctx)
    heldout = read_heldout(ctx)
    loaded = LoadedTasks()
    if e.tasks:
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

    bpb: dict[str, dict] = {}
    tasks: dict[str, dict] = {}
    quant: list[dict[str, Any]] = []
    check: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for role in ("base", "adapted"):
        if role not in models:
            continue
        info = models[role]
        model, tok = load_model(info["path"], info["tokenizer"], device)
        pos = getattr(model.config, "max_position_embeddings", None)
        if pos and max_length > pos:
            raise ConfigError(
                f"eval.max_length: {max_length} exceeds {role} model's max_position_embeddings ({pos})"
            )
        info.update(params=_n_params(model), vocab_size=len(tok), model_type=model.config.model_type)
        cmp_model = model if e.dtype == "fp32" else variant(model, e.dtype)
        t0 = time.perf_counter()
        bpb[role] = measure_bpb(cmp_model, tok, heldout, max_length, stride, e.batch_size, device)
        timings[f"{role}_bpb"] = round(time.perf_counter() - t0, 3)
        ctx.log.info("%s bpb: %s", role, {s: round(r["bpb"], 4) for s, r in bpb[role].items()})
        if loaded.tasks:
            t0 = time.perf_counter()
            tasks[role] = run_lm_eval(cmp_model, tok, loaded, ctx, max_length, device)
            timings[f"{role}_tasks"] = round(time.perf_counter() - t0, 3)
        if role == "adapted":
            if e.crosscheck_lmeval:
                check = crosscheck(model, tok, heldout, ctx, max_length, device)
            for prec in e.precisions:
                t0 = time.perf_counter()
                v = model if prec == "fp32" else variant(model, prec)
                if prec == e.dtype:
                    res = bpb[role]
                else:
                    res = measure_bpb(v, tok, heldout, max_length, stride, e.batch_size, device)
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

    rows = bpb_rows(bpb, heldout, e.bootstrap_iters, e.alpha, cfg.seed) + task_rows(
        tasks, e.bootstrap_iters, e.alpha, cfg.seed
    )
    task_status = {n: {"status": "ok", "tasks": sorted(g)} for n, g in loaded.tasks.items()}
    task_status.update({n: {"status": "unavailable", "error": err} for n, err in loaded.unavailable.items()})
    results = {
        "schema_version": SCHEMA_VERSION,
        "models": models,
        "settings": {
            "max_length": max_length,
            "stride": stride,
            "batch_size": e.batch_size,
            "lm_backend": e.lm_backend,
            "pack_tokens": e.pack_tokens,
            "dtype": e.dtype,
            "device": device,
            "bootstrap_iters": e.bootstrap_iters,
            "alpha": e.alpha,
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
        "significant",
    )
    return _finite(
        {
            "outputs": {"results": RESULTS, "items": "items"},
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
