"""The report's "Mix ratio" section from a sweep manifest (no runner): the recommendation against the run's
measured validation bits-per-byte, the fits' leave-one-out errors, the scaling fit next to the published."""

from __future__ import annotations

from dapt.eval.report.collect import RunData
from dapt.eval.report.doc import Figure, Table
from dapt.eval.report.sections import sweep as sweep_section
from dapt.eval.report.sections.base import Inputs
from dapt.sweep.scaling import PUBLISHED, compute_optimal


def _sweep_manifest() -> dict:
    trials = [
        {"trial_id": f"r{r}-d{d}", "fraction": r, "achieved_fraction": r, "budget": d, "tokens": d,
         "domain_bpb": 2.0 - r / 10 - d / 1e5, "general_bpb": 1.5 + r / 10 - d / 1e5}
        for r in (0.2, 0.5, 0.8) for d in (4096, 8192)
    ]  # fmt: skip
    curve = {str(d): [[r, 2.0 - r / 10] for r in (0.2, 0.5, 0.8)] for d in (4096, 8192, 16384)}
    flops = 1e15
    return {
        "trials": trials,
        "curves": {"domain": curve, "general": curve},
        "fit": {s: {"form": "dcpt", "rel_rmse": 0.001} for s in ("domain", "general")},
        "loo": {s: {"mean_abs_rel_error": 0.002, "max_abs_rel_error": 0.004} for s in ("domain", "general")},
        "recommendation": {
            "domain_fraction": 0.5,
            "tokens": 16384,
            "feasible": True,
            "binding": ["general_regression"],
            "reason": "on the general-regression boundary",
            "predicted_domain_bpb": 1.90,
            "predicted_general_bpb": 1.52,
            "predicted_domain_bpb_interval": [1.88, 1.92],
        },  # fmt: skip
        "cost": {"fraction_of_target_run": 3.0},
        "scaling": {
            "points": [{"params": n, "tokens": 1} for n in (1e5, 2e5, 4e5) for _ in range(2)],
            "flops": flops,
            "model_params": 2e5,
            "domain": {
                "fit": {"alpha": 0.3, "beta": 0.35},
                "compute_optimal": {"params": 1e6, "tokens": 2e7, "tokens_per_param": 20.0},
            },
            "published": {
                k: {"fit": f.to_dict(), "compute_optimal": compute_optimal(f, flops).to_dict()}
                for k, f in PUBLISHED.items()
            },
        },  # fmt: skip
    }


def test_section_shows_prediction_against_measurement_and_the_fits() -> None:
    data = RunData(run_name="r", cfg=None, manifests={"sweep": _sweep_manifest(), "train": {"tokens": 16384}})
    data.monitor = [
        {"step": 0, "domain_bpb": 2.1, "general_bpb": 1.5},
        {"step": 8, "domain_bpb": 1.938, "general_bpb": 1.52},
    ]
    section = sweep_section.build(Inputs(data=data, alpha=0.05))
    assert section is not None and section.id == "sweep"
    table = next(b for b in section.blocks if isinstance(b, Table))
    cells = dict((r[0], r[1]) for r in table.rows)
    assert cells["Recommended domain fraction"] == "50.0%"
    assert cells["Predicted domain bpb (interval)"] == "1.9000 [1.8800, 1.9200]"
    assert cells["Measured domain bpb, this run's last monitor row"] == "1.9380 (+2.00% vs predicted)"
    assert cells["Binding constraints"] == "general_regression"
    tables = [b for b in section.blocks if isinstance(b, Table)]
    assert [r[0] for r in tables[1].rows] == ["domain", "general"] and tables[1].rows[0][3] == "0.20%"
    scaling = tables[2]
    assert scaling.rows[0][:3] == ["this run, domain bpb", "0.300", "0.350"]
    assert any("Hoffmann" in r[0] for r in scaling.rows) and any("Besiroglu" in r[0] for r in scaling.rows)
    assert any(isinstance(b, Figure) and b.name == "sweep.png" for b in section.blocks)


def test_no_sweep_no_section() -> None:
    assert sweep_section.build(Inputs(data=RunData(run_name="r", cfg=None), alpha=0.05)) is None


def test_a_compute_budget_shows_what_it_buys_and_the_budgets_on_the_way() -> None:
    manifest = _sweep_manifest()
    budgets = [1000 * 2**i for i in range(12)]
    manifest["recommendation"]["tokens"] = budgets[7]
    manifest["recommendation"]["candidates"] = [
        {"tokens": d, "best_fraction": 0.5, "best_gain": 0.01 * i, "best_regression": 0.0,
         "max_fraction_by_repetition": 1.0}
        for i, d in enumerate(budgets)
    ]  # fmt: skip
    manifest["compute_budget"] = {
        "given": {"gpu_hours": 1000.0},
        "gpu_hours": 1000.0,
        "mfu": 0.4,
        "mfu_source": "assumed",
        "flops": 1.4e21,
        "flops_per_token": 1e9,
        "max_tokens": budgets[-1],
        "recommended_tokens": budgets[7],
        "fraction_spent": 0.0625,
    }
    data = RunData(run_name="r", cfg=None, manifests={"sweep": manifest, "train": {"tokens": budgets[7]}})
    section = sweep_section.build(Inputs(data=data, alpha=0.05))
    text = " ".join(b.text for b in section.blocks if hasattr(b, "text"))
    assert "gpu hours 1000 (1000 GPU-hours at 40% MFU, assumed)" in text
    assert "at most 2,048,000 tokens" in text and "(6.2% of the budget)" in text
    table = next(b for b in section.blocks if isinstance(b, Table) and "best fraction" in b.headers)
    firsts = [r[0] for r in table.rows]
    assert firsts[0] == "1,000" and firsts[-1] == "2,048,000" and "128,000 (chosen)" in firsts
    assert len(firsts) <= sweep_section.BUDGET_ROWS + 1
