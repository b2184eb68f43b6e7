"""Memory and compute: the planner's prediction (the train manifest's ``plan``) next to what the run
measured, then the plan's own breakdowns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import (
    NR,
    Para,
    Pre,
    Section,
    Table,
    flatten,
    fmt_bytes,
    fmt_frac,
    fmt_int,
    fmt_seconds,
    fmt_sig,
    fmt_value,
    get,
    num,
)
from dapt.eval.report.sections.base import Inputs, missing

ID, TITLE = "plan", "Memory and compute: plan vs measured"


def _is_cpu(device: Any) -> bool:
    return isinstance(device, str) and device.strip().lower().startswith("cpu")


def plan_rows(data: RunData) -> list[dict[str, Any]]:
    """Planned vs measured, for the quantities both the planner and the trainer recorded.

    Each row: ``label``, ``planned``/``measured`` as (value, text), ``comparable`` and a ``note``. The
    planner's keys are looked up by their known names first (``memory.total`` is
    ``train.plan.memory.estimate``'s predicted peak per GPU; ``compute.*`` comes from
    ``compute_plan``), then by meaning, so the comparison survives renames. A ratio is only called
    comparable when both sides measure the same thing: on CPU the trainer's peak memory is the process's
    peak RSS (runtime included) and the plan's time assumes a GPU, so those rows are shown with a note
    and no ratio, and they never become a conclusion.
    """
    train = data.m("train")
    plan = train.get("plan")
    if not isinstance(plan, dict):
        return []
    flat = {k.lower(): num(v) for k, v in flatten(plan).items()}
    flat = {k: v for k, v in flat.items() if v is not None}

    def find(exact: tuple[str, ...], pred: Callable[[str], bool] = lambda k: False) -> float | None:
        for k in exact:
            if k in flat:
                return flat[k]
        return next((v for k, v in flat.items() if pred(k)), None)

    cpu = _is_cpu(train.get("device"))
    gpu = get(plan, "gpu", "name")
    assumed = f"the plan assumes {gpu}" if isinstance(gpu, str) else "the plan assumes a GPU"
    used = f"the run used {fmt_value(train.get('device'))}"
    out: list[dict[str, Any]] = []

    def add(
        label: str,
        planned: float | None,
        measured: float | None,
        fmt: Callable[[Any], str],
        note: str = "",
        comparable: bool = True,
    ) -> None:
        if planned is None or measured is None:
            return
        out.append(
            {
                "label": label,
                "planned": (planned, fmt(planned)),
                "measured": (measured, fmt(measured)),
                "comparable": comparable and planned != 0,
                "note": note,
            }
        )

    add(
        "Parameters",
        find(("memory.inputs.params", "params", "n_params", "compute.params")),
        num(data.n_params),
        fmt_int,
    )
    planned_tokens = find(("compute.tokens",))
    tokens = num(train.get("tokens"))
    same_tokens = planned_tokens == tokens
    add(
        "Training tokens",
        planned_tokens,
        tokens,
        fmt_int,
        ""
        if same_tokens
        else "the run trained a different number of tokens than planned (data size or early stop)",
    )
    peak = find(
        ("memory.total", "memory.peak_bytes", "peak_memory_bytes", "memory.peak", "peak_bytes"),
        lambda k: (
            "mem" in k
            and k.split(".")[-1] in ("total", "peak", "total_bytes", "peak_bytes", "peak_bytes_per_rank")
            and "model_states" not in k
            and "offload" not in k
        ),
    )
    add(
        "Peak memory per worker",
        peak,
        num(train.get("peak_memory_bytes")),
        fmt_bytes,
        "on CPU the measured value is the process's peak RSS, which includes the Python and PyTorch "
        "runtime; the plan predicts tensor memory"
        if cpu
        else "",
        comparable=not cpu,
    )
    hours = find(("compute.wall_clock_hours", "wall_clock_hours"), lambda k: k.endswith("wall_clock_hours"))
    tps = find(("compute.tokens_per_s", "tokens_per_s"), lambda k: k.endswith("tokens_per_s"))
    if tps is None and hours and planned_tokens:
        tps = planned_tokens / (hours * 3600)  # the plan's own throughput: its tokens over its time
    add(
        "Throughput (tokens/s)",
        tps,
        num(train.get("tokens_per_s")),
        fmt_sig,
        f"{assumed}; {used}" if cpu else "",
        comparable=not cpu,
    )
    secs = num(train.get("train_seconds")) or num(train.get("wall_seconds"))
    time_note = (
        f"{assumed}; {used}" if cpu else ("" if same_tokens else "different token counts: see throughput")
    )
    add(
        "Training time",
        hours * 3600 if hours is not None else None,
        secs,
        fmt_seconds,
        time_note,
        comparable=not cpu and same_tokens,
    )
    add(
        "MFU",
        find(("compute.mfu", "mfu"), lambda k: k.split(".")[-1] == "mfu"),
        num(train.get("mfu")),
        lambda v: f"{100 * v:.1f}%",
        "the planned MFU is an assumption" if get(plan, "compute", "mfu_source") == "assumed" else "",
    )
    return out


def _g3(v: Any) -> str:
    f = num(v)
    return NR if f is None else f"{f:.3g}"


_MEMORY_ROWS = [
    ("model_states.params", "parameters"),
    ("model_states.grads", "gradients"),
    ("model_states.optimizer", "optimizer state"),
    ("model_states.total", "model states total"),
    ("activations", "activations"),
    ("logits", "logits and loss"),
    ("buffers.unsharded_params", "unsharded parameters in flight"),
    ("buffers.unsharded_grads", "unsharded gradients in flight"),
    ("buffers.ddp_buckets", "DDP gradient buckets"),
    ("optimizer_step_temp", "optimizer step temporaries"),
    ("peak_forward_backward", "peak: forward/backward"),
    ("peak_optimizer_step", "peak: optimizer step"),
    ("total", "predicted peak per worker"),
    ("device_mem", "device memory"),
]
_COMPUTE_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("tokens", "tokens", fmt_int),
    ("flops.total", "training FLOPs", _g3),
    ("flops_per_token", "FLOPs per token", _g3),
    ("pflops_days", "petaFLOP/s-days", _g3),
    ("mfu", "MFU", fmt_frac),
    ("mfu_source", "MFU source", fmt_value),
    ("gpus", "GPUs", fmt_int),
    ("peak_flops_per_gpu", "peak FLOP/s per GPU", _g3),
    ("gpu_hours", "GPU-hours", _g3),
    ("wall_clock_hours", "wall-clock hours", _g3),
    ("cost", "cost", lambda v: f"{num(v):,.2f}" if num(v) is not None else NR),
    ("chinchilla.tokens_per_param", "tokens per parameter", _g3),
]


def _comparison(rows: list[dict[str, Any]]) -> Table:
    table = []
    for r in rows:
        (pv, pt), (mv, mt) = r["planned"], r["measured"]
        ratio = f"{mv / pv:.2f}" if r["comparable"] else "not comparable"
        table.append([r["label"], pt, mt, ratio, r["note"]])
    return Table(
        ["quantity", "planned", "measured", "measured / planned", "note"],
        table,
        caption="The planner's prediction next to what the run measured",
        numeric=[False, True, True, True, False],
    )


def _breakdowns(s: Section, plan: dict[str, Any]) -> set[str]:
    """The plan's memory, compute, strategies and text table; returns the plan keys shown."""
    shown: set[str] = set()
    mem = plan.get("memory")
    if isinstance(mem, dict):
        mflat = flatten(mem)
        mrows = [[label, fmt_bytes(mflat[k])] for k, label in _MEMORY_ROWS if num(mflat.get(k)) is not None]
        if "fits" in mem:
            mrows.append(["fits", fmt_value(mem.get("fits"))])
        if mrows:
            s.add(
                Table(["predicted memory (per worker)", "bytes"], mrows, caption="Predicted memory breakdown")
            )
            shown.add("memory")
    comp = plan.get("compute")
    if isinstance(comp, dict):
        cflat = flatten(comp)
        crows = [[label, f(cflat[k])] for k, label, f in _COMPUTE_ROWS if cflat.get(k) is not None]
        if crows:
            s.add(Table(["predicted compute", "value"], crows, caption="Predicted compute"))
            shown.add("compute")
    strategies = plan.get("strategies")
    if isinstance(strategies, list) and strategies and all(isinstance(x, dict) for x in strategies):
        keys = list(dict.fromkeys(k for x in strategies for k in x))
        s.add(
            Table(
                keys,
                [
                    [fmt_bytes(x.get(k)) if k == "total" else fmt_value(x.get(k)) for k in keys]
                    for x in strategies
                ],
                caption="Alternatives the planner evaluated",
                numeric=[k == "total" for k in keys],
            )
        )
        shown.add("strategies")
    if isinstance(plan.get("table"), str) and plan["table"].strip():
        s.add(Pre(plan["table"], caption="The planner's own summary (as `dapt plan` prints it)"))
        shown.add("table")
    return shown


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    plan = data.m("train").get("plan")
    rows = plan_rows(data)
    if rows:
        s.add(_comparison(rows))
    else:
        s.add(Para("No quantity was recorded by both the planner and the trainer.", kind="note"))
    if not isinstance(plan, dict) or not plan:
        return s.add(missing("Plan (train manifest `plan`)"))
    shown = _breakdowns(s, plan)
    rest = flatten({k: v for k, v in plan.items() if k not in shown})
    rest_rows = [[k, fmt_value(v)] for k, v in rest.items() if not isinstance(v, list) or len(v) <= 8]
    if rest_rows:
        s.add(
            Table(
                ["other plan entries", "value"],
                rest_rows[:60],
                caption="The rest of the plan recorded by the train stage",
                numeric=[False, True],
            )
        )
        if len(rest_rows) > 60:
            s.add(Para(f"({len(rest_rows) - 60} more plan entries in the train manifest.)", kind="note"))
    return s
