"""``dapt sweep``: choose the domain fraction from proxy runs, a fitted mixture law and a constraint.

1. **Pool**: the mix stage, run on the run's own cleaned, split and tokenised data in the sweep's work
   folder (``.work/sweep/pool``) at 50/50 and the tokens the largest trial needs (sweep/pool.py).
2. **Trials**: every (fraction, budget) of ``sweep.fractions`` x ``sweep.budgets`` trains the real base
   model (the tokenizer stage's output) on its own index over the pool, on Ray Tune (sweep/trials.py);
   the forgetting monitor scores the *validation* split before and after (never the test split).
3. **Fit**: a law per side (D-CPT, or the simpler mixing law on a small grid), bootstrap intervals,
   leave-one-out errors (sweep/fit.py).
4. **Recommend**: the fraction and budget with the largest predicted domain gain whose predicted
   general regression stays under ``sweep.max_general_regression`` and whose domain tokens stay under
   ``mix.max_epochs`` repeats (sweep/recommend.py), written as ``recommendation.yaml``, the overlay that
   ``mix.domain_fraction: auto`` reads.

The sweep reads the ``mix`` section (the pool is a mix) minus ``domain_fraction`` / ``replay``, which it
chooses: so the recommendation it writes never makes the sweep itself stale.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from dapt.pipeline.errors import ConfigError
from dapt.pipeline.fsutil import atomic_write_text, stable_hash
from dapt.pipeline.stages import STAGES, StageConfig, StageContext, run_stage
from dapt.sweep.budget import TokenCeiling, candidate_budgets, token_ceiling
from dapt.sweep.fit import SweepPoint, bootstrap_ci, fit_law, leave_one_out
from dapt.sweep.pool import make_trial_data, pool_tokens
from dapt.sweep.recommend import recommend
from dapt.sweep.trials import Trial, run_trials, trial_name

OVERLAY = "recommendation.yaml"
POOL_FRACTION = 0.5


def _pool_config(ctx: StageContext, pool_dir: Path, tokens: int):
    """The run config with its run folder in the sweep's work folder, the mix at 50/50 and ``tokens``."""
    cfg = ctx.run_config.model_copy(deep=True)
    cfg.run_dir = str(pool_dir)
    cfg.mix.domain_fraction, cfg.mix.replay, cfg.mix.domain_epochs = POOL_FRACTION, None, None
    cfg.mix.total_tokens, cfg.mix.allow_shortfall = tokens, True
    cfg.train.tokens = None  # each trial sets its own steps; ``auto`` is what this sweep chooses
    cfg.tracking.backend = "none"
    return cfg


def _link_upstreams(ctx: StageContext, pool_dir: Path) -> None:
    pool_dir.mkdir(parents=True, exist_ok=True)
    for name in ("clean", "split", "tokenizer"):
        link, target = pool_dir / name, ctx.upstream_dir(name).resolve()
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.exists():
            os.symlink(target, link)


def build_pool(ctx: StageContext, tokens: int) -> tuple[Any, dict[str, Any]]:
    """The pool's run config and its mix manifest (the mix stage, resumed or up to date on a rerun)."""
    pool_dir = (ctx.work_dir / "pool").resolve()
    _link_upstreams(ctx, pool_dir)
    pool_cfg = _pool_config(ctx, pool_dir, tokens)
    manifest = run_stage(pool_cfg, "mix", echo=lambda m: ctx.log.info("pool %s", m))
    return pool_cfg, manifest


