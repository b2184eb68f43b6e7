"""Training: what the train stage recorded (steps, tokens, throughput, hardware, hyperparameters), the
loss curve and the forgetting monitor's validation bits-per-byte."""

from __future__ import annotations

from dapt.eval.report import plots
from dapt.eval.report.doc import (
    NR,
    Figure,
    Para,
    Section,
    Table,
    flatten,
    fmt_bytes,
    fmt_float,
    fmt_int,
    fmt_pct,
    fmt_seconds,
    fmt_sig,
    fmt_value,
    kv_table,
    num,
)
from dapt.eval.report.sections.base import Inputs, missing

ID, TITLE = "training", "Training"


def hyperparameter_table(train: dict) -> Table | None:
    """The train manifest's ``hyperparameters`` (the stage's own record of what it trained with)."""
    hp = train.get("hyperparameters")
    if not isinstance(hp, dict) or not hp:
        return None
    return Table(
        ["hyperparameter", "value"],
        [[k, fmt_value(v)] for k, v in flatten(hp).items()],
        numeric=[False, True],
    )


def build(inp: Inputs) -> Section:
    data = inp.data
    s = Section(ID, TITLE)
    t = data.m("train")
    if not t:
        return s.add(missing("Train manifest"))
    mfu = num(t.get("mfu"))
    s.add(
        kv_table(
            [
                ("Steps", fmt_int(t.get("steps"))),
                ("Tokens", fmt_int(t.get("tokens"))),
                ("Throughput", f"{fmt_sig(t.get('tokens_per_s'))} tokens/s"),
                (
                    "MFU",
                    f"{100 * mfu:.1f}%"
                    if mfu is not None
                    else "not recorded (no peak FLOP/s known for the device)",
                ),
                ("Peak memory per worker", fmt_bytes(t.get("peak_memory_bytes"))),
                ("Wall time", fmt_seconds(t.get("wall_seconds"))),
                ("Device", fmt_value(t.get("device"))),
                ("Workers", fmt_int(t.get("num_workers"))),
                ("Sharding", fmt_value(t.get("sharding"))),
                ("Precision", fmt_value(t.get("precision"))),
                ("Early stopped", fmt_value(t.get("early_stopped"))),
            ]
        )
    )
    s.add(hyperparameter_table(t) or missing("Hyperparameters"))
    png = plots.loss_plot(data.metrics, inp.max_points, inp.dpi)
    if png:
        xs, ys = plots.series(data.metrics, "step", "loss")
        s.add(Figure("loss.png", png, f"Training loss over {len(xs)} logged steps (learning rate dashed)."))
        s.add(
            Para(
                f"Loss: first {ys[0]:.4f} (step {fmt_int(xs[0])}), last {ys[-1]:.4f} (step {fmt_int(xs[-1])}), "
                f"minimum {min(ys):.4f}."
            )
        )
    else:
        s.add(missing("Training loss curve (metrics.jsonl)"))
    png = plots.monitor_plot(data.monitor, inp.max_points, inp.dpi)
    if png:
        s.add(
            Figure("monitor_bpb.png", png, "Domain and general validation bits-per-byte over training steps.")
        )
        rows = []
        for k in plots.monitor_keys(data.monitor):
            xs, ys = plots.series(data.monitor, "step", k)
            change = fmt_pct(100 * (ys[-1] - ys[0]) / abs(ys[0]), 2, signed=True) if ys[0] else NR
            rows.append([k, fmt_float(ys[0]), fmt_float(ys[-1]), fmt_float(min(ys)), change])
        s.add(
            Table(
                ["series", "first", "last", "min", "change"],
                rows,
                caption="Validation bits-per-byte (monitor)",
            )
        )
    else:
        s.add(missing("Domain/general validation bits-per-byte over steps (monitor.jsonl)"))
    return s
