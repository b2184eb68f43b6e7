"""Distributed (DCP) sharded checkpoints: atomic, fingerprinted, the last K kept.

Layout under ``<work_dir>/checkpoints/``::

    step-00000040/            a complete checkpoint (renamed into place only once complete)
        .metadata, __0_0.distcp ...   DCP shards: model + optimizer, each rank writes its own part
        trainer.json          step, tokens, monitor baseline, run fingerprint (written last by rank 0)
        rng-<rank>.pt         each rank's RNG state
    .tmp-step-00000040/       an interrupted save: ignored and removed

Atomicity: every rank writes into the ``.tmp-`` folder, a barrier makes sure all shards are on disk,
rank 0 writes ``trainer.json`` and renames the folder. A run killed at any moment leaves the previous
complete checkpoint usable. On a multi-node cluster ``work_dir`` must be on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

_STEP_RE = re.compile(r"^step-(\d{8})$")
TRAINER_STATE = "trainer.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def _quiet_single_process():
    """DCP warns that it "assumes" a single process when no group exists; here that is intended."""
    with warnings.catch_warnings():
        if not _distributed():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def list_checkpoints(root: Path, fingerprint: str | None = None) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first; only those of ``fingerprint`` if given."""
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if not m or not (p / TRAINER_STATE).is_file():
            continue
        if fingerprint is not None:
            try:
                meta = json.loads((p / TRAINER_STATE).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if meta.get("fingerprint") != fingerprint:
                continue
        out.append((int(m.group(1)), p))
    return sorted(out)


def discard_foreign(root: Path, fingerprint: str) -> list[Path]:
    """Delete checkpoints of another run fingerprint and interrupted saves (called by the driver only).

    A checkpoint of a different config or upstream data must never be resumed: its data position and
    schedule mean something else.
    """
    removed = []
    if not root.is_dir():
        return removed
    keep = {p for _, p in list_checkpoints(root, fingerprint)}
    for p in root.iterdir():
        if p.is_dir() and p not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint folder."""
    rank = _rank()
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    msd, osd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp), no_dist=not _distributed())
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng-{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        if final.exists():  # a rerun of the same step after a crash between rename and prune
            shutil.rmtree(final)
        os.replace(tmp, final)
        fp = trainer_state.get("fingerprint")
        for _, old in list_checkpoints(root, fp)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def resume(
    root: Path, fingerprint: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None
) -> tuple[dict[str, Any], int | None]:
    """Restore the newest checkpoint of ``fingerprint`` into model, optimizer and loss scaler. Collective.

    Returns the trainer state (a fresh one when there is nothing to resume) and the step resumed from
    (None for a fresh start)."""
    existing = list_checkpoints(root, fingerprint)
    if not existing:
        return {"step": 0, "tokens": 0, "base_general_bpb": None, "base": None}, None
    state = load_checkpoint(existing[-1][1], model, optimizer)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state, int(state["step"])


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore model, optimizer and this rank's RNG; return the trainer state."""
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-{_rank()}.pt"
    if rng_file.exists():  # absent when resuming with a different world size
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / TRAINER_STATE).read_text())