def base_spec(ctx: StageContext, pool_cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The train stage's worker spec over the pool (model, objective, optimiser settings, monitor)."""
    from dapt.train.prelaunch import monitor_windows
    from dapt.train.stage import build_spec

    spec_row = STAGES["train"]
    tctx = StageContext(
        cfg=StageConfig(pool_cfg, spec_row),
        spec=spec_row,
        out_dir=ctx.work_dir / "pool-train",
        work_dir=ctx.work_dir / "pool-train",
        log=ctx.log,
        fingerprint=ctx.fingerprint,
        state_key=ctx.state_key,
        run_config=pool_cfg,
    )
    tctx.work_dir.mkdir(parents=True, exist_ok=True)
    spec, facts = build_spec(tctx)
    mon = monitor_windows(tctx, spec, facts)
    if mon is None:
        raise ConfigError("sweep: the trials are scored on the validation split, and there is none (split)")
    return spec.replace(monitor_path=mon["path"]), facts


def _trial(
    ctx: StageContext,
    spec: Any,
    pool_store: Path,
    pool_fingerprint: str,
    name: str,
    r: float,
    budget: int,
    **model: Any,
):
    """One trial: its data over the pool and its worker spec (the run's optimiser, one process)."""
    sc, tc = ctx.cfg.sweep, ctx.cfg.train
    seed = ctx.cfg.seed if sc.seed is None else sc.seed
    accum = spec.grad_accum * tc.num_workers  # one process per trial, the run's global batch
    steps = max(2, -(-budget // (tc.micro_batch_size * accum * spec.seq_len)))
    folder = (ctx.work_dir / "trials" / name).resolve()
    data = make_trial_data(pool_store, folder / "data", r, steps * accum * tc.micro_batch_size, seed)
    kill = ctx.extra.get("kill_trial")  # tests: (trial name, marker path) kills that trial once, mid-run
    trial_spec = spec.replace(
        data_path=data.path,
        steps=steps,
        grad_accum=accum,
        warmup_steps=max(0, round(steps * tc.warmup_fraction)),
        checkpoint_dir=str(folder / "checkpoints"),
        log_dir=str(folder / "logs"),
        checkpoint_every=min(sc.checkpoint_every, max(1, steps // 4)),
        keep_checkpoints=1,
        final_checkpoint=False,
        monitor_every=steps,
        max_general_regression=None,
        log_every=1,
        progress=False,
        progress_run_dir=None,
        tracking=None,
        export_dir=None,
        checkpoint_meta=None,
        under_ray=False,
        use_gpu=sc.gpus_per_trial > 0,
        cpu_threads=max(1, int(sc.cpus_per_trial)),  # trials share the node: no oversubscription
        **model,
    )
    # The trial's own key: its spec (paths included: the data folder holds this trial's blocks) and the
    # pool it samples; checkpoints and the cached result carry it, so a changed trial starts afresh while
    # an unchanged one (e.g. when a budget is added to the grid) is not trained again.
    own = {k: v for k, v in trial_spec.to_dict().items() if k not in ("fingerprint", "state_key")}
    key = stable_hash({"spec": own, "pool": pool_fingerprint, "rows": data.rows_sha256})
    trial_spec = trial_spec.replace(fingerprint=key, state_key=key)
    trial = Trial(
        trial_id=name,
        fraction=r,
        budget=budget,
        folder=str(folder),
        spec=trial_spec.to_dict(),
        kill_marker=kill[1] if kill and kill[0] == name else None,
    )
    return trial, data


def plan_trials(
    ctx: StageContext, spec: Any, pool_store: Path, pool_fingerprint: str
) -> tuple[list[Trial], list[Trial], dict[str, Any]]:
    """The mixture grid (fractions x budgets) and the scaling grid (sizes x budgets, when asked for),
    and each trial's data by trial id."""
    sc = ctx.cfg.sweep
    mixture, scaling, data = [], [], {}
    for budget in sc.budgets:
        for r in sc.fractions:
            trial, data[trial.trial_id] = _trial(
                ctx, spec, pool_store, pool_fingerprint, trial_name(r, budget), r, budget
            )
            mixture.append(trial)
    if sc.scaling is not None:
        family = scaling_family(ctx, spec)
        for i, size in enumerate(sc.scaling.sizes):
            for budget in sc.scaling.budgets:
                name = f"n{i}-d{budget}"
                config = {**family, **size}
                trial, data[name] = _trial(
                    ctx,
                    spec,
                    pool_store,
                    pool_fingerprint,
                    name,
                    sc.scaling.fraction,
                    budget,
                    model_config=config,
                    model_path=None,
                )
                scaling.append(trial)
    return mixture, scaling, data


def scaling_family(ctx: StageContext, spec: Any) -> dict[str, Any]:
    """The model config the scaling grid varies: the run's ``model.from_config`` as the tokenizer stage
    recorded it (sizes are new random inits of that family); a hub or local checkpoint has no family."""
    from dapt.train.stage import config_model

    fc = (ctx.upstream_manifest("tokenizer").get("base_model") or {}).get("from_config")
    if not isinstance(fc, dict):
        raise ConfigError(
            "sweep.scaling: needs a model family built from a config (model.from_config); "
            f"this run adapts {spec.model_path}"
        )
    from dapt.train.setup import load_model_config

    # at the vocabulary of the model the run trains (the tokenizer stage's saved init, or its config)
    config, _seed = config_model(fc, int(load_model_config(spec).vocab_size))
    return config


def target_budget(ctx: StageContext) -> int:
    """The target run's tokens: ``sweep.target_tokens``, else ``train.tokens``, ``train.max_steps`` x
    ``train.global_batch_tokens``, ``mix.total_tokens``, the largest sweep budget."""
    sc, tc = ctx.cfg.sweep, ctx.cfg.train
    capped = tc.max_steps * tc.global_batch_tokens if tc.max_steps and tc.global_batch_tokens else None
    tokens = None if tc.tokens == "auto" else tc.tokens
    return int(sc.target_tokens or tokens or capped or ctx.cfg.mix.total_tokens or max(sc.budgets))


def token_ceiling_for(ctx: StageContext, spec: Any) -> TokenCeiling:
    """What ``sweep.compute_budget`` buys for the run's model at its sequence length: ``dapt plan``'s
    FLOPs per token (the same count, encoders and attention included), its GPU table and MFU default."""
    from dapt.train.plan import compute, gpus
    from dapt.train.plan.preflight import plan_for_run
    from dapt.train.setup import load_model_config

    budget = ctx.cfg.sweep.compute_budget
    plan = plan_for_run(
        ctx.run_config,
        load_model_config(spec),
        tokens=float(max(ctx.cfg.sweep.budgets)),
        seq_len=spec.seq_len,
        objective=spec.objective,
    )
    try:
        gpu = gpus.lookup(budget.gpu)
    except KeyError as e:
        raise ConfigError(f"sweep.compute_budget.gpu: {e.args[0]}") from None
    peak = budget.peak_tflops * 1e12 if budget.peak_tflops else gpu.peak_flops(ctx.cfg.train.precision)
    given = {k: getattr(budget, k) for k in ("flops", "gpu_hours", "cost") if getattr(budget, k) is not None}
    try:
        return token_ceiling(
            given,
            plan["compute"]["flops_per_token"],
            peak_flops_per_gpu=peak,
            mfu=budget.mfu or compute.DEFAULT_MFU,
            mfu_source="sweep.compute_budget.mfu / plan.mfu" if budget.mfu else "assumed",
            price_per_gpu_hour=budget.price_per_gpu_hour,
        )
    except ValueError as e:
        raise ConfigError(f"sweep.compute_budget: {e}") from None


def fraction_grid(fractions: list[float], step: float = 0.005) -> list[float]:
    """Candidate fractions within the swept range only: the law is fitted there, and a recommendation
    outside it would rest on extrapolation in r (the budget is extrapolated already)."""
    lo, hi = min(fractions), max(fractions)
    n = max(1, int(round((hi - lo) / step)))
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def run(ctx: StageContext) -> dict[str, Any]:
    from dapt.pipeline.ray_runtime import init_ray

    sc = ctx.cfg.sweep
    init_ray(ctx.cfg.ray)
    t0 = time.perf_counter()
    fractions, budgets = list(sc.fractions), list(sc.budgets)
    if sc.scaling is not None:
        fractions, budgets = [*fractions, sc.scaling.fraction], [*budgets, *sc.scaling.budgets]
    pool_cfg, pool = build_pool(ctx, pool_tokens(fractions, budgets))
    pool_store = Path(pool_cfg.run_path / "mix" / pool["outputs"]["train_tokens"]).parent
    spec, facts = base_spec(ctx, pool_cfg)
    mixture, scaling, data = plan_trials(ctx, spec, pool_store, pool["fingerprint"])
    ctx.log.info(
        "sweep: %d trials (%d fractions x %d budgets, %d scaling runs)",
        len(mixture) + len(scaling),
        len(sc.fractions),
        len(sc.budgets),
        len(scaling),
    )
    results = run_trials(
        mixture + scaling,
        ctx.work_dir / "tune",
        sc.concurrency,
        sc.cpus_per_trial,
        sc.gpus_per_trial,
        sc.max_failures,
        run_dir=ctx.run_dir,
    )
    for r in results:
        r["achieved_fraction"] = data[r["trial_id"]].domain_fraction
        r["repeats"] = data[r["trial_id"]].repeats
    seconds_trials = time.perf_counter() - t0
    results, scaling_rows = results[: len(mixture)], results[len(mixture) :]  # run_trials keeps order

    points = [
        SweepPoint(
            fraction=r["achieved_fraction"],
            tokens=r["tokens"],
            domain_bpb=r["domain_bpb"],
            general_bpb=r["general_bpb"],
        )
        for r in results
    ]
    seed = ctx.cfg.seed if sc.seed is None else sc.seed
    fits, cis, loo = {}, {}, {}
    for side in ("domain", "general"):
        fits[side] = fit_law(points, side)
        cis[side] = bootstrap_ci(
            points, side, n_boot=sc.bootstrap, seed=seed, level=sc.confidence, fit=fits[side]
        )
        loo[side] = leave_one_out(points, side, fit=fits[side])
    base_domain = sum(r["base_domain_bpb"] for r in results) / len(results)
    base_general = sum(r["base_general_bpb"] for r in results) / len(results)
    domain_supply = domain_tokens(pool)
    ceiling = None if sc.compute_budget is None else token_ceiling_for(ctx, spec)
    if ceiling is not None and ceiling.tokens < 1:
        raise ConfigError(f"sweep.compute_budget: {ceiling.given} buys no tokens of this model")
    budgets_considered = (
        [target_budget(ctx)] if ceiling is None else candidate_budgets(min(sc.budgets), ceiling.tokens)
    )
    rec = recommend(
        fits["domain"],
        fits["general"],
        base_domain,
        base_general,
        sc.max_general_regression,
        domain_supply,
        ctx.cfg.mix.max_epochs,
        budgets_considered,
        r_grid=fraction_grid(sc.fractions),
        domain_ci=cis["domain"],
        general_ci=cis["general"],
    )
    target = int(rec.tokens)
    grid = fraction_grid(sc.fractions, step=0.02)
    curves = {
        side: {
            str(d): [[round(r, 4), round(float(fits[side].predict(r, d)), 5)] for r in grid]
            for d in sorted({*sc.budgets, target})
        }
        for side in fits
    }
    sweep_tokens = sum(int(r["tokens"]) for r in results + scaling_rows)
    overlay: dict[str, Any] = {"mix": {"domain_fraction": round(float(rec.domain_fraction), 4)}}
    if ceiling is not None:  # the budget was chosen too: what ``train.tokens: auto`` reads
        overlay["train"] = {"tokens": target}
    atomic_write_text(
        ctx.out_dir / OVERLAY,
        "# Written by `dapt sweep`: what `mix.domain_fraction: auto` reads (see manifest.json for the fit).\n"
        + yaml.safe_dump(overlay, sort_keys=False),
    )
    ctx.log.info("sweep: recommend %s (%s)", overlay, rec.reason)
    return {
        "outputs": {"overlay": OVERLAY},
        "recommendation": rec.to_dict(),
        "overlay": overlay,
        "fit": {side: fits[side].to_dict() for side in fits},
        "intervals": {side: cis[side].to_dict() for side in cis},
        "loo": {side: loo[side].to_dict() for side in loo},
        "curves": curves,
        "trials": results,
        "base": {"domain_bpb": base_domain, "general_bpb": base_general, "scored_on": "validation"},
        "pool": {
            "tokens": pool["total_tokens"],
            "achieved_domain_fraction": pool["mix"]["achieved_domain_fraction"],
        },
        "domain_tokens_available": domain_supply,
        "cost": {
            "trial_tokens": sweep_tokens,
            "target_tokens": target,
            "fraction_of_target_run": round(sweep_tokens / target, 4),
            "seconds": round(seconds_trials, 1),
        },
        **({"compute_budget": compute_budget_summary(ceiling, rec)} if ceiling is not None else {}),
        "counts": {
            "trials": len(results) + len(scaling_rows),
            "fractions": len(sc.fractions),
            "budgets": len(sc.budgets),
        },
        **({"scaling": scaling_fit(ctx, spec, scaling_rows, target, seed, ceiling)} if scaling_rows else {}),
        "objective": spec.objective,
    }


def compute_budget_summary(ceiling: TokenCeiling, rec: Any) -> dict[str, Any]:
    """The budget, what it buys, and how much of it the recommendation spends: the ceiling is not
    always best (the repetition cap and the regression limit can favour fewer tokens)."""
    spent = rec.tokens * ceiling.flops_per_token
    return {
        **ceiling.to_dict(),
        "max_tokens": ceiling.tokens,
        "recommended_tokens": int(rec.tokens),
        "recommended_flops": spent,
        "fraction_spent": round(spent / ceiling.flops, 4),
    }


def model_params(spec: Any) -> int:
    """Parameters of the run's model, counted on the meta device (nothing allocated)."""
    import torch

    from dapt.train.objectives import auto_class
    from dapt.train.setup import load_model_config

    with torch.device("meta"):
        model = auto_class(spec.objective).from_config(load_model_config(spec))
    return int(sum(p.numel() for p in model.parameters()))


def scaling_fit(
    ctx: StageContext,
    spec: Any,
    rows: list[dict[str, Any]],
    target: int,
    seed: int,
    ceiling: TokenCeiling | None = None,
) -> dict[str, Any]:
    """Chinchilla approach 3 per side on the scaling grid, the compute-optimal split for the compute
    budget (``sweep.scaling.flops``, else ``sweep.compute_budget``'s, else 6 x the model's parameters x
    the target tokens), and the same for the published fits (whose constants are in nats per token of
    other data: compare their exponents and the split they imply, not E, A, B)."""
    from dapt.sweep.scaling import PUBLISHED, bootstrap_scaling, compute_optimal, fit_scaling

    sc = ctx.cfg.sweep.scaling
    n_model = model_params(spec)
    flops = float(sc.flops or (ceiling.flops if ceiling else 6.0 * n_model * target))
    params = [float(r["params"]) for r in rows]
    tokens = [float(r["tokens"]) for r in rows]
    out: dict[str, Any] = {
        "points": rows,
        "flops": flops,
        "model_params": n_model,
        "published": {
            k: {"fit": f.to_dict(), "compute_optimal": compute_optimal(f, flops).to_dict()}
            for k, f in PUBLISHED.items()
        },
    }
    for side in ("domain", "general"):
        loss = [float(r[f"{side}_bpb"]) for r in rows]
        fit = fit_scaling(params, tokens, loss)
        ci = bootstrap_scaling(params, tokens, loss, n_boot=ctx.cfg.sweep.bootstrap, seed=seed, fit=fit)
        out[side] = {
            "fit": fit.to_dict(),
            "intervals": ci.to_dict(),
            "compute_optimal": compute_optimal(fit, flops).to_dict(),
            "compute_optimal_interval": {k: list(v) for k, v in ci.compute_optimal_interval(flops).items()},
        }
    return out


def domain_tokens(pool: dict[str, Any]) -> int:
    """Distinct domain training tokens the run has (the pool mix's ``tokens_available``), for the
    repetition cap."""
    per = pool["mix"]["per_source"]
    return int(sum(v["tokens_available"] for v in per.values() if v["kind"] == "domain"))
