"""What invalidates what: per stage, a non-trajectory knob keeps it done and a real one makes it and
everything downstream stale.

The statuses come from the runner's own fingerprints (``stage_status``), with every stage marked done
at the configuration's current fingerprint, so the test checks exactly the declarations next to the
config fields (``NOT_FINGERPRINTED``) and the stage table's config keys, not a re-implementation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dapt.pipeline.config import load_config
from dapt.pipeline.fsutil import atomic_write_json
from dapt.pipeline.stages import (
    DONE_MARKER,
    MANIFEST,
    STAGE_ORDER,
    STAGES,
    compute_fingerprint,
    stage_dir,
    stage_status,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"

# stage: (a knob that must leave it done, a knob that must make it and its downstream stale)
CASES = {
    "clean": ("sources.0.license=CC0-1.0", "clean.near_dedup.threshold=0.9"),
    "split": ("sources.0.weight=3.0", "split.validation_fraction=0.1"),
    "tokenizer": ("sources.0.provenance=elsewhere", "tokenizer.min_frequency=5"),
    "mix": ("sources.1.license=MIT", "mix.domain_fraction=0.6"),
    "train": ("train.log_every=3", "train.lr=0.002"),
    "eval": ("train.checkpoint_every=7", "eval.bootstrap_iters=500"),
    "report": ("train.keep_checkpoints=5", "report.title=Another title"),
    "publish": ("train.max_failures=4", "report.model_name=renamed"),
}


def downstream(name: str) -> set[str]:
    out = {name}
    changed = True
    while changed:
        changed = False
        for s in STAGE_ORDER:
            if s not in out and out & set(STAGES[s].needs):
                out.add(s)
                changed = True
    return out


def upstream(name: str) -> set[str]:
    out: set[str] = set()
    todo = list(STAGES[name].needs)
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(STAGES[s].needs)
    return out


@pytest.fixture()
def done_run(tmp_path: Path) -> list[str]:
    """Every stage of the tiny config marked done at its current fingerprint (in order, as the runner
    would leave them); returns the overrides that point the config at this run folder."""
    base = [f"run_dir={tmp_path / 'run'}"]
    cfg = load_config(CONFIG, base)
    for name in STAGE_ORDER:
        fp, _ = compute_fingerprint(cfg, STAGES[name])
        d = stage_dir(cfg, name)
        d.mkdir(parents=True)
        atomic_write_json(d / MANIFEST, {"stage": name, "fingerprint": fp})
        (d / DONE_MARKER).write_text(fp + "\n")
    assert all(stage_status(cfg, s) == "done" for s in STAGE_ORDER)
    return base


def test_every_stage_has_a_case() -> None:
    assert set(CASES) == set(STAGE_ORDER)


@pytest.mark.parametrize("stage", list(CASES))
def test_non_trajectory_knob_keeps_the_stage_done(stage: str, done_run: list[str]) -> None:
    cosmetic, _ = CASES[stage]
    cfg = load_config(CONFIG, [*done_run, cosmetic])
    for s in {stage} | upstream(stage):
        assert stage_status(cfg, s) == "done", (cosmetic, s)


@pytest.mark.parametrize("stage", list(CASES))
def test_real_knob_makes_the_stage_and_its_downstream_stale(stage: str, done_run: list[str]) -> None:
    _, real = CASES[stage]
    cfg = load_config(CONFIG, [*done_run, real])
    stale = {s for s in STAGE_ORDER if stage_status(cfg, s) == "stale"}
    assert downstream(stage) <= stale, (real, stale)
    assert not (upstream(stage) & stale) or stage in ("publish",), (real, stale)


def test_a_licence_change_rewrites_the_report_only() -> None:
    """Licence text is reported, never computed with: every computing stage stays done, the report
    (which prints it in the model card) and what publishes it do not."""
    assert STAGES["report"].describes_config
    assert not any(STAGES[s].describes_config for s in STAGE_ORDER if s != "report")


def test_licence_change_statuses(done_run: list[str]) -> None:
    cfg = load_config(CONFIG, [*done_run, "sources.0.license=CC0-1.0"])
    status = {s: stage_status(cfg, s) for s in STAGE_ORDER}
    assert status == {**{s: "done" for s in STAGE_ORDER}, "report": "stale", "publish": "stale"}


def test_continues_run_fields_change_the_fingerprint_but_not_the_state_key():
    """A CONTINUES_RUN knob (a training budget) reruns the stage yet keeps its resumable state's key; a
    NOT_FINGERPRINTED knob changes neither; a real knob changes both."""
    from pydantic import BaseModel, Field

    from dapt.pipeline.knobs import (
        CONTINUES_RUN,
        NOT_FINGERPRINTED,
        continuing_fields,
        fingerprint_view,
        state_view,
    )

    class Inner(BaseModel):
        steps: int = Field(default=10, json_schema_extra=CONTINUES_RUN)
        every: int = Field(default=1, json_schema_extra=NOT_FINGERPRINTED)
        lr: float = 0.1

    class Section(BaseModel):
        inner: Inner = Inner()

    def keys(**kw):
        s = Section(inner=Inner(**kw))
        return fingerprint_view(s), state_view(s)

    fp0, st0 = keys()
    fp1, st1 = keys(steps=20)
    assert fp1 != fp0 and st1 == st0
    assert keys(every=5) == (fp0, st0)
    fp2, st2 = keys(lr=0.2)
    assert fp2 != fp0 and st2 != st0
    assert continuing_fields(Section) == ["inner.steps"]
