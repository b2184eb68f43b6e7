"""`dapt cluster up --nodes 2` / `down` through the real CLI: a real 2-node Ray cluster on 127.0.0.1.

One cluster serves the module (starting one costs ~20 s on 2 cores). It runs with its own token file
(``RAY_AUTH_TOKEN_PATH``), so the tests also show that a client holding another token (e.g. the user's
``~/.ray/auth_token``) is refused. Every Ray client here runs in a subprocess: this pytest process may
hold the session's private Ray (conftest) and must not join a second cluster.

The token, the state file and the tests' data live in the cluster's own folder (tests/cluster_fixtures.py
says why not under ``tmp_path``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from cluster_fixtures import JOIN_NODE, ROOT, client_env, dapt_cli, local_cluster, run_py

from dapt.pipeline.cluster import process_tree, stop_processes

LOOPBACK_IPS = ("127.0.0.1", "::ffff:127.0.0.1")


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(nodes=2, cpus_per_node=1) as c:
        yield c


@pytest.fixture
def work(cluster, request) -> Path:
    """A fresh folder for one test, inside the cluster's own folder (see tests/cluster_fixtures.py)."""
    path = cluster["dir"] / request.node.name
    path.mkdir()
    return path


NODES = """
    import json, sys, ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    print(json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"]} for n in ray.nodes() if n["Alive"]]))
"""


def test_up_starts_two_nodes_on_loopback(cluster) -> None:
    out, state = cluster["up"].stdout, cluster["state"]
    assert f"dashboard and job server: {cluster['dashboard']}" in out
    assert "token auth on" in out and "RAY_AUTH_MODE=token" in out
    assert [n["head"] for n in state["nodes"]] == [True, False]

    r = run_py(NODES, {**cluster["env"], "RAY_AUTH_MODE": "token"}, state["gcs_address"])
    assert r.returncode == 0, r.stderr[-2000:]
    alive = json.loads(r.stdout.strip().splitlines()[-1])
    assert len({n["id"] for n in alive}) == 2
    assert {n["id"] for n in alive} == {n["node_id"] for n in state["nodes"]}
    assert all(n["ip"] == "127.0.0.1" for n in alive)


