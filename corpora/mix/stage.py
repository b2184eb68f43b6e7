"""The ``mix`` stage: decontamination, tokenisation, token-exact mixing, the token store.

Flow (docs/mixing.md has the reasoning and the output format):

1. ``prep`` (:mod:`prep`, cached in ``work_dir``; a mix-ratio, total, seed or ``seq_len`` change
   reuses it): one pass of Ray tasks over every kept document: drop the split stage's held-out ones, flag
   training documents that are exact or MinHash near-duplicates of held-out text and those sharing an
   n-gram with evaluation data, and tokenise the rest into token shards;
2. a Ray task counts the supply (tokens per source); the solver turns it, the target fraction and the
   total into per-source budgets;
3. a Ray task writes the index over the shards (:mod:`index`): epochs of permutations, the last
   document truncated to hit each budget exactly, the shuffled ``seq_len + 1`` blocks. The driver
   holds counts only; the train stage reads blocks with :class:`store.TokenStore`.

The block length ``seq_len`` is this stage's fact: train and eval read it from the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from dapt.corpora.clean.outputs import kept_files
from dapt.corpora.mix.config import MixConfig
from dapt.corpora.mix.index import StoreJob, build_store, supply_stats
from dapt.corpora.mix.prep import PREP_VERSION, build_prep
from dapt.corpora.mix.solver import MixPlan, SourceSupply, solve_mix
from dapt.corpora.split.stage import heldout_rule, read_heldout_docs
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import read_json, resolve_output, stable_hash
from dapt.pipeline.ray_runtime import call_in_task, init_ray

# ----------------------------------------------------------------------------------------------- inputs


def tokenizer_path(ctx: Any) -> Path:
    tok_dir = ctx.upstream_dir("tokenizer")
    outputs = ctx.upstream_manifest("tokenizer").get("outputs") or {}
    if "tokenizer" not in outputs:
        raise InputError(
            f"{tok_dir / 'manifest.json'}: outputs.tokenizer is missing (re-run `dapt tokenizer`)"
        )
    return resolve_output(tok_dir, outputs["tokenizer"])


def eval_texts(ctx: Any) -> tuple[dict[str, list[str]], str | None]:
    """Texts of the evaluation data to decontaminate against, and why some could not be read (or None)."""
    mcfg: MixConfig = ctx.cfg.mix
    texts: dict[str, list[str]] = {}
    problem = None
    if not mcfg.decontamination.enabled:
        return texts, None
    tasks = list(mcfg.decontamination.tasks or [])
    if tasks:
        try:
            from dapt.eval.tasks_data import task_texts
        except ImportError as e:
            problem = f"dapt.eval.tasks_data is not available ({e}); tasks {tasks} were NOT checked"
            ctx.log.warning("decontamination: %s", problem)
        else:
            task_dirs = mcfg.decontamination.task_dirs
            texts.update({k: list(v) for k, v in task_texts(tasks, task_dirs=task_dirs).items()})
            empty = sorted(k for k, v in texts.items() if not v)
            if empty:
                problem = f"no item text could be loaded for tasks {empty}; they were NOT checked"
                ctx.log.warning("decontamination: %s", problem)
    for f in mcfg.decontamination.extra_files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise ConfigError(f"mix.decontamination.extra_files: {f}: no such file")
        items: list[str] = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if path.suffix == ".jsonl":
                    try:
                        items.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise InputError(
                            f"{path}:{lineno}: expected a JSON object with a 'text' field"
                        ) from None
                else:
                    items.append(line.rstrip("\n"))
        texts[path.name] = items
    return texts, problem


# ----------------------------------------------------------------------------------------------- stage


def _prep_key(ctx: Any, texts: dict[str, list[str]], tok_path: Path) -> str:
    mcfg: MixConfig = ctx.cfg.mix
    return stable_hash(
        {
            "v": PREP_VERSION,
            "clean": ctx.upstream_manifest("clean").get("fingerprint"),
            "tokenizer": ctx.upstream_manifest("tokenizer").get("fingerprint"),
            "tokenizer_path": str(tok_path),
            "sources": [[s.name, s.kind] for s in ctx.cfg.sources],
            "split": ctx.upstream_manifest("split").get("fingerprint"),
            "near_dedup": mcfg.near_dedup.model_dump(mode="json"),
            "decontamination": mcfg.decontamination.model_dump(mode="json"),
            "eval_texts": stable_hash(texts),
        }
    )


def objective_blocks(objective: str, mcfg: MixConfig, tok_path: Path) -> tuple[int, dict[str, Any]]:
    """Block length for the run's objective (``train.objectives.block_tokens``) and the manifest's
    account of how blocks and the ratio are counted."""
    from dapt.train.objectives import block_tokens, special_frame

    frame: tuple[list[int], list[int]] = ([], [])
    if objective == "mlm":
        from transformers import AutoTokenizer

        frame = special_frame(AutoTokenizer.from_pretrained(str(tok_path)))
    try:
        block_len = block_tokens(
            objective,
            mcfg.seq_len,
            len(frame[0]) + len(frame[1]),
            mcfg.span_noise_density,
            mcfg.span_mean_length,
        )
    except ValueError as e:
        raise ConfigError(f"mix.seq_len: {e}") from None
    counted = {
        "clm": "every token of a block (seq_len inputs + the last target)",
        "mlm": "every token of a block; the special frame train adds around it is not text and not counted",
        "span": "every raw token of a block (inputs and targets come from them); sentinels and EOS are not counted",
    }[objective]
    packing = {
        "objective": objective,
        "model_input_tokens": mcfg.seq_len,
        "block_tokens": block_len,
        "ratio_counted_in": counted,
    }
    if objective == "mlm":
        packing["frame"] = {"head": frame[0], "tail": frame[1]}
    if objective == "span":
        from dapt.train.objectives import corrupted_lengths

        inputs, targets = corrupted_lengths(block_len, mcfg.span_noise_density, mcfg.span_mean_length)
        packing.update(
            span_noise_density=mcfg.span_noise_density,
            span_mean_length=mcfg.span_mean_length,
            input_tokens=inputs,
            target_tokens=targets,
        )
    return block_len, packing


def fraction_from(overlay: str | None) -> dict[str, Any]:
    """Where an ``auto`` domain fraction came from (``overlay``: the loader's ``from_sweep`` entry): the
    sweep's overlay and that sweep's fingerprint, so the report can show the sweep behind this mix (``{}``
    for a fraction set by hand)."""
    if not overlay:
        return {}
    folder = Path(overlay).resolve().parent
    manifest = json.loads((folder / "manifest.json").read_text())
    return {
        "fraction_from": {
            "overlay": str(Path(overlay).resolve()),
            "sweep_manifest": str(folder / "manifest.json"),
            "sweep_fingerprint": manifest.get("fingerprint"),
        }
    }


def run(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see the module docstring)."""
    cfg = ctx.cfg
    mcfg: MixConfig = cfg.mix
    seed = mcfg.seed if mcfg.seed is not None else cfg.seed
    objective = ctx.upstream_manifest("tokenizer").get("objective", "clm")
    tok_path = tokenizer_path(ctx)
    block_len, packing = objective_blocks(objective, mcfg, tok_path)
    fraction = mcfg.target_domain_fraction
    kinds = {s.name: s.kind for s in cfg.sources}
    for name in {**mcfg.weights, **mcfg.max_epochs_per_source}:
        if name not in kinds:
            raise ConfigError(f"mix: per-source setting for {name!r}, which is not a configured source")

    files = kept_files(ctx)
    split_dir = ctx.require_output("split", "heldout", folder=True)
    texts, decontam_problem = eval_texts(ctx)

    key = _prep_key(ctx, texts, tok_path)
    prep = ctx.work_dir / f"prep-{key[:16]}"
    if ctx.force or not (prep / "_DONE").exists():  # --force also redoes the cached pass
        for old in ctx.work_dir.glob("prep-*"):
            shutil.rmtree(old, ignore_errors=True)  # one cache at a time: it is as large as the corpus
        after = heldout_rule(frozenset(), ctx.upstream_manifest("split")).after
        build_prep(ctx, files, read_heldout_docs(split_dir, kinds), tok_path, texts, prep, after)
        prep_reused = False
    else:
        prep_reused = True
        ctx.log.info("reusing prepared documents in %s", prep)
    info = read_json(prep / "prep.json")
    t0 = time.perf_counter()
    eos_id = int(info["encoder"]["eos_id"])
    if info["encoder"]["vocab_size"] > np.iinfo(np.uint32).max:
        raise InputError("vocabulary larger than uint32")

    init_ray(cfg.ray)  # a reused prep started no Ray yet
    stats = call_in_task(supply_stats, str(prep), name="dapt:mix-supply")
    supplies = [
        SourceSupply(
            name=s.name,
            kind=s.kind,
            tokens=stats[s.name]["tokens"] if s.name in stats else 0,
            docs=stats[s.name]["docs"] if s.name in stats else 0,
            weight=mcfg.weights.get(s.name, s.weight),
            max_epochs=mcfg.max_epochs_per_source.get(s.name, mcfg.max_epochs),
        )
        for s in cfg.sources
    ]
    plan = solve_mix(
        supplies,
        fraction,
        block_len,
        total_tokens=mcfg.total_tokens,
        domain_epochs=mcfg.domain_epochs,
        allow_shortfall=mcfg.allow_shortfall,
    )
    for note in plan.notes:
        ctx.log.warning("%s", note)

    job = StoreJob(
        prep=str(prep),
        out_dir=str(ctx.out_dir / "train"),
        sources=tuple((s.name, s.kind, int(plan.budgets.get(s.name, 0)), s.docs) for s in supplies),
        block_len=block_len,
        seq_len=mcfg.seq_len,
        seed=int(seed),
        eos_id=eos_id,
        dtype=info["store"]["dtype"],
        parts=int(info["store"]["parts"]),
    )
    store = call_in_task(build_store, job, name="dapt:mix-index")
    if store.n_blocks != plan.n_blocks:
        raise RuntimeError(f"mix: the index has {store.n_blocks} blocks, the plan {plan.n_blocks}")
    used = store.used
    t_pack = time.perf_counter() - t0
    achieved = store.domain_tokens / store.total_tokens

    per_source = {}
    for sup in supplies:
        st = stats.get(sup.name, {})
        u = used[sup.name]
        per_source[sup.name] = {
            "kind": sup.kind,
            "weight": sup.weight,
            "docs": sup.docs,
            "tokens_available": sup.tokens,
            "bytes_available": st.get("bytes", 0),
            "tokens_budget": plan.budgets.get(sup.name, 0),
            "tokens_used": u["tokens"],
            "docs_used": u["docs"],
            "epochs": round(u["tokens"] / sup.tokens, 6) if sup.tokens else 0.0,
            "max_epochs": sup.max_epochs,
            "share_of_total": round(u["tokens"] / store.total_tokens, 6),
        }
    dom_used = sum(u["tokens"] for n, u in used.items() if kinds[n] == "domain")
    table = [
        {"quantity": "domain fraction", "target": fraction, "achieved": round(achieved, 6)},
        {"quantity": "total tokens", "target": plan.requested_total_tokens, "achieved": store.total_tokens},
        {"quantity": "domain tokens", "target": round(fraction * store.total_tokens), "achieved": dom_used},
        {
            "quantity": "general tokens",
            "target": round((1 - fraction) * store.total_tokens),
            "achieved": store.total_tokens - dom_used,
        },
    ] + [
        {"quantity": f"{n} tokens", "target": round(plan.ideal.get(n, 0.0)), "achieved": used[n]["tokens"]}
        for n in used
    ]

    # Only tasks whose items were actually indexed count as checked (an unloadable task has no texts).
    used_texts = info["decontamination"]["texts_used"]
    decontam = {t: 0 for t in info["decontamination"]["tasks"] if used_texts.get(t, 0) > 0}
    unchecked = (
        sorted(set(mcfg.decontamination.tasks or []) - set(decontam)) if mcfg.decontamination.enabled else []
    )
    for st in stats.values():
        for t, c in st["contam_by_task"].items():
            decontam[t] = decontam.get(t, 0) + c
    near_dup = {n: stats[n]["near_dup"] if n in stats else 0 for n in kinds}
    contaminated = {n: stats[n]["contaminated"] if n in stats else 0 for n in kinds}

    return {
        # The split stage's held-out folder, relative to this one: train's forgetting monitor reads its
        # validation text through this manifest (train needs only tokenizer and mix).
        "outputs": {"train_tokens": "train/index.json", "heldout": os.path.relpath(split_dir, ctx.out_dir)},
        "seq_len": mcfg.seq_len,
        "block_len": block_len,
        "objective": objective,
        "packing": packing,
        "n_blocks": plan.n_blocks,
        "vocab_size": int(info["encoder"]["vocab_size"]),
        "eos_id": eos_id,
        "encoder_backend": info["encoder"]["backend"],
        "total_tokens": store.total_tokens,
        **fraction_from(cfg.from_sweep.get("mix.domain_fraction")),
        "mix": {
            "target_domain_fraction": fraction,
            "achieved_domain_fraction": achieved,
            "requested_total_tokens": plan.requested_total_tokens,
            "shortfall": plan.shortfall,
            "notes": plan.notes,
            "seed": seed,
            "per_source": per_source,
            "table": table,
        },
        "decontamination": decontam,
        "decontamination_info": {
            **info["decontamination"],
            "skipped": decontam_problem,
            "unchecked_tasks": unchecked,
            "dropped_by_source": contaminated,
        },
        "near_dedup": {
            "enabled": mcfg.near_dedup.enabled,
            "threshold": mcfg.near_dedup.threshold,
            "dropped_by_source": near_dup,
        },
        "timings": {**info["seconds"], "solve_and_pack": round(t_pack, 3), "prep_reused": prep_reused},
        "counts": {
            "near_dup_dropped": sum(near_dup.values()),
            "contaminated_dropped": sum(contaminated.values()),
            "train_docs_available": sum(s.docs for s in supplies),
            "doc_instances_packed": sum(u["docs"] for u in used.values()),
            "blocks": plan.n_blocks,
            "tokens": store.total_tokens,
            "domain_tokens": store.domain_tokens,
        },
    }


__all__ = ["run", "MixPlan"]
