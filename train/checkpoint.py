"""Distributed (DCP) sharded checkpoints: atomic, keyed by the run state, the last K kept.

Layout under ``<work_dir>/checkpoints/``::

    step-00000040/            a complete checkpoint (renamed into place only once complete)
        .metadata, __0_0.distcp ...   DCP shards: model + optimizer, each rank writes its own part
        trainer.json          step, tokens, state key, schedule history, monitor baseline and last row,
                              early stop, the config it depends on (written last by rank 0)
        rng-<rank>.pt         each rank's RNG state
    .tmp-step-00000040/       an interrupted save: ignored and removed

Atomicity: every rank writes into the ``.tmp-`` folder, a barrier makes sure all shards are on disk,
rank 0 writes ``trainer.json`` and renames the folder. A run killed at any moment leaves the previous
complete checkpoint usable. On a multi-node cluster ``work_dir`` must be on a shared filesystem.

Which checkpoints a run may resume, and what happens to the others, is decided by the driver before
the workers start (``train.resume``); here a run resumes the newest checkpoint of its state key.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from dapt.train.resume import TRAINER_STATE, read_checkpoints


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
        _prune(root, trainer_state.get("state_key"), keep)
    _barrier()
    return final


def _prune(root: Path, key: str | None, keep: int) -> None:
    """Delete this state's checkpoints beyond the newest ``keep``, except the newest ``wsd`` branch
    point (the checkpoint at the start of the decay), from which a longer run continues exactly."""
    mine = [c for c in read_checkpoints(root) if c.key == key]
    branches = [c for c in mine if c.state.get("branch")]
    protected = {branches[-1].path} if branches else set()
    prunable = [c for c in mine if c.path not in protected]
    for c in prunable[: max(len(prunable) - keep, 0)]:
        # trainer.json first: a deletion cut short leaves no resumable half (train.resume clears it)
        (c.path / TRAINER_STATE).unlink(missing_ok=True)
        shutil.rmtree(c.path, ignore_errors=True)


def resume(
    root: Path, key: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None
) -> tuple[dict[str, Any], int | None]:
    """Restore the newest checkpoint of state ``key`` into model, optimizer and loss scaler. Collective.

    Returns the trainer state (a fresh one when there is nothing to resume) and the step resumed from
    (None for a fresh start)."""
    existing = [c for c in read_checkpoints(root) if c.key == key]
    if not existing:
        return {"step": 0, "tokens": 0, "base_general_bpb": None, "base": None}, None
    state = load_checkpoint(existing[-1].path, model, optimizer)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state, int(state["step"])


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore model, optimizer and this rank's RNG; return the trainer state."""
    msd, osd = get_state_dict(model, optimizer)
    # get_state_dict gives every parameter optimizer state; a parameter that never had a gradient
    # (BERT's unused ``cls.predictions.bias`` when the decoder is untied) has none in the checkpoint.
    # It has none in an uninterrupted run either, so leave it without: a partial load of just those.
    # Saved keys are "optim.state.<fqn>.<name>" (AdamW's names have no dot): the fqns with state.
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    stateful = {k[len("optim.state.") :].rsplit(".", 1)[0] for k in keys if k.startswith("optim.state.")}
    for fqn in [f for f in osd.get("state", {}) if f not in stateful]:
        del osd["state"][fqn]
    state = {"model": msd, "optim": osd}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
    # strict=False only for those stateless parameters: dcp.load above already required every model key
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=StateDictOptions(strict=False),
    )
    rng_file = path / f"rng-{_rank()}.pt"
    if rng_file.exists():  # absent when resuming with a different world size
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / TRAINER_STATE).read_text())
