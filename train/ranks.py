"""Where each rank runs: the placement record, the device-mesh layout and the HSDP placement check.

Why this exists: on a cluster the only trustworthy answer to "which node holds rank 3, and which
shard group is it in" is what the ranks themselves report once they are up. Every rank describes
itself (Ray node id, host, pid) and the descriptions are all-gathered once at start; rank 0 writes
them, with each rank's coordinates in the real ``DeviceMesh``, to ``<log_dir>/placement.json``
(atomically; one entry per worker-group attempt, so a Ray Train restart after a lost node shows
where the ranks went), and the train stage copies the last attempt into its manifest.

``hybrid`` (HSDP) needs each shard group on one node (its all-gathers run every layer; across the
network they would make every step slow without any error). The shard size defaults to "the workers
of one node", which this module counts from the gathered Ray node ids, not from Ray Train's
``get_local_world_size()``: Ray Train 2.60 groups local ranks by node *IP address*, so several nodes
sharing an address (containers on one host network, the loopback test clusters) would all count as
one node, while it orders world ranks by node *id*. A placement that cannot give node-local shard
groups is refused with one line (:class:`PlacementError`) instead of training slowly.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

PLACEMENT_FILE = "placement.json"
"""Under the spec's ``log_dir``: ``{"attempts": [...]}`` or ``{"error": "..."}`` (rank 0 writes it)."""


class PlacementError(ValueError):
    """The ranks' placement cannot give the requested sharding (the message names the config key)."""


def describe_self(under_ray: bool) -> dict[str, Any]:
    """This process: Ray node id (None outside Ray), host (the node's IP under Ray), pid."""
    if under_ray:
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }
    return {"node_id": None, "host": socket.gethostname(), "pid": os.getpid()}


def node_key(r: dict[str, Any]) -> str:
    """What "the same node" means: the Ray node id, or the host name outside Ray (torchrun, mp)."""
    return r["node_id"] or r["host"]


def gather(me: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's description, in rank order, with ``rank`` and a node-local ``local_rank`` (the
    index among the ranks of the same node); one all_gather_object, or just ``me`` without a group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, me)
    else:
        everyone = [me]
    seen: dict[str, int] = {}
    out = []
    for rank, r in enumerate(everyone):
        key = node_key(r)
        out.append({"rank": rank, **r, "local_rank": seen.get(key, 0)})
        seen[key] = seen.get(key, 0) + 1
    return out


def _short(node: str) -> str:
    return node[:12]


