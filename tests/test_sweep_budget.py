"""Choosing the token budget from a compute budget: the conversion (sweep/budget.py), the recommendation
over budgets up to the ceiling, and ``train.tokens: auto`` reading the sweep's overlay on load without
making the sweep stale. The sweep itself runs in tests/test_sweep.py (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError
from dapt.pipeline.stage_table import STAGES, pipeline_stages
from dapt.pipeline.stages import _config_view
from dapt.sweep.budget import candidate_budgets, token_ceiling
from dapt.sweep.fit import LawFit
from dapt.sweep.recommend import REPETITION, recommend

ROOT = Path(__file__).resolve().parent.parent
H100_BF16 = 989e12


def test_flops_budget_buys_flops_over_flops_per_token():
    c = token_ceiling({"flops": 1e21}, 1e9, peak_flops_per_gpu=H100_BF16, mfu=0.4)
    assert c.tokens == 10**12
    assert c.gpu_hours == pytest.approx(1e21 / (H100_BF16 * 0.4 * 3600))
    assert c.cost is None  # no price: no money figure


def test_gpu_hours_and_cost_convert_through_peak_mfu_and_price():
    hours = token_ceiling(
        {"gpu_hours": 1000}, 6e9, peak_flops_per_gpu=H100_BF16, mfu=0.4, price_per_gpu_hour=2
    )
    assert hours.flops == pytest.approx(1000 * 3600 * H100_BF16 * 0.4)
    assert hours.tokens == int(hours.flops // 6e9) and hours.cost == pytest.approx(2000)
    money = token_ceiling({"cost": 2000}, 6e9, peak_flops_per_gpu=H100_BF16, mfu=0.4, price_per_gpu_hour=2)
    assert money.tokens == hours.tokens and money.gpu_hours == pytest.approx(1000)


@pytest.mark.parametrize(
    "given, kwargs, message",
    [
        ({"flops": 1e20, "cost": 5}, {}, "exactly one"),
        ({"gpu_hours": 10}, {}, "peak FLOP/s and an MFU"),
        ({"cost": 10}, {"peak_flops_per_gpu": H100_BF16, "mfu": 0.4}, "price per GPU-hour"),
    ],
)
def test_conversion_without_its_numbers_says_which(given, kwargs, message):
    with pytest.raises(ValueError, match=message):
        token_ceiling(given, 1e9, **kwargs)


def test_candidate_budgets_are_log_spaced_and_end_at_the_ceiling():
    grid = candidate_budgets(1000, 10**6, points=4)
    assert grid == [1000, 10_000, 100_000, 1_000_000]
    assert candidate_budgets(5000, 4000) == [4000]  # cannot buy the smallest proxy budget: the ceiling


def test_repetition_cap_can_make_a_smaller_budget_with_more_domain_text_the_best_point():
    # Domain loss needs domain text (r) more than tokens: with 1e7 distinct domain tokens and one pass,
    # a 1e9 budget may hold r <= 0.01 only, so the best point spends less than the ceiling.
    domain = LawFit("domain", "mixing_exp", {"E": 0.5, "B": 0.5, "K": 0.8, "beta": 0.1, "t": 3.0})
    general = LawFit("general", "mixing_exp", {"E": 0.5, "B": 1.0, "K": 0.5, "beta": 0.1, "t": 3.0})
    budgets = candidate_budgets(10**6, 10**9)
    rec = recommend(domain, general, 1.6, 0.9, 1.0, 1e7, 1, budgets)
    assert rec.feasible and REPETITION in rec.binding
    assert rec.tokens < 10**9 and rec.domain_fraction * rec.tokens <= 1e7 * (1 + 1e-9)
    best = max(c["best_gain"] for c in rec.candidates if c["best_gain"] is not None)
    assert rec.predicted_domain_gain == pytest.approx(best)
    # with plenty of domain text the ceiling wins
    rich = recommend(domain, general, 1.6, 0.9, 1.0, 1e12, 4, budgets)
    assert rich.tokens == 10**9


def _tiny(tmp_path: Path, *overrides: str):
    return load_config(ROOT / "configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", *overrides])


def test_auto_tokens_need_a_compute_budget_and_a_cost_needs_a_price(tmp_path: Path):
    with pytest.raises(ConfigError, match="sweep.compute_budget"):
        _tiny(tmp_path, "train.tokens=auto")
    with pytest.raises(ConfigError, match="price per GPU-hour"):
        _tiny(tmp_path, "sweep.compute_budget.cost=100")
    with pytest.raises(ConfigError, match="not both"):
        _tiny(tmp_path, "sweep.compute_budget.flops=1e12", "sweep.target_tokens=1000")
    with pytest.raises(ConfigError, match="exactly one"):
        _tiny(tmp_path, "sweep.compute_budget.flops=1e12", "sweep.compute_budget.gpu_hours=3")


def test_the_budget_converts_at_the_plan_sections_numbers_unless_it_names_its_own(tmp_path: Path):
    cfg = _tiny(
        tmp_path, "sweep.compute_budget.cost=100", "plan.price_per_gpu_hour=2.5", "plan.gpu=A100-80GB"
    )
    b = cfg.sweep.compute_budget
    assert (b.gpu, b.price_per_gpu_hour, b.mfu) == ("A100-80GB", 2.5, None)
    own = _tiny(tmp_path, "sweep.compute_budget.gpu_hours=3", "sweep.compute_budget.gpu=L4", "plan.gpu=A100")
    assert own.sweep.compute_budget.gpu == "L4"


def _finished_sweep(run_dir: Path, overlay: str) -> None:
    (run_dir / "sweep").mkdir(parents=True)
    (run_dir / "sweep" / "recommendation.yaml").write_text(overlay)
    (run_dir / "sweep" / "_DONE").write_text("")


def test_auto_tokens_read_the_overlay_and_the_sweep_still_sees_auto(tmp_path: Path):
    budget = ("train.tokens=auto", "train.max_steps=null", "sweep.compute_budget.flops=2e11")
    before = _tiny(tmp_path, *budget)
    assert before.train.tokens == "auto" and pipeline_stages(before)[3] == "sweep"
    _finished_sweep(tmp_path / "run", "mix:\n  domain_fraction: 0.35\ntrain:\n  tokens: 15000\n")
    cfg = _tiny(tmp_path, *budget)
    assert cfg.train.tokens == 15000 and cfg.mix.domain_fraction != 0.35  # the fraction was not auto
    assert set(cfg.from_sweep) == {"train.tokens"} and pipeline_stages(cfg)[3] == "sweep"
    assert _config_view(cfg, STAGES["sweep"])["train"]["tokens"] == "auto"  # its answer is no input
    assert _config_view(before, STAGES["sweep"]) == _config_view(cfg, STAGES["sweep"])
    assert _config_view(cfg, STAGES["train"])["train"]["tokens"] == 15000  # the train stage's input
    # a number set by hand is an input of the sweep (its target) like any other
    fixed = _tiny(tmp_path, "train.tokens=9000")
    assert _config_view(fixed, STAGES["sweep"])["train"]["tokens"] == 9000


def test_a_sweep_without_a_budget_leaves_auto_tokens_for_the_rerun(tmp_path: Path):
    # its recommendation has no tokens; the config that now asks for them finds the sweep stale (the budget
    # is in its fingerprint), so `dapt run` reruns it first, and a train stage before that says why
    _finished_sweep(tmp_path / "run", "mix:\n  domain_fraction: 0.35\n")
    cfg = _tiny(tmp_path, "train.tokens=auto", "sweep.compute_budget.flops=2e11", "mix.domain_fraction=auto")
    assert cfg.train.tokens == "auto" and cfg.mix.domain_fraction == 0.35
    assert set(cfg.from_sweep) == {"mix.domain_fraction"} and "sweep" in pipeline_stages(cfg)
    with pytest.raises(ConfigError, match="train.tokens: auto reads the sweep's recommended tokens"):
        cfg.train.token_target(1000)


def test_a_broken_overlay_is_a_clear_error(tmp_path: Path):
    _finished_sweep(tmp_path / "run", "mix:\n  domain_fraction: 0.35\ntrain:\n  tokens: lots\n")
    with pytest.raises(ConfigError, match=r"recommendation.yaml: train.tokens: no usable value"):
        _tiny(tmp_path, "train.tokens=auto", "sweep.compute_budget.flops=2e11")
