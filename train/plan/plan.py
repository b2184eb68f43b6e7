"""A whole run plan: memory per GPU, what fits, compute, cost, Chinchilla; and its text table.

Standard library only (it assembles ``memory``, ``compute`` and ``gpus``); the config-facing parts
(reading a RunConfig or a model folder) live in ``preflight.py`` and ``cli.py``.
"""

from __future__ import annotations

from typing import Any

from dapt.train.plan import compute, encoders, memory
from dapt.train.plan.families import chunked_loss_applies
from dapt.train.plan.gpus import GPU

# Strategies the train stage implements, cheapest (least communication, least recomputation) first.
TRAIN_SHARDINGS = ("ddp", "zero2", "zero3", "hybrid")

ARCH_KEYS = ("params", "layers", "hidden", "heads", "kv_heads", "intermediate", "vocab", "tied")


def _mem_kwargs(arch: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any]:
    kw = {k: arch.get(k) for k in ARCH_KEYS if arch.get(k) is not None}
    if arch.get("objective", "clm") != "clm":
        kw.update(objective=arch["objective"], model=arch.get("model"))
    if arch.get("param_shapes") is not None:
        kw["param_shapes"] = arch["param_shapes"]
        kw.pop("params", None)
    kw.update(knobs)
    return kw


def make_plan(
    arch: dict[str, Any],
    *,
    seq_len: int = 2048,
    micro_batch: int = 1,
    precision: str = "bf16",
    sharding: str = "zero3",
    world_size: int = 1,
    optimizer: str = "adamw",
    activation_checkpointing: bool = False,
    checkpoint_every: int = 1,
    loss_chunk_tokens: int = 0,
    cpu_offload: bool = False,
    flash_attention: bool = True,
    layout: str = "torch",
    gpus_per_node: int = 8,
    gpu: GPU | None = None,
    device_mem_bytes: int | None = None,
    headroom_fraction: float = 0.08,
    grad_accumulation: bool = True,
    tokens: float | None = None,
    mfu: float = compute.DEFAULT_MFU,
    mfu_source: str = "assumed",
    price_per_gpu_hour: float | None = None,
    pretraining_tokens: float | None = None,
    span_lengths: tuple[int, int] | None = None,
    block_tokens: int | None = None,
) -> dict[str, Any]:
    """The plan as a JSON-able dict.

    ``arch`` holds the model's size: ``params`` and/or ``layers``, ``hidden``, ``heads``,
    ``kv_heads``, ``intermediate``, ``vocab``, ``tied`` (and optionally exact ``param_shapes``); for a
    masked LM or an encoder-decoder also ``objective`` (``mlm`` / ``span``) and ``model``
    (``encoders.describe``), and then ``span_lengths`` is the corrupted block's (input, target) lengths
    and ``block_tokens`` the data tokens it was made of (the unit of ``tokens``; default ``seq_len``).
    ``device_mem_bytes`` (or ``gpu``'s memory) decides ``fits``; without either, nothing is judged.
    Keys: ``memory`` (``memory.estimate``), ``max_micro_batch``, ``strategies`` (every train strategy
    with and without checkpointing), ``cheapest_fit``, ``alternatives`` (when it does not fit),
    ``compute`` (``compute.compute_plan``), ``gpu``.
    """
    if device_mem_bytes is None and gpu is not None:
        device_mem_bytes = gpu.memory_bytes
    knobs = dict(
        seq_len=seq_len,
        micro_batch=micro_batch,
        precision=precision,
        sharding=sharding,
        world_size=world_size,
        optimizer=optimizer,
        activation_checkpointing=activation_checkpointing,
        checkpoint_every=checkpoint_every,
        # the train loop's chunked loss covers these families only; others get the full logits
        loss_chunk_tokens=loss_chunk_tokens if chunked_loss_applies(arch.get("model_type")) else 0,
        cpu_offload=cpu_offload,
        flash_attention=flash_attention,
        layout=layout,
        shard_group=gpus_per_node if sharding == "hybrid" else None,
        grad_accumulation=grad_accumulation,
        device_mem_bytes=device_mem_bytes,
        headroom_fraction=headroom_fraction,
    )
    if arch.get("objective", "clm") == "span":
        knobs["span_lengths"] = span_lengths
    est = memory.estimate(**_mem_kwargs(arch, knobs))
    plan: dict[str, Any] = {"memory": est}
    if gpu is not None:
        plan["gpu"] = {
            "name": gpu.name,
            "memory_bytes": gpu.memory_bytes,
            "peak_flops": gpu.peak_flops(precision),
        }
    if device_mem_bytes is not None:
        plan["max_micro_batch"] = memory.max_micro_batch(**_mem_kwargs(arch, knobs))
        plan["strategies"] = _strategies(arch, knobs)
        fitting = [s for s in plan["strategies"] if s["fits"]]
        plan["cheapest_fit"] = fitting[0] if fitting else None
        if not est["fits"]:
            plan["alternatives"] = alternatives(arch, knobs, gpus_per_node)

    inputs = est["inputs"]
    n = inputs["params"]
    embedding = (
        inputs["vocab"] * inputs["hidden"] if not inputs["tied"] and not inputs["shape_assumed"] else 0
    )
    if tokens:
        per_token = None
        if inputs["objective"] != "clm":
            per_token = encoders.flops_per_token(arch["model"], seq_len, span_lengths, block_tokens)
        peak = gpu.peak_flops(precision) if gpu is not None else None
        plan["compute"] = compute.compute_plan(
            n,
            tokens,
            layers=inputs["layers"],
            hidden=inputs["hidden"],
            seq_len=seq_len,
            embedding_params=embedding,
            gpus=world_size,
            peak_flops_per_gpu=peak,
            mfu=mfu,
            mfu_source=mfu_source,
            price_per_gpu_hour=price_per_gpu_hour,
            pretraining_tokens=pretraining_tokens,
            per_token=per_token,
        )
    return plan


