"""Which checkpoint a train run resumes from, and what happens to the others (driver side, no torch).

Checkpoints are keyed by the train stage's *state key* (``ctx.state_key``: the fingerprint without the
knobs declared ``CONTINUES_RUN`` in train/config.py: the budget, the schedule shape, the early-stop
threshold). :func:`prepare` runs in the driver before any worker starts and leaves
``<work>/checkpoints/`` holding only checkpoints this run may resume, the newest of which is the one
it must resume; the loop then simply resumes the newest, so a Ray Train retry after a worker failure
picks up the run's own newer checkpoints. Nothing here deletes a finished checkpoint:

* interrupted saves (``.tmp-step-*``) are removed: incomplete, never resumable;
* checkpoints of another state key (``lr``, ``seed``, an upstream stage changed), or all of them with
  ``--force``, are *moved aside* together with their run's logs to ``checkpoints.old-<key[:12]>/``,
  whose ``set_aside.json`` says why and which keys changed (from the config each checkpoint stores).
  The loop deletes such folders only once the new run has written its own first checkpoint; if the
  change is undone before that, the next run moves them back and resumes them;
* a changed budget or schedule *continues* the newest checkpoint at or below the new step count with
  the new schedule (train/schedule.py says what that means per schedule); with ``wsd`` the branch
  checkpoint (written at the start of the decay) is preferred to one taken inside the old decay, which
  makes the continuation exact. Same-key checkpoints off the continued path (beyond a lowered budget,
  or in the old decay) are moved aside the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapt.train.schedule import PLAN_KEYS, lr_at

TRAINER_STATE = "trainer.json"
SET_ASIDE_PREFIX = "checkpoints.old-"
SET_ASIDE_INFO = "set_aside.json"
DELETING_PREFIX = ".deleting-"
_STEP_RE = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and its ``trainer.json``."""

    step: int
    path: Path
    state: dict[str, Any]

    @property
    def key(self) -> str | None:
        """The state key it was written under (None: unreadable, or written before keys existed)."""
        return self.state.get("state_key")

    @property
    def history(self) -> list[dict[str, Any]]:
        """The plans its updates were made under: ``[{"from_step": 0, **plan}, ...]``."""
        return list(self.state.get("schedule_history") or [])

    @property
    def plan(self) -> dict[str, Any] | None:
        """The plan of the run that wrote it (the last entry of its history)."""
        return plan_of(self.history[-1]) if self.history else None


def plan_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in PLAN_KEYS}


def read_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under ``root`` (those with a ``trainer.json``), oldest first."""
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if not m or not (p / TRAINER_STATE).is_file():
            continue
        try:
            state = json.loads((p / TRAINER_STATE).read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        out.append(Checkpoint(int(m.group(1)), p, state if isinstance(state, dict) else {}))
    return sorted(out, key=lambda c: c.step)


def list_checkpoints(root: Path, key: str | None = None) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first; only those of state key ``key`` if given."""
    return [(c.step, c.path) for c in read_checkpoints(root) if key is None or c.key == key]


def first_lr_difference(history: list[dict[str, Any]], plan: dict[str, Any], upto: int) -> int | None:
    """The first update before ``upto`` whose learning rate under ``history`` differs from ``plan``'s;
    None when all agree (a continuation from ``upto`` is then exactly the run ``plan`` describes: the
    data position and everything else already follow from the step)."""
    if not history:
        return 0
    for i, seg in enumerate(history):
        end = min(history[i + 1]["from_step"] if i + 1 < len(history) else upto, upto)
        for s in range(int(seg["from_step"]), end):
            if lr_at(seg, s) != lr_at(plan, s):
                return s
    return None


