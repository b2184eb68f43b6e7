"""Training across Ray nodes: where each rank runs, HSDP placement, a lost worker node, cpu_offload.

The slow tests share one real 2-node cluster (`dapt cluster up --nodes 2 --cpus-per-node 2`: separate
raylets with their own node ids, token auth on, all on 127.0.0.1). Every Ray client of it runs in a
subprocess (this pytest process may hold the session's private Ray, tests/conftest.py): the train
stage runs through `dapt train` or a `run_stage` snippet with ``RAY_ADDRESS`` set to the cluster.
Run folders live in the cluster's own folder (tests/cluster_fixtures.py says why not ``tmp_path``).

Which node holds which rank is decided by Ray's PACK placement: with 2 CPUs per node, 4 workers of
1 CPU give two per node (a real 2 x 2 HSDP mesh) and 2 workers of 2 CPUs one per node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from cluster_fixtures import JOIN_NODE, client_env, dapt_cli, local_cluster, run_py
from train_fixtures import SEQ, make_run, metrics, small_train

from dapt.pipeline.cluster import stop_processes
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError
from dapt.pipeline.stages import run_stage
from dapt.train.ranks import PLACEMENT_FILE, PlacementError, hybrid_shard_size

# The train stage in a subprocess, joined to the cluster by RAY_ADDRESS: argv = config, extra (JSON).
TRAIN = """
    import json, sys
    from dapt.pipeline.config import load_config
    from dapt.pipeline.stages import run_stage
    cfg = load_config(sys.argv[1])
    extra = {"preflight": False, "progress": False, **json.loads(sys.argv[2])}
    man = run_stage(cfg, "train", echo=None, extra=extra)
    print("MANIFEST " + json.dumps(man), flush=True)