def _strategies(arch: dict[str, Any], knobs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each train strategy at the requested micro-batch, without then with checkpointing, cheapest first."""
    rows = []
    for ckpt in (False, True):
        for s in TRAIN_SHARDINGS:
            if s == "hybrid" and knobs["world_size"] <= 1:
                continue
            kw = dict(knobs, sharding=s, activation_checkpointing=ckpt, cpu_offload=False)
            kw["shard_group"] = knobs.get("shard_group") or (8 if s == "hybrid" else None)
            e = memory.estimate(**_mem_kwargs(arch, kw))
            rows.append(
                {
                    "sharding": s,
                    "activation_checkpointing": ckpt,
                    "cpu_offload": False,
                    "total": e["total"],
                    "fits": e["fits"],
                }
            )
    return rows


def alternatives(arch: dict[str, Any], knobs: dict[str, Any], gpus_per_node: int = 8) -> list[dict[str, Any]]:
    """Changes that would make the run fit, each a dict with ``change`` (what to set), ``total`` and a
    one-line ``why``; cheapest kind of change first (strategy, micro-batch, checkpointing, offload,
    more GPUs)."""
    out: list[dict[str, Any]] = []

    def try_(change: dict[str, Any], why: str) -> None:
        kw = dict(knobs, **change)
        if kw["sharding"] == "hybrid":
            kw["shard_group"] = gpus_per_node
        try:
            e = memory.estimate(**_mem_kwargs(arch, kw))
        except ValueError:
            return
        if e["fits"]:
            out.append({"change": change, "total": e["total"], "why": why})

    cur = knobs["sharding"]
    order = list(TRAIN_SHARDINGS)
    for s in order[order.index(cur) + 1 if cur in order else 0 :]:
        if s == "hybrid" and knobs["world_size"] <= gpus_per_node:
            continue
        try_({"sharding": s}, f"shard more model state over the {knobs['world_size']} GPU(s)")
    mb = memory.max_micro_batch(**_mem_kwargs(arch, knobs))
    if 0 < mb < knobs["micro_batch"]:
        try_(
            {"micro_batch": mb},
            "fewer tokens per micro-batch (raise gradient accumulation to keep the batch)",
        )
    if not knobs["activation_checkpointing"]:
        for s in [cur] + [x for x in ("zero2", "zero3") if x != cur]:
            try_(
                {"sharding": s, "activation_checkpointing": True}, "recompute activations (~1/3 more compute)"
            )
        if not out or all("micro_batch" not in a["change"] for a in out):
            kw = dict(knobs, activation_checkpointing=True)
            mb2 = memory.max_micro_batch(**_mem_kwargs(arch, kw))
            if 0 < mb2 < knobs["micro_batch"]:
                try_(
                    {"activation_checkpointing": True, "micro_batch": mb2},
                    "checkpointing and a smaller micro-batch",
                )
    # The cheapest strategy that fits at a smaller micro-batch (with its largest micro-batch).
    if not any("micro_batch" in a["change"] for a in out):
        done = False
        for ckpt in dict.fromkeys((knobs["activation_checkpointing"], True)):
            for s in TRAIN_SHARDINGS:
                if done or (s == "hybrid" and knobs["world_size"] <= gpus_per_node):
                    continue
                kw = dict(knobs, sharding=s, activation_checkpointing=ckpt)
                kw["shard_group"] = gpus_per_node if s == "hybrid" else None
                mb = memory.max_micro_batch(**_mem_kwargs(arch, kw))
                if 0 < mb < knobs["micro_batch"]:
                    change: dict[str, Any] = {"sharding": s, "micro_batch": mb}
                    if ckpt != knobs["activation_checkpointing"]:
                        change["activation_checkpointing"] = ckpt
                    try_(change, "cheapest strategy that fits, at its largest micro-batch")
                    done = True
    # Offload needs FSDP, which one worker does not use (train.cpu_offload refuses num_workers 1).
    if not knobs["cpu_offload"] and knobs["world_size"] > 1:
        try_(
            {"sharding": "zero3", "activation_checkpointing": True, "cpu_offload": True},
            "keep sharded states in host RAM (needs the host memory; slower steps)",
        )
    # More GPUs, when no cheaper change fits on these: the smallest world size (doubling, up to 16384)
    # at which ZeRO-3 fits at this micro-batch; activations do not shrink with more GPUs, so with
    # checkpointing if needed.
    same_gpus = [a for a in out if set(a["change"]) <= {"sharding", "activation_checkpointing"}]
    for ckpt in dict.fromkeys((knobs["activation_checkpointing"], True)) if not same_gpus else ():
        ws, found = knobs["world_size"], False
        for _ in range(14):
            ws *= 2
            kw = dict(knobs, world_size=ws, sharding="zero3", shard_group=None, activation_checkpointing=ckpt)
            e = memory.estimate(**_mem_kwargs(arch, kw))
            if e["fits"]:
                change: dict[str, Any] = {"world_size": ws, "sharding": "zero3"}
                if ckpt and not knobs["activation_checkpointing"]:
                    change["activation_checkpointing"] = True
                out.append({"change": change, "total": e["total"], "why": "shard over more GPUs"})
                found = True
                break
        if found:
            break
    # Drop duplicates (same change), keep order.
    seen: set[str] = set()
    uniq = []
    for a in out:
        key = repr(sorted(a["change"].items()))
        if key not in seen:
            seen.add(key)
            uniq.append(a)
    return uniq


# --------------------------------------------------------------------------------------------------
# Text


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    return f"{b / memory.GIB:,.2f} GiB"


def fmt_num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:,.2f}{suf}{unit}"
    return f"{x:,.0f}{unit}"


def _change_text(change: dict[str, Any]) -> str:
    names = {
        "sharding": "train.sharding",
        "micro_batch": "train.micro_batch_size",
        "activation_checkpointing": "train.activation_checkpointing",
        "cpu_offload": "train.cpu_offload",
        "world_size": "train.num_workers",
    }
    return " ".join(
        f"{names.get(k, k)}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items()
    )


def _objective_shape(i: dict[str, Any]) -> str:
    """The model line of a masked-LM or span-corruption plan."""
    layers = (
        f"{i['layers']}+{i['decoder_layers']} layers" if i["objective"] == "span" else f"{i['layers']} layers"
    )
    out = (
        f"{fmt_num(i['params'])} params, {i['model_type'] or i['family']} ({i['objective']}), {layers}, "
        f"hidden {i['hidden']}, {i['heads']} heads, ffn {i['intermediate']}, vocab {i['vocab']}"
        f"{', tied' if i['tied'] else ''}"
    )
    if i["span_lengths"]:
        se, sd = i["span_lengths"]
        out += f"; corrupted input {se} + target {sd} tokens"
    if i["approximate"]:
        out += "  [family not modelled exactly: BERT/T5-shaped estimate]"
    return out


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a readable plain-text table (also the body of a PreflightError)."""
    m = plan["memory"]
    i = m["inputs"]
    lines: list[str] = []
    shape = (
        f"{fmt_num(i['params'])} params, {i['layers']} layers, hidden {i['hidden']}, {i['heads']} heads"
        f" ({i['kv_heads']} kv), ffn {i['intermediate']}, vocab {i['vocab']}{', tied' if i['tied'] else ''}"
    )
    if i["shape_assumed"]:
        shape += "  [shape ASSUMED from the parameter count, for activations only]"
    if i.get("objective", "clm") != "clm":
        shape = _objective_shape(i)
    lines.append(f"model        {shape}")
    lines.append(
        f"run          {i['precision']} {i['sharding']}"
        f"{' (shard group ' + str(i['shard_group']) + ')' if i['sharding'] == 'hybrid' else ''}"
        f" on {i['world_size']} GPU(s), seq {i['seq_len']} x micro-batch {i['micro_batch']},"
        f" {i['optimizer']}, checkpointing {'on' if i['activation_checkpointing'] else 'off'},"
        f" cpu offload {'on' if i['cpu_offload'] else 'off'}, {'flash' if i['flash_attention'] else 'eager'} attention,"
        f" {i['layout']} layout"
    )
    lines.append("")
    lines.append("memory per GPU (rank 0)")
    ms = m["model_states"]
    rows = [
        ("parameters", m["model_states_padded"] - ms["grads"] - ms["optimizer"]),
        ("gradients", ms["grads"]),
        ("optimizer states", ms["optimizer"]),
        ("activations", m["activations"]),
        ("logits + loss", m["logits"]),
        ("unsharded 16-bit weights", m["buffers"]["unsharded_params"]),
        ("unsharded gradients", m["buffers"]["unsharded_grads"]),
        ("DDP gradient buckets", m["buffers"]["ddp_buckets"]),
        ("optimizer-step temporaries", m["optimizer_step_temp"]),
    ]
    for name, b in rows:
        if b:
            lines.append(f"  {name:<28}{fmt_bytes(b):>14}")
    off = sum(v for k, v in m["offloaded"].items() if k != "params_padded")
    if off:
        lines.append(f"  {'(offloaded to host RAM)':<28}{fmt_bytes(off):>14}")
    lines.append(f"  {'peak forward/backward':<28}{fmt_bytes(m['peak_forward_backward']):>14}")
    lines.append(f"  {'peak optimizer step':<28}{fmt_bytes(m['peak_optimizer_step']):>14}")
    lines.append(f"  {'PREDICTED PEAK':<28}{fmt_bytes(m['total']):>14}")
    if "device_mem" in m:
        gpu = plan.get("device_label") or plan.get("gpu", {}).get("name", "device")
        verdict = "fits" if m["fits"] else "DOES NOT FIT"
        lines.append(
            f"  {'usable':<28}{fmt_bytes(m['usable']):>14}  -> {verdict}"
            f"  ({gpu}: {fmt_bytes(m['device_mem'])} less {1 - m['usable'] / m['device_mem']:.0%} headroom)"
        )
        lines.append(f"  largest micro-batch that fits: {plan.get('max_micro_batch', '-')}")
        if plan.get("strategies"):
            lines.append("")
            lines.append("strategies at this micro-batch (cheapest first)")
            for s in plan["strategies"]:
                tag = "fits" if s["fits"] else "no"
                ck = "+ checkpointing" if s["activation_checkpointing"] else ""
                lines.append(f"  {s['sharding']:<7}{ck:<16}{fmt_bytes(s['total']):>14}  {tag}")
            cf = plan.get("cheapest_fit")
            lines.append(
                "  cheapest that fits: "
                + (
                    f"{cf['sharding']}{' + activation checkpointing' if cf['activation_checkpointing'] else ''}"
                    if cf
                    else "none at this micro-batch and GPU count"
                )
            )
        if plan.get("alternatives"):
            lines.append("")
            lines.append("would fit with")
            for a in plan["alternatives"]:
                lines.append(f"  {_change_text(a['change']):<62} {fmt_bytes(a['total']):>12}  {a['why']}")
    c = plan.get("compute")
    if c:
        lines.append("")
        lines.append("compute")
        fl = c["flops"]
        lines.append(
            f"  tokens {fmt_num(c['tokens'])}; FLOPs {fl['total']:.3e} (6ND {fl['dense']:.3e} + attention {fl['attention']:.3e})"
        )
        lines.append(f"  {c['pflops_days']:,.3f} petaflop/s-days")
        if "gpu_hours" in c:
            lines.append(
                f"  {c['gpu_hours']:,.1f} GPU-hours at {c['mfu']:.0%} MFU ({c['mfu_source']}) of"
                f" {c['peak_flops_per_gpu'] / 1e12:,.0f} TFLOP/s; wall-clock {c['wall_clock_hours']:,.1f} h"
                f" on {c['gpus']} GPU(s)"
            )
            if "cost" in c:
                lines.append(f"  cost ${c['cost']:,.0f} at ${c['price_per_gpu_hour']:.2f}/GPU-hour")
            else:
                lines.append("  cost: give a price per GPU-hour (--price or plan.price_per_gpu_hour)")
        ch = c.get("chinchilla")
        if ch:
            lines.append("")
            lines.append(
                f"Chinchilla ({ch['tokens_per_param']:.1f} tokens per parameter; C = 6ND = {ch['compute_6nd']:.3e})"
            )
            for meth in ch["methods"]:
                if "optimal_params" in meth:
                    lines.append(
                        f"  {meth['verdict']:<14} optimal {fmt_num(meth['optimal_params'])} params on"
                        f" {fmt_num(meth['optimal_tokens'])} tokens ({meth['optimal_tokens_per_param']:.1f}/param)"
                        f"  - {meth['label']}"
                    )
            cp = ch.get("continued_pretraining")
            if cp:
                lines.append(
                    f"  continued pretraining: {cp['fraction_of_pretraining']:.2%} of the base model's"
                    f" {fmt_num(cp['base_pretraining_tokens'])} pretraining tokens"
                    f" (base saw {cp['base_tokens_per_param']:.0f} tokens/param; the verdicts above count only this run)"
                )
    return "\n".join(lines)