def continued_plan(plan: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    """``plan`` as a continuation from ``ckpt``: past the old warmup, the re-warm is not redone (a new
    warmup length would put already-warm updates back into warmup), so the old length is kept."""
    old = ckpt.plan
    if old and old.get("warmup_steps") is not None and ckpt.step >= int(old["warmup_steps"]):
        return {**plan, "warmup_steps": int(old["warmup_steps"])}
    return plan


def diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, list[Any]] | None:
    """Dotted keys whose values differ, as ``{key: [old, new]}``; None when ``old`` is unknown."""
    if old is None or new is None:
        return None
    a, b = _flatten(old), _flatten(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


@dataclass
class Prepared:
    """What :func:`prepare` did and decided, for the spec, the log and the manifest."""

    resumed: dict[str, Any] | None = None
    """The manifest's ``resumed``: None for a fresh start."""
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    discard_after_checkpoint: list[str] = field(default_factory=list)
    """Set-aside folders the loop deletes once this run has written its first checkpoint."""
    warmup_steps: int | None = None
    """The warmup length of the continued plan, when it differs from the freshly planned one."""


def prepare(
    root: Path,
    log_dir: Path,
    key: str,
    plan: dict[str, Any],
    meta: dict[str, Any],
    force: bool,
    log: Any,
) -> Prepared:
    """Arrange ``root`` for a run of state ``key`` planned as ``plan`` (see the module docstring).

    ``meta`` is what the run stores in every checkpoint: ``state`` (the state-relevant config and
    upstream fingerprints, diffed to name what changed) and ``continuing`` (the CONTINUES_RUN values).
    """
    out = Prepared()
    root.mkdir(parents=True, exist_ok=True)
    for tmp in sorted(root.glob(".tmp-step-*")):
        shutil.rmtree(tmp)
        log.info("removed an interrupted checkpoint save: %s", tmp.name)
    for half in sorted(p for p in root.glob("step-*") if not (p / TRAINER_STATE).exists()):
        shutil.rmtree(half)  # a pruned checkpoint whose deletion was interrupted (trainer.json goes first)
        log.info("removed a half-deleted checkpoint: %s", half.name)
    for half in sorted(root.parent.glob(DELETING_PREFIX + "*")):
        shutil.rmtree(half)

    ckpts = read_checkpoints(root)
    ours = [] if force else [c for c in ckpts if c.key == key]
    foreign = [c for c in ckpts if force or c.key != key]
    if foreign:
        groups: dict[str | None, list[Checkpoint]] = {}
        for c in foreign:
            groups.setdefault(c.key, []).append(c)
        # the logs belong to whoever wrote last; they go along when none of this state's checkpoints stay
        last = max(foreign, key=lambda c: (c.path / TRAINER_STATE).stat().st_mtime).key
        for gkey, group in groups.items():
            reason = "--force" if force else "state"
            changed = (
                None if force else diff((group[-1].state.get("meta") or {}).get("state"), meta.get("state"))
            )
            dest = _set_aside(
                root, gkey, group, reason, changed, log_dir if not ours and gkey == last else None
            )
            out.set_aside.append(
                {
                    "path": str(dest),
                    "state_key": gkey,
                    "reason": reason,
                    "changed": changed,
                    "steps": [c.step for c in group],
                }
            )
            what = "--force" if force else f"changed: {', '.join(changed) if changed else 'unknown'}"
            log.warning(
                "checkpoints at steps %s are of another run state (%s): moved aside to %s, kept until this "
                "run has written its first checkpoint",
                [c.step for c in group],
                what,
                dest,
            )
    if not ours and not force:
        out.restored = _restore(root, log_dir, key, log)

    ours = [c for c in read_checkpoints(root) if c.key == key]
    cands = [c for c in ours if c.step <= int(plan["steps"])]
    off_path = [c for c in ours if c.step > int(plan["steps"])]
    chosen = cands[-1] if cands else None
    if chosen is not None and chosen.plan != plan and plan["schedule"] == "wsd":
        for b in reversed(cands[:-1]):
            if (
                b.state.get("branch")
                and first_lr_difference(b.history, continued_plan(plan, b), b.step) is None
            ):
                off_path += [c for c in cands if c.step > b.step]
                chosen = b
                break
    if off_path:
        off_path.sort(key=lambda c: c.step)
        dest = _set_aside(root, key, off_path, "off the continued path", None, None)
        out.set_aside.append(
            {
                "path": str(dest),
                "state_key": key,
                "reason": "off the continued path",
                "changed": None,
                "steps": [c.step for c in off_path],
            }
        )
        log.warning(
            "checkpoints at steps %s are not on the path this run continues (beyond its %d steps, or in the "
            "old decay): moved aside to %s, kept until this run has written its first checkpoint",
            [c.step for c in off_path],
            int(plan["steps"]),
            dest,
        )
    out.discard_after_checkpoint = [
        str(p) for p in sorted(root.parent.glob(SET_ASIDE_PREFIX + "*")) if p.is_dir()
    ]
    if chosen is None:
        log.info("no checkpoint of this run state: training from step 0")
        return out
    new = continued_plan(plan, chosen)
    if new["warmup_steps"] != plan["warmup_steps"]:
        out.warmup_steps = int(new["warmup_steps"])
    if chosen.plan in (plan, new):  # the same plan (a continued run's kept warmup included): a plain resume
        out.resumed = {"from_step": chosen.step, "continued": False}
        log.info("resuming from checkpoint step %d", chosen.step)
        return out
    first_diff = first_lr_difference(chosen.history, new, chosen.step)
    prev, prev_meta = chosen.plan or {}, chosen.state.get("meta") or {}
    changed = diff(prev_meta.get("continuing"), meta.get("continuing"))
    lr_prev = lr_at(chosen.history[-1], chosen.step - 1) if chosen.history else None
    lr_now = lr_at(new, chosen.step) if chosen.step < int(new["steps"]) else None
    out.resumed = {
        "from_step": chosen.step,
        "continued": True,
        "previous_steps": prev.get("steps"),
        "steps": int(plan["steps"]),
        "previous_max_steps": (prev_meta.get("continuing") or {}).get("train.max_steps"),
        "changed": changed,
        "exact": first_diff is None,
        "first_different_update": first_diff,
        "lr": {"last_trained": lr_prev, "at_resume": lr_now},
        "warmup_steps": int(new["warmup_steps"]),
    }
    log.warning(
        "continuing from checkpoint step %d of a %s-step run with the new schedule: %d steps now "
        "(changed: %s); %s; learning rate %s at step %d, %s from there",
        chosen.step,
        prev.get("steps"),
        int(plan["steps"]),
        ", ".join(f"{k} {a} -> {b}" for k, (a, b) in (changed or {}).items()) or "unknown",
        "an exact continuation"
        if first_diff is None
        else f"not exact (the updates from {first_diff} on had another learning rate than this plan gives them)",
        f"{lr_prev:.3g}" if lr_prev is not None else "?",
        chosen.step,
        f"{lr_now:.3g}" if lr_now is not None else "none (nothing left to train)",
    )
    return out


def delete_folder(path: Path) -> None:
    """Delete a set-aside folder so that an interrupted deletion never leaves something resumable:
    renamed first (atomic), removed after; :func:`prepare` clears leftovers."""
    doomed = path.with_name(DELETING_PREFIX + path.name)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def _set_aside(
    root: Path,
    key: str | None,
    ckpts: list[Checkpoint],
    reason: str,
    changed: dict[str, list[Any]] | None,
    log_dir: Path | None,
) -> Path:
    """Move ``ckpts`` (and ``log_dir``, the logs of their run) into a new ``checkpoints.old-*`` folder.
    Its ``set_aside.json`` is written first, so a kill half-way leaves a folder that says what it is."""
    base = f"{SET_ASIDE_PREFIX}{(key or 'unknown')[:12]}"
    dest, i = root.parent / base, 2
    while dest.exists():
        dest, i = root.parent / f"{base}-{i}", i + 1
    dest.mkdir(parents=True)
    info = {"state_key": key, "reason": reason, "changed": changed, "steps": [c.step for c in ckpts]}
    (dest / SET_ASIDE_INFO).write_text(json.dumps(info, indent=1))
    for c in ckpts:
        os.replace(c.path, dest / c.path.name)
    if log_dir is not None and log_dir.is_dir():
        os.replace(log_dir, dest / "logs")
    return dest


def _restore(root: Path, log_dir: Path, key: str, log: Any) -> list[int]:
    """Move back checkpoints of state ``key`` that an earlier run set aside for a state change (the
    change was undone before that run wrote a checkpoint of its own). Returns their steps."""
    for folder in sorted(root.parent.glob(SET_ASIDE_PREFIX + "*")):
        try:
            info = json.loads((folder / SET_ASIDE_INFO).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if info.get("reason") != "state":
            continue
        mine = [c for c in read_checkpoints(folder) if c.key == key and not (root / c.path.name).exists()]
        if not mine:
            continue
        for c in mine:
            os.replace(c.path, root / c.path.name)
        if (folder / "logs").is_dir():
            if log_dir.exists():  # rows of a run that never wrote a checkpoint: nothing resumes them
                shutil.rmtree(log_dir)
            os.replace(folder / "logs", log_dir)
        if not read_checkpoints(folder):
            shutil.rmtree(folder)
        steps = [c.step for c in mine]
        log.warning("restored the checkpoints at steps %s of this run state from %s", steps, folder)
        return steps
    return []