def test_every_listening_socket_is_on_loopback(cluster) -> None:
    procs = process_tree(cluster["state"])
    pids = {p.pid for p in procs}
    assert {n["raylet_pid"] for n in cluster["state"]["nodes"]} <= pids
    listening = [
        (c.laddr.ip, c.laddr.port, c.pid)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    ports = {port for _, port, _ in listening}
    assert cluster["port"] in ports and int(cluster["dashboard"].rsplit(":", 1)[1]) in ports
    assert all(ip in LOOPBACK_IPS for ip, _, _ in listening), listening


def _http(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


GCS_KV = """
    import sys
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError
    try:
        GcsClient(address=sys.argv[1]).internal_kv_keys(b"", namespace=None, timeout=20)
        print("ACCEPTED")
    except AuthenticationError as e:
        print("REFUSED", e)
"""


def test_token_auth_is_enforced(cluster) -> None:
    dash, token, gcs = cluster["dashboard"], cluster["token"], cluster["state"]["gcs_address"]
    with urllib.request.urlopen(f"{dash}/api/authentication_mode", timeout=30) as r:
        assert json.loads(r.read()) == {"authentication_mode": "token"}
    # The job server: no token, a wrong token, the right one.
    assert _http(f"{dash}/api/jobs/", None) == 401
    assert _http(f"{dash}/api/jobs/", "0" * 64) == 403
    assert _http(f"{dash}/api/jobs/", token) == 200

    # The GCS (what ray.init talks to): refused without the token or with another one, accepted with it.
    env = cluster["env"]
    other = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64}
    for bad_env in ({**env, "RAY_AUTH_MODE": "disabled"}, other):
        r = run_py(GCS_KV, bad_env, gcs)
        assert r.stdout.startswith("REFUSED"), r.stdout + r.stderr[-2000:]
    r = run_py(GCS_KV, {**env, "RAY_AUTH_MODE": "token"}, gcs)
    assert r.stdout.startswith("ACCEPTED"), r.stdout + r.stderr[-2000:]

    # The README's warning: `ray job ...` without RAY_AUTH_MODE=token fails even with the token at hand.
    ray_cli = str(Path(sys.executable).parent / "ray")
    bare = subprocess.run(
        [ray_cli, "job", "list", "--address", dash], capture_output=True, text=True, env=env
    )
    assert bare.returncode != 0 and "Missing authentication token" in bare.stdout + bare.stderr
    ok = subprocess.run(
        [ray_cli, "job", "list", "--address", dash], capture_output=True, text=True,
        env={**env, "RAY_AUTH_MODE": "token"},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_second_up_on_the_same_state_is_refused(cluster) -> None:
    again = dapt_cli("cluster", "up", "--state", str(cluster["state_path"]), env=cluster["env"])
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"dapt: error: a cluster is already up ({cluster['state_path']}): "
        f"`dapt cluster down --state {cluster['state_path']}`"
    ]


def _quiet(log: str) -> str:
    """A job's output without the runtime-env upload chatter."""
    return "\n".join(line for line in log.splitlines() if "packaging.py" not in line)[-4000:]


CFG = """\
name: sub
run_dir: {run_dir}
sources:
  - {{name: fin, kind: domain, paths: ["{data}/domain.jsonl"]}}
model: {{from_config: {{}}}}
"""


@pytest.mark.slow
def test_submit_a_stage_to_the_two_node_cluster(cluster, work: Path) -> None:
    """The source path is relative, as in configs/tiny.yaml: it resolves inside the job's copy of the
    project on every node. With one runtime-env folder shared by the nodes of one machine, the second
    node deleted and re-extracted that copy under the running driver and this failed about every other
    time ("no file matches"); `cluster up` gives each node its own folder."""
    cfg = work / "run.yaml"
    cfg.write_text(CFG.format(run_dir=work / "run", data="corpora/tiny"))
    # No RAY_AUTH_MODE in the client's environment: `dapt submit` turns token mode on itself.
    args = ("submit", "--address", cluster["dashboard"], "--config", str(cfg), "clean")
    ok = subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
        env=cluster["env"], timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, _quiet(ok.stdout + ok.stderr)
    assert "SUCCEEDED" in ok.stdout
    assert (work / "run" / "clean" / "_DONE").exists()
    session = Path(cluster["state"]["temp_dir"]) / "session_latest"
    assert (session / "runtime_resources_node1").is_dir()  # the worker node's own runtime-env folder


@pytest.mark.slow
def test_submit_the_tiny_run_to_two_nodes(cluster, work: Path) -> None:
    """The whole pipeline of configs/tiny.yaml submitted to the 2-node cluster (1 CPU each), with HSDP:
    the train ranks sit on the two nodes, and the tokenizer's and eval's bodies ran in Ray tasks on the
    cluster, not in the job's driver."""
    run = work / "run"
    args = ("submit", "--address", cluster["dashboard"], "--config", "configs/tiny.yaml", "run",
            f"run_dir={run}", "train.sharding=hybrid")  # fmt: skip
    r = dapt_cli(*args, env=cluster["env"], cwd=ROOT, timeout=600)
    assert r.returncode == 0, _quiet(r.stdout + r.stderr)
    nodes = {n["node_id"] for n in cluster["state"]["nodes"]}
    train = json.loads((run / "train" / "manifest.json").read_text())
    assert train["mesh"] == {"replicate": 2, "shard": 1}
    assert {x["node_id"] for x in train["ranks"]} == nodes  # one rank on each node
    assert [x["mesh"] for x in train["ranks"]] == [{"replicate": 0, "shard": 0}, {"replicate": 1, "shard": 0}]
    for stage in ("tokenizer", "eval"):
        where = json.loads((run / stage / "manifest.json").read_text())["placement"]
        assert where["where"] == "ray_task" and where["node_id"] in nodes, where
        assert where["pid"] != where["driver_pid"], where
    assert json.loads((run / "clean" / "manifest.json").read_text())["placement"]["where"] == "driver"
    assert (run / "publish" / "_DONE").exists()


# A third node whose processes live in their own mount namespace, with an empty tmpfs over one folder:
# the nearest thing on one machine to a node with its own local disk.
JOIN = JOIN_NODE

CHECK = """
    import json, sys, time, ray
    from dapt.pipeline.cluster import check_shared_paths
    from dapt.pipeline.errors import ConfigError
    ray.init(address=sys.argv[1], log_to_driver=False)
    deadline = time.time() + 120
    while len([n for n in ray.nodes() if n["Alive"]]) < 3 and time.time() < deadline:
        time.sleep(1)
    out = {}
    for name, paths in json.loads(sys.argv[2]).items():
        try:
            check_shared_paths(paths)
            out[name] = "ok"
        except ConfigError as e:
            out[name] = str(e)
    print(json.dumps(out))
"""


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def test_shared_path_check_names_the_node_that_cannot_see_it(cluster, work: Path) -> None:
    tmp_path = work
    if not _can_unshare():
        pytest.skip("needs user + mount namespaces (`unshare -rm`) to give one node its own filesystem")
    shared, local = tmp_path / "shared", tmp_path / "node-local"
    shared.mkdir()
    local.mkdir()
    (local / "source.jsonl").write_text('{"text": "only the driver sees this file"}\n')
    (shared / "source.jsonl").write_text('{"text": "every node sees this file"}\n')
    join_py = tmp_path / "join_node.py"
    join_py.write_text(textwrap.dedent(JOIN))
    gcs = cluster["state"]["gcs_address"]
    join = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
         "sh", "-c", f"mount -t tmpfs tmpfs {local} && exec {sys.executable} {join_py} {gcs}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**cluster["env"], "RAY_AUTH_MODE": "token"},
    )  # fmt: skip
    try:
        line = join.stdout.readline()
        assert line, join.stderr.read()[-2000:]
        hidden_node = json.loads(line)["node_id"]
        cases = {
            "shared": [str(shared), str(shared / "source.jsonl"), "s3://bucket/skipped.jsonl"],
            "run_dir": [str(local)],
            "source": [str(local / "source.jsonl")],
        }
        r = run_py(CHECK, {**cluster["env"], "RAY_AUTH_MODE": "token"}, gcs, json.dumps(cases))
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["shared"] == "ok"
        for name, path in (("run_dir", local), ("source", local / "source.jsonl")):
            assert out[name].startswith(f"{path} is not visible on Ray node {hidden_node} (127.0.0.1): "), (
                out[name]
            )
            assert "more such" not in out[name]  # the head and the other worker node see it
        assert not list(local.glob(".dapt-shared-probe-*"))  # probes removed again
    finally:
        tree = [psutil.Process(join.pid), *psutil.Process(join.pid).children(recursive=True)]
        stop_processes(tree, first=tree[:1])


