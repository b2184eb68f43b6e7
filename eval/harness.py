"""The lm-eval side of the eval stage: run loaded tasks on an in-memory model, turn lm-eval's result
dict into per-task metrics with per-item values (for the paired bootstrap), and the cross-check of
dapt's bits-per-byte against lm-eval's ``loglikelihood_rolling`` on the same text.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from dapt.eval.bpb import bits_per_byte
from dapt.eval.tasks_registry import LoadedTasks, seeds, write_rolling_task
from dapt.pipeline.stages import StageContext


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
    model: Any,
    tok: Any,
    loaded: LoadedTasks,
    ctx: StageContext,
    max_length: int,
    device: str,
    objective: str = "clm",
    output_path: Path | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Run every loaded task on the in-memory model. Returns per leaf task: metrics (value, stderr,
    aggregation, higher_is_better), per-item values by doc id, versions and sample counts. An
    encoder-decoder (objective ``span``) goes through lm-eval's own seq2seq model type (the context
    to the encoder, the continuation scored by the decoder); dapt's packed backend is causal only.

    With ``output_path``, lm-eval's own files are written there as ``lm_eval --output_path PATH
    --log_samples`` writes them (``results_<date>.json`` and ``samples_<task>_<date>.jsonl`` in a
    folder named after ``model_name``, as lm-eval names it from ``pretrained=``), by lm-eval's
    ``EvaluationTracker``, so tools that read lm-eval output read dapt's unchanged."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
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
    if objective == "span":
        lm = HFLM(**common, backend="seq2seq")
    elif e.lm_backend == "dapt":
        lm = DaptLM(**common, pack_tokens=e.pack_tokens)
    else:
        lm = HFLM(**common)
    seed = ctx.cfg.seed
    tracker = EvaluationTracker(output_path=str(output_path)) if output_path is not None else None
    res = simple_evaluate(
        model=lm,
        tasks=list(leaves.values()),
        num_fewshot=e.num_fewshot,
        limit=e.limit,
        bootstrap_iters=e.bootstrap_iters,
        log_samples=True,
        evaluation_tracker=tracker,
        **seeds(seed),
    )
    out = task_results(res, leaves)
    if tracker is not None:
        if model_name:  # an in-memory model gives lm-eval no model_args to name it by
            from lm_eval.utils import sanitize_model_name

            tracker.general_config_tracker.model_name = model_name
            tracker.general_config_tracker.model_name_sanitized = sanitize_model_name(model_name)
        write_lm_eval_files(tracker, res, Path(output_path))
    return out


def write_lm_eval_files(tracker: Any, res: dict[str, Any], output_path: Path) -> None:
    """lm-eval's result and per-sample files, as its CLI writes them (lm_eval/_cli/run.py): the
    aggregated results without the samples, then one samples file per task. The tracker swallows its
    own write errors with a warning; a missing file here is an error instead."""
    import copy

    samples = copy.deepcopy(res.get("samples", {}))  # the tracker sanitises samples in place
    results = {k: v for k, v in res.items() if k != "samples"}
    tracker.save_results_aggregated(results=copy.deepcopy(results), samples=samples)
    for task_name in results.get("configs", {}):
        if task_name in samples:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    if not list(output_path.rglob("results_*.json")):
        raise RuntimeError(f"lm-eval did not write its results file under {output_path}")


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
    """The stage's cross-check (``crosscheck_texts`` with the stage's batch size, work folder and log)."""
    return crosscheck_texts(
        model, tok, heldout, ctx.work_dir / "crosscheck", max_length, device, ctx.cfg.eval.batch_size, ctx.log
    )


def crosscheck_texts(
    model: Any,
    tok: Any,
    heldout: dict,
    work_dir: Path,
    max_length: int,
    device: str,
    batch_size: int = 8,
    log: logging.Logger | None = None,
) -> dict:
    """dapt's bits-per-byte vs lm-eval's loglikelihood_rolling (stock ``HFLM`` through ``simple_evaluate``)
    on the same text with the same context handling: disjoint windows of ``max_length``, one prefix token,
    no BOS added by the tokenizer. Both values, both token counts and both times per source.

    Both sides must get the same ``max_length`` (passed here explicitly): ``HFLM`` left to itself uses the
    model's ``max_position_embeddings`` (512 on the tiny run, 8192 on SmolLM2), which moves its bpb by
    0.03-0.3% against dapt's ``eval.max_length`` windows. Both sides also follow text-is-text: the eval
    stage hands in a tokenizer made ``text_only``, so a held-out text that spells a special token gives the
    same ids in ``HFLM.tok_encode`` as in ``bits_per_byte``. ``dapt_tokens``/``lmeval_tokens`` show it."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.bpb import encode_texts
    from dapt.eval.tasks_registry import task_manager

    log = log or logging.getLogger("dapt.eval")
    inc = Path(work_dir)
    if inc.exists():
        shutil.rmtree(inc)
    inc.mkdir(parents=True)
    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        batch_size=batch_size,
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
            model, tok, h["texts"], max_length=max_length, stride=None, batch_size=batch_size
        )
        ours_s = time.perf_counter() - t0
        lm_ids = [lm.tok_encode(t) for t in h["texts"]]
        out[source] = {
            "dapt_bpb": ours["bpb"],
            "lmeval_bpb": lm_bpb,
            "rel_diff": abs(ours["bpb"] - lm_bpb) / lm_bpb if lm_bpb else None,
            "max_length": max_length,
            "dapt_tokens": ours["tokens"],
            "lmeval_tokens": sum(len(x) for x in lm_ids),
            "same_ids": lm_ids == encode_texts(tok, h["texts"]),
            "dapt_seconds": round(ours_s, 3),
            "lmeval_seconds": round(lm_s, 3),
            "speedup": round(lm_s / ours_s, 3) if ours_s > 0 else None,
        }
        log.info("crosscheck %s: %s", source, out[source])
    return out