"""


def _manifest(stdout: str) -> dict[str, Any]:
    (line,) = [x for x in stdout.splitlines() if x.startswith("MANIFEST ")]
    return json.loads(line[len("MANIFEST ") :])


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in metrics(run)]


# ----------------------------------------------------------------------------------------------------
# without a cluster
# ----------------------------------------------------------------------------------------------------


def _ranks(*nodes: str) -> list[dict[str, Any]]:
    return [{"rank": i, "node_id": n, "host": "127.0.0.1", "pid": 100 + i} for i, n in enumerate(nodes)]


def test_hybrid_shard_groups_must_be_node_local() -> None:
    """The HSDP shard size comes from where the ranks run; a shard group that straddles nodes is refused
    with a line naming the key, not trained slowly."""
    assert hybrid_shard_size(_ranks("a", "a", "b", "b"), None) == 2  # the workers of one node
    assert hybrid_shard_size(_ranks("a", "a", "b", "b"), 1) == 1
    assert hybrid_shard_size(_ranks("a", "a", "b", "b"), 4) == 4  # explicit and whole nodes: allowed
    with pytest.raises(PlacementError, match=r"^train\.sharding: hybrid: the 4 workers landed unevenly"):
        hybrid_shard_size(_ranks("a", "a", "a", "b"), None)
    with pytest.raises(
        PlacementError, match=r"^train\.hybrid_shard_size: hybrid shard group 1 \(ranks 2-3\)"
    ):
        hybrid_shard_size(_ranks("a", "a", "a", "b", "b", "b"), 2)  # group 1 = a's rank 2 + b's rank 3
    with pytest.raises(PlacementError, match=r"must divide the 4 workers"):
        hybrid_shard_size(_ranks("a", "a", "b", "b"), 3)


def test_cpu_offload_is_refused_on_cpu_before_any_worker_starts(
    tmp_path: Path, tiny_model_dir: Path, ray_local: dict
) -> None:
    """FSDP2 CPU offload on CPU devices would move nothing (the state is in host memory already; with
    its default pinned memory it even raises): a ConfigError naming train.cpu_offload, not a no-op.
    DDP (a full replica per GPU) and one worker (unsharded) cannot offload either."""
    train = small_train(num_workers=2, sharding="zero3", global_batch_tokens=4 * SEQ, max_steps=2)
    path = make_run(tmp_path, tiny_model_dir, {**train, "cpu_offload": True}, heldout=False)
    run = tmp_path / "run"
    for override, why in (
        ("train.sharding=ddp", "needs a sharded strategy"),
        ("train.num_workers=1", "needs train.num_workers >= 2"),
    ):
        with pytest.raises(ConfigError, match=rf"run\.yaml: train\.cpu_offload: .*{why}"):
            load_config(path, [override])

    # the session's Ray has no GPU: refused after detection, before the launch
    with pytest.raises(ConfigError, match=r"^train\.cpu_offload: .*\(the Ray cluster has no GPU\)"):
        run_stage(load_config(path), "train", echo=None, extra={"preflight": False})
    work = run / ".work" / "train"
    assert not (work / "logs" / PLACEMENT_FILE).exists() and not (work / "checkpoints").exists()
    assert not (run / "train").exists()

    # the command: one line, exit 2, before Ray starts when use_gpu is false
    r = dapt_cli("train", "--config", str(path), "train.use_gpu=false", env=client_env(), timeout=120)
    assert r.returncode == 2, r.stderr
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert err[-1].startswith(
        "dapt: error: train.cpu_offload: this run computes on CPUs (train.use_gpu: false)"
    )
    assert not (work / "checkpoints").exists()


def test_ranks_and_mesh_are_recorded_on_one_node(
    tmp_path: Path, tiny_model_dir: Path, ray_local: dict
) -> None:
    """Two workers on the session's single-node Ray, hybrid: both ranks on that node, one shard group of
    two (the workers of one node), one replica; each rank's node id, host, pid and mesh coordinates."""
    import ray

    train = small_train(num_workers=2, sharding="hybrid", global_batch_tokens=2 * SEQ, max_steps=2)
    path = make_run(tmp_path, tiny_model_dir, train, heldout=False)
    man = run_stage(load_config(path), "train", echo=None, extra={"preflight": False, "progress": False})
    node = ray.get_runtime_context().get_node_id()
    assert man["mesh"] == {"replicate": 1, "shard": 2}
    ranks = man["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["local_rank"] for r in ranks] == [0, 1]
    assert {r["node_id"] for r in ranks} == {node} and {r["host"] for r in ranks} == {"127.0.0.1"}
    assert [r["mesh"] for r in ranks] == [{"replicate": 0, "shard": 0}, {"replicate": 0, "shard": 1}]
    assert len({r["pid"] for r in ranks}) == 2 and os.getpid() not in {r["pid"] for r in ranks}
    (attempt,) = man["attempts"]  # one worker group, never restarted
    assert attempt["start_step"] == 0 and attempt["world_size"] == 2 and attempt["node_ids"] == [node, node]


# ----------------------------------------------------------------------------------------------------
# a real 2-node cluster
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(nodes=2, cpus_per_node=2) as c:
        yield c


def _env(cluster: dict[str, Any]) -> dict[str, str]:
    return {**cluster["env"], "RAY_ADDRESS": cluster["state"]["gcs_address"]}


def _train_in_cluster(cluster: dict[str, Any], path: Path, **extra: Any) -> dict[str, Any]:
    r = run_py(TRAIN, _env(cluster), str(path), json.dumps(extra), timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return _manifest(r.stdout)


def _folder(cluster: dict[str, Any], name: str) -> Path:
    d = cluster["dir"] / name
    d.mkdir()
    return d


@pytest.mark.slow
def test_an_uneven_hybrid_placement_is_refused_in_one_line(cluster, tiny_model_dir: Path) -> None:
    """3 workers of 1 CPU on two 2-CPU nodes: PACK puts 2 on one node and 1 on the other, so "the
    workers of one node" is no shard size. Every rank sees the same gathered placement and returns, so
    Ray Train does not retry it; the command exits 2 with the recorded line, nothing trained."""
    train = small_train(
        num_workers=3, sharding="hybrid", micro_batch_size=1, global_batch_tokens=3 * SEQ, max_steps=2
    )
    path = make_run(_folder(cluster, "uneven"), tiny_model_dir, train, heldout=False)
    r = dapt_cli("train", "--config", str(path), "--no-preflight", env=_env(cluster), timeout=600)
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    last = [x for x in r.stderr.splitlines() if x.strip()][-1]
    assert re.fullmatch(
        r"dapt: error: train\.sharding: hybrid: the 3 workers landed unevenly on the Ray nodes "
        r"\(node \w{12}: [12], node \w{12}: [12]\), .*set train\.hybrid_shard_size",
        last,
    ), last
    assert "[FailurePolicy]" not in r.stdout + r.stderr  # no worker failure, so no retry
    run = path.parent / "run"
    assert not (run / "train").exists() and not list((run / ".work" / "train").glob("checkpoints/step-*"))


# zero3 over the two nodes, one 2-CPU worker on each; the same global batch (4 blocks) as one worker
ZERO3 = small_train(
    num_workers=2,
    cpus_per_worker=2,
    sharding="zero3",
    micro_batch_size=1,
    global_batch_tokens=4 * SEQ,
    max_steps=6,
    checkpoint_every=2,
    max_failures=1,
)


@pytest.fixture(scope="module")
def zero3_run(cluster, tiny_model_dir: Path) -> dict[str, Any]:
    """The uninterrupted zero3 run across both nodes: the reference of the node-loss test too."""
    path = make_run(_folder(cluster, "zero3"), tiny_model_dir, ZERO3, heldout=False)
    man = _train_in_cluster(cluster, path)
    return {"manifest": man, "losses": _losses(path.parent / "run"), "rows": metrics(path.parent / "run")}


@pytest.mark.slow
def test_hybrid_2x2_mesh_keeps_shard_groups_on_a_node(cluster, tiny_model_dir: Path) -> None:
    """`dapt train` with 4 workers, hybrid: two per node (PACK, 1 CPU each of 2), shard group = the
    workers of one node, counted from the ranks' Ray node ids (Ray Train's own local world size groups
    by IP address, and every node here is 127.0.0.1)."""
    train = small_train(
        num_workers=4, sharding="hybrid", micro_batch_size=1, global_batch_tokens=4 * SEQ, max_steps=3
    )
    path = make_run(_folder(cluster, "hybrid"), tiny_model_dir, train, heldout=False)
    cli = dapt_cli("train", "--config", str(path), env=_env(cluster), timeout=600)
    assert cli.returncode == 0, (cli.stdout + cli.stderr)[-4000:]
    man = json.loads((path.parent / "run" / "train" / "manifest.json").read_text())

    assert man["mesh"] == {"replicate": 2, "shard": 2} and man["sharding"] == "hybrid"
    ranks = man["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    nodes = {n["node_id"] for n in cluster["state"]["nodes"]}
    assert {r["node_id"] for r in ranks} == nodes  # two distinct nodes, the cluster's own
    shard_groups: dict[int, set[str]] = {}
    replicate_groups: dict[int, list[str]] = {}
    for r in ranks:
        shard_groups.setdefault(r["mesh"]["replicate"], set()).add(r["node_id"])
        replicate_groups.setdefault(r["mesh"]["shard"], []).append(r["node_id"])
        assert r["local_rank"] == r["mesh"]["shard"] and r["host"] == "127.0.0.1"
    assert len(shard_groups) == 2 and all(len(g) == 1 for g in shard_groups.values())  # each on one node
    assert len(replicate_groups) == 2 and all(sorted(g) == sorted(nodes) for g in replicate_groups.values())
    assert len({r["pid"] for r in ranks}) == 4
    assert man["steps"] == 3 and all(np.isfinite(_losses(path.parent / "run")))
    # the runner probed run_dir from both nodes before the stage started (pipeline/placement.py)
    assert re.search(r"train: shared storage checked: \d+ path\(s\) visible on every Ray node", cli.stdout)


@pytest.mark.slow
def test_zero3_across_two_nodes_matches_one_worker(cluster, tiny_model_dir: Path, zero3_run) -> None:
    man = zero3_run["manifest"]
    assert man["mesh"] == {"shard": 2}
    assert [r["mesh"] for r in man["ranks"]] == [{"shard": 0}, {"shard": 1}]
    assert len({r["node_id"] for r in man["ranks"]}) == 2  # one rank on each node
    assert man["hyperparameters"]["grad_accum"] == 2

    one = {**ZERO3, "num_workers": 1}
    path = make_run(_folder(cluster, "one"), tiny_model_dir, one, heldout=False)
    ref = _train_in_cluster(cluster, path)
    assert ref["hyperparameters"]["grad_accum"] == 4 and ref["mesh"] == {"replicate": 1}
    assert ref["hyperparameters"]["global_batch_tokens"] == man["hyperparameters"]["global_batch_tokens"]
    ref_losses = _losses(path.parent / "run")
    assert len(ref_losses) == len(zero3_run["losses"]) == 6
    np.testing.assert_allclose(zero3_run["losses"], ref_losses, atol=1e-4, rtol=0)


JOIN_TIMEOUT_S = 120


START_TIMEOUT_S = "5"  # Ray Train's worker-group start timeout (default 60 s), shortened for the test


def _lines(stream, into: list[str]) -> threading.Thread:
    """Collect a pipe's lines in the background, so the test can wait for one while the run goes on."""

    def pump() -> None:
        for line in stream:
            into.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _wait_for(lines: list[str], text: str, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in x for x in lines):
        assert proc.poll() is None, "".join(lines)[-4000:]
        assert time.monotonic() < deadline, f"{what}: no {text!r} in the driver's output"
        time.sleep(0.2)


@pytest.mark.slow
def test_losing_the_worker_node_resumes_on_a_replacement(cluster, tiny_model_dir: Path, zero3_run) -> None:
    """The worker node's raylet is SIGKILLed (its recorded pid) while both ranks hold at step 3. Ray
    Train charges the lost worker to max_failures (1), then cannot place the group (one node left) and
    retries the start; only after such a retry does the test join a replacement node. The run then
    resumes the step-2 checkpoint and its losses equal the uninterrupted run's. Runs last: it changes
    the cluster."""
    work = _folder(cluster, "node-loss")
    path = make_run(work, tiny_model_dir, ZERO3, heldout=False)
    marker = work / "paused"
    extra = {"pause_at_step": 3, "pause_marker": str(marker)}
    env = {**_env(cluster), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": START_TIMEOUT_S}
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(TRAIN), str(path), json.dumps(extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    out_lines: list[str] = []
    err_lines: list[str] = []
    pumps = [_lines(driver.stdout, out_lines), _lines(driver.stderr, err_lines)]
    join = None
    left: list[psutil.Process] = []
    worker_node = next(n for n in cluster["state"]["nodes"] if not n["head"])
    head = next(n["node_id"] for n in cluster["state"]["nodes"] if n["head"])
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert driver.poll() is None, "".join(err_lines)[-4000:]
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.2)
        raylet = psutil.Process(worker_node["raylet_pid"])
        children = raylet.children(recursive=True)
        raylet.kill()
        t_kill, kill_at = time.monotonic(), datetime.now(UTC)
        _wait_for(err_lines, "Source: worker group", driver, "the lost node's worker")
        _wait_for(err_lines, "Source: controller", driver, "a start without the lost node's resources")
        t_retry = time.monotonic()
        join = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(JOIN_NODE), cluster["state"]["gcs_address"], "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**cluster["env"], "RAY_AUTH_MODE": "token"},
        )  # fmt: skip
        line = join.stdout.readline()
        assert line, join.stderr.read()[-2000:]
        new_node = json.loads(line)["node_id"]
        driver.wait(timeout=600)
        done_s = time.monotonic() - t_kill
        for t in pumps:
            t.join(timeout=30)
        out, err = "".join(out_lines), "".join(err_lines)
        assert driver.returncode == 0, err[-4000:]
        man = _manifest(out)
        # A worker of the killed raylet (asleep in the pause) outlives it, measured here; without its
        # peers it can neither train nor checkpoint. `cluster down` would miss it (reparented, no longer
        # a descendant of anything it recorded), so the test stops it.
        left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        left_names = [" ".join(p.cmdline()).strip()[:40] for p in left]
    finally:
        if driver.poll() is None:
            driver.kill()
        if join is not None:
            tree = [psutil.Process(join.pid), *psutil.Process(join.pid).children(recursive=True)]
            stop_processes(tree, first=tree[:1])
        stop_processes(left)
    first, second = man["attempts"]
    resumed_s = (datetime.fromisoformat(second["started"]) - kill_at).total_seconds()
    print(
        f"node loss: first start retry {t_retry - t_kill:.1f} s after the kill; the restarted group had "
        f"resumed {resumed_s:.1f} s and the run finished {done_s:.1f} s after it; left of the killed "
        f"node: {left_names}"
    )

    assert man["resumed_from_step"] == 2  # the restarted worker group resumed the step-2 checkpoint
    assert first["start_step"] == 0 and sorted(first["node_ids"]) == sorted([head, worker_node["node_id"]])
    assert second["start_step"] == 2 and sorted(second["node_ids"]) == sorted([head, new_node])
    assert {r["node_id"] for r in man["ranks"]} == {head, new_node} and man["steps"] == 6
    rows = metrics(work / "run")
    assert [r["step"] for r in rows] == list(range(1, 7))  # the interrupted attempt's rows not doubled
    assert [r["loss"] for r in rows] == zero3_run["losses"]  # bit-identical to the uninterrupted run
    # the lost node is the one failure max_failures allows; the waits for resources are not charged to it
    assert re.findall(r"Error count: (\d+) \(max allowed: 1\)", err) == ["1"]
    assert re.findall(r"Error count: \d+ \(max allowed: inf\)", err)  # the start retries: unlimited