def test_down_stops_exactly_what_up_started(cluster) -> None:
    state = cluster["state"]
    # A process that *looks* like this cluster's (its command line names the cluster's temp dir): a
    # pattern-matching `down` would kill it; one that stops recorded pids leaves it alone.
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", state["temp_dir"]])
    try:
        before = process_tree(state)
        recorded = {p["pid"] for p in state["processes"]}
        assert recorded <= {p.pid for p in before}
        down = dapt_cli("cluster", "down", "--state", str(cluster["state_path"]), env=cluster["env"])
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"stopped {len(before)} Ray process(es)" in down.stdout
        time.sleep(0.5)
        alive = [p.pid for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive
        assert decoy.poll() is None, "down killed a process it did not start"
        assert not cluster["state_path"].exists()
    finally:
        decoy.kill()
        decoy.wait()

    again = dapt_cli("cluster", "down", "--state", str(cluster["state_path"]), env=cluster["env"])
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "no cluster recorded" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "--nodes must be at least 1 (got 0)"),
        (["--cpus-per-node", "0"], "--cpus-per-node must be at least 1 (got 0)"),
        (["--port", "8265"], "--port and --dashboard-port must differ (both 8265)"),
    ],
)
def test_bad_cluster_arguments_fail_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    r = dapt_cli("cluster", "up", *args, "--state", str(tmp_path / "s.json"), env=client_env(), timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"dapt: error: {message}"]
    assert not (tmp_path / "s.json").exists()


def test_ray_up_config_passes_rays_own_validation() -> None:
    """What `ray up` runs before it starts anything: fill in the provider's defaults, check the schema."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "configs/cluster/ray-up-aws.yaml").read_text())
    validate_config(prepare_config(raw))
    starts = [
        c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "--dashboard-host=127.0.0.1" in raw["head_start_ray_commands"][-1]
    assert raw["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_kuberay_manifest_keeps_token_auth_and_shared_run_dir() -> None:
    import ray
    import yaml

    job = yaml.safe_load((ROOT / "configs/cluster/kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"} and spec["rayVersion"] == ray.__version__
    entry = job["spec"]["entrypoint"].split()
    assert (
        entry[:2] == ["dapt", "run"]
        and (ROOT / entry[entry.index("--config") + 1].removeprefix("/app/")).is_file()
    )
    run_dir = next(a.split("=", 1)[1] for a in entry if a.startswith("run_dir="))
    pods = [
        spec["headGroupSpec"]["template"]["spec"],
        *(g["template"]["spec"] for g in spec["workerGroupSpecs"]),
    ]
    for pod in pods:
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert any(run_dir.startswith(m + "/") for m in mounts), (run_dir, mounts)
        assert all("persistentVolumeClaim" in v for v in pod["volumes"])