def hybrid_shard_size(ranks: list[dict[str, Any]], requested: int | None) -> int:
    """The HSDP shard-group size for this placement, or PlacementError when it would put a shard
    group across nodes.

    ``requested`` None: the workers of one node, which needs every node to hold the same number.
    World ranks are contiguous per node (Ray Train orders them by node id; torchrun by node rank), so
    shard group ``g`` is ranks ``[g*S, (g+1)*S)``. Allowed: each group on one node, or, when the size
    was set explicitly, groups of whole nodes (a model too big for one node's memory: a deliberate
    cross-node shard group). Refused: a group holding part of a node and part of another."""
    n = len(ranks)
    per_node: dict[str, list[int]] = {}
    for r in ranks:
        per_node.setdefault(node_key(r), []).append(r["rank"])
    counts = {k: len(v) for k, v in per_node.items()}
    if requested is None:
        if len(set(counts.values())) != 1:
            landed = ", ".join(f"node {_short(k)}: {c}" for k, c in counts.items())
            raise PlacementError(
                f"train.sharding: hybrid: the {n} workers landed unevenly on the Ray nodes ({landed}), so "
                "'the workers of one node' is no shard-group size; size train.cpus_per_worker (GPUs: one "
                "per worker) so that each node holds the same number, or set train.hybrid_shard_size"
            )
        size = next(iter(counts.values()))
    else:
        size = int(requested)
    if size < 1 or n % size:
        raise PlacementError(f"train.hybrid_shard_size ({size}) must divide the {n} workers")
    for g in range(n // size):
        group = list(range(g * size, (g + 1) * size))
        nodes = list(dict.fromkeys(node_key(ranks[r]) for r in group))
        if len(nodes) == 1:
            continue
        whole = all(set(per_node[k]) <= set(group) for k in nodes)
        if requested is not None and whole:
            continue
        where = ", ".join(
            f"node {_short(k)} ({', '.join(str(r) for r in group if node_key(ranks[r]) == k)})" for k in nodes
        )
        key = "train.hybrid_shard_size" if requested is not None else "train.sharding"
        raise PlacementError(
            f"{key}: hybrid shard group {g} (ranks {group[0]}-{group[-1]}) spans Ray nodes {where} without "
            "holding them whole: its per-layer all-gathers would cross the network; use a shard size of at "
            f"most the workers per node ({min(counts.values())} here) that divides them, or whole nodes"
        )
    return size


def layout(mode: str, n: int, mesh: Any) -> dict[str, Any]:
    """The mesh shape and each rank's coordinates, read from the real ``DeviceMesh`` when there is one.

    ``mode``: ``single`` (one worker, unsharded), ``ddp`` (no mesh: every rank a replica), ``zero2`` /
    ``zero3`` (1-D ``shard`` mesh), ``hybrid`` (2-D ``replicate`` x ``shard``)."""
    if mesh is None:
        return {"shape": {"replicate": n}, "coords": [{"replicate": r} for r in range(n)]}
    names = list(mesh.mesh_dim_names or ("shard",))
    grid = mesh.mesh  # the rank held at each mesh position
    coords: list[dict[str, int] | None] = [None] * n
    for pos in itertools.product(*(range(s) for s in grid.shape)):
        coords[int(grid[pos])] = {name: int(i) for name, i in zip(names, pos, strict=True)}
    return {"shape": {name: int(s) for name, s in zip(names, grid.shape, strict=True)}, "coords": coords}


def attempt_record(
    ranks: list[dict[str, Any]], lay: dict[str, Any], mode: str, start_step: int
) -> dict[str, Any]:
    """One worker-group attempt as the manifest shows it (``started``: when its ranks were up and had
    resumed, UTC, so a restart's delay after a failure can be read off)."""
    from datetime import UTC, datetime

    return {
        "start_step": int(start_step),
        "started": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "sharding": mode,
        "mesh": lay["shape"],
        "ranks": [{**r, "mesh": c} for r, c in zip(ranks, lay["coords"], strict=True)],
    }


def write_attempt(log_dir: str | os.PathLike, attempt: dict[str, Any]) -> None:
    """Append this attempt to ``placement.json`` (rank 0 only; attempts are sequential)."""
    from dapt.pipeline.fsutil import atomic_write_json, read_json

    path = Path(log_dir) / PLACEMENT_FILE
    old = read_json(path) if path.exists() else {}
    atomic_write_json(path, {"attempts": [*old.get("attempts", []), attempt]})


def write_error(log_dir: str | os.PathLike, message: str, ranks: list[dict[str, Any]]) -> None:
    """Record a refused placement for the driver, which raises it as a ConfigError."""
    from dapt.pipeline.fsutil import atomic_write_json

    atomic_write_json(Path(log_dir) / PLACEMENT_FILE, {"error": message, "ranks": ranks})


def read_placement(path: Path) -> dict[str, Any]:
    """The workers' placement record (``train.ranks``): a refused placement becomes the ConfigError it
    describes; otherwise the last attempt's mesh and ranks, and every attempt's start step and node ids
    (more than one attempt: Ray Train restarted the worker group, e.g. after a node was lost)."""
    if not path.exists():
        raise RuntimeError(f"training finished without a placement record ({path})")
    rec = json.loads(path.read_text())
    if "error" in rec:
        from dapt.pipeline.errors import ConfigError

        raise ConfigError(rec["error"])
    attempts = rec["attempts"]
    last = attempts[-1]
    return {
        "mesh": last["mesh"],
        "ranks": last["ranks"],
        "attempts": [
            {
                "start_step": a["start_step"],
                "started": a["started"],
                "world_size": len(a["ranks"]),
                "node_ids": [r["node_id"] for r in a["ranks"]],
            }
            for a in attempts
        ],
    }
