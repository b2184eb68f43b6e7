"""Where stage work runs (pipeline/placement.py): worker-placed stages run their body in one Ray task
sized for it, errors come back as themselves, a retried attempt starts clean, and the runner's
shared-storage check fires on a multi-node cluster for a path one node cannot see.

Real parts only: the session's local Ray (conftest), the real tokenizer and eval stages on a tiny model,
tiny stage rows from tests/placement_fixtures.py, and for the multi-node test a real `dapt cluster up`
cluster whose clients run in subprocesses (tests/cluster_fixtures.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import placement_fixtures as pf
import psutil
import pytest
import yaml
from cluster_fixtures import JOIN_NODE, dapt_cli, local_cluster, run_py
from test_tokenizer_helpers import make_clean_stage

from dapt.pipeline import stages
from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError, InputError

TESTS = Path(__file__).resolve().parent
pf.register_by_value()


def _write_stage(run_dir: Path, name: str, fields: dict) -> None:
    """A finished upstream stage folder as the runner leaves it (manifest, then ``_DONE``)."""
    d = run_dir / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"stage": name, "fingerprint": f"fp-{name}", **fields}))
    (d / "_DONE").write_text(f"fp-{name}\n")


@pytest.fixture(scope="module")
def staged(ray_local, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run whose real split, tokenizer (base mode, the tiny local Llama) and eval stages ran through
    the runner with the default placement; mix and train are finished folders written here (train's
    model is the tiny Llama itself, so eval compares it with itself)."""
    root = tmp_path_factory.mktemp("placement")
    run_dir = root / "run"
    make_clean_stage(run_dir)
    config = {
        "name": "placement",
        "run_dir": str(run_dir),
        "sources": [
            {"name": "fin", "kind": "domain", "paths": [str(root / "fin.jsonl")]},
            {"name": "gen", "kind": "general", "paths": [str(root / "gen.jsonl")]},
        ],
        "model": {"name_or_path": str(tiny_model_dir)},
        "tokenizer": {"mode": "base", "heldout_fraction": 0.25},
        "eval": {
            "task_dirs": [],
            "precisions": ["fp32", "bf16"],
            "bootstrap_iters": 100,
            "max_docs_per_source": 4,
        },
    }
    cfg_path = root / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    cfg = load_config(cfg_path)
    said: list[str] = []
    out = {"cfg_path": cfg_path, "run_dir": run_dir, "said": said}
    out["split"] = stages.run_stage(cfg, "split", echo=said.append)
    out["tokenizer"] = stages.run_stage(cfg, "tokenizer", echo=said.append)
    _write_stage(run_dir, "mix", {"outputs": {}, "seq_len": 64})
    _write_stage(run_dir, "train", {"outputs": {"model": str(tiny_model_dir)}})
    out["eval"] = stages.run_stage(cfg, "eval", echo=said.append)
    return out


@pytest.mark.parametrize("name", ["tokenizer", "eval"])
def test_worker_stages_run_in_a_ray_task(staged: dict, name: str) -> None:
    p = staged[name]["placement"]
    assert p["where"] == "ray_task" and p["pid"] != os.getpid() and p["driver_pid"] == os.getpid()
    assert len(p["node_id"]) == 56 and p["node_ip"] == "127.0.0.1"
    asked, assigned = p["resources"]["asked"], p["resources"]["assigned"]
    assert asked["num_gpus"] == 0 and assigned["CPU"] == asked["num_cpus"] == 2  # the whole (only) node
    assert 0 < p["body_seconds"] <= staged[name]["seconds"]
    log = (staged["run_dir"] / name / "log.txt").read_text()  # the task appended to the driver's log
    assert "submitting the stage body as a Ray task" in log and f"pid {p['pid']}, driver pid" in log
    # The driver stage before them says so too; a single-node run makes no shared-storage check.
    assert staged["split"]["placement"] == {"where": "driver", "pid": os.getpid(), "host": p["host"]}
    assert not any("shared storage" in line for line in staged["said"])


def test_eval_asks_for_what_its_models_need(staged: dict, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    asked = staged["eval"]["placement"]["resources"]["asked"]
    assert asked["reason"] == "eval.device: auto"  # no GPU on this cluster: CPU eval on a whole node
    params = AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    assert asked["memory"] == 12 * params + (1 << 30)  # fp32 model + a variant's copy + a compare copy
    results = json.loads((staged["run_dir"] / "eval" / "results.json").read_text())
    assert [q["precision"] for q in results["quantization"]] == ["fp32", "bf16"]  # in the same task


def test_driver_knob_runs_the_bodies_in_the_driver(staged: dict) -> None:
    cfg = load_config(staged["cfg_path"], ["ray.stage_placement=driver"])
    for name in ("tokenizer", "eval"):
        m = stages.run_stage(cfg, name, force=True, echo=None)
        assert m["placement"]["where"] == "driver" and m["placement"]["pid"] == os.getpid()
        assert m["fingerprint"] == staged[name]["fingerprint"]  # where it runs is not fingerprinted
        assert (staged["run_dir"] / name / "_DONE").read_text().strip() == m["fingerprint"]


def test_an_infeasible_gpu_request_on_local_ray_is_one_config_line(staged: dict) -> None:
    cfg = load_config(staged["cfg_path"], ["eval.device=cuda"])
    before = (staged["run_dir"] / "eval" / "manifest.json").read_text()
    with pytest.raises(ConfigError) as e:
        stages.run_stage(cfg, "eval", echo=None)
    assert str(e.value).startswith(f"{staged['cfg_path']}: eval.device: cuda: stage 'eval' needs a Ray node ")
    assert "\n" not in str(e.value) and "0 GPU(s)" in str(e.value)
    assert (staged["run_dir"] / "eval" / "manifest.json").read_text() == before  # the good output stays


def test_an_error_raised_in_the_task_reaches_the_cli_as_one_line(staged: dict) -> None:
    """The real eval raises ConfigError for an unknown task inside its Ray task; the CLI (its own local
    Ray) prints that one line and exits 2."""
    proc = dapt_cli(
        "eval", "--config", str(staged["cfg_path"]), "--force", "eval.tasks=[no_such_task_xyz]",
        env={**os.environ}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("dapt: error:")]
    assert len(errors) == 1 and "no_such_task_xyz" in errors[0] and "RayTaskError" not in proc.stderr
    assert (staged["run_dir"] / "eval" / "_DONE").exists()  # the finished output is untouched


@pytest.fixture
def probe_cfg(tmp_path: Path):
    (tmp_path / "fin.jsonl").write_text('{"text": "a"}\n')
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        f"name: probe\nrun_dir: {tmp_path / 'run'}\nmodel: {{from_config: {{}}}}\n"
        f"sources:\n  - {{name: fin, kind: domain, paths: ['{tmp_path / 'fin.jsonl'}']}}\n"
    )
    return cfg_path


def test_the_task_gets_the_drivers_environment_and_working_folder(
    ray_local, probe_cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(stages.STAGES, "probe", pf.probe_row())
    monkeypatch.setenv("DAPT_TEST_ENV", "from-the-driver")
    monkeypatch.chdir(probe_cfg.parent)
    m = stages.run_stage(load_config(probe_cfg), "probe", echo=None)
    ran = m["ran"]
    assert ran["pid"] == m["placement"]["pid"] != os.getpid()
    assert ran["env"] == {"DAPT_TEST_ENV": "from-the-driver", "HF_HUB_OFFLINE": "1"}
    assert ran["cwd"] == str(probe_cfg.parent) and ran["sources"] == ["fin"]
    assert ran["run_dir"] == str(probe_cfg.parent / "run")  # absolute in the payload
    assert (probe_cfg.parent / "run" / "probe" / "where.txt").read_text() == f"{ran['pid']}\n"
    # The same environment again: Ray gives the task the same worker process (imports already paid).
    again = stages.run_stage(load_config(probe_cfg), "probe", force=True, echo=None)
    assert again["ran"]["pid"] == ran["pid"]


@pytest.mark.parametrize(
    ("fn", "cls", "message"),
    [
        (pf.config_error, ConfigError, "run.yaml: probe.key: a bad value, found inside the task"),
        (pf.input_error, InputError, "fin.jsonl:3: no field 'text', found inside the task"),
    ],
)
def test_a_dapt_error_in_the_task_arrives_as_itself(ray_local, probe_cfg, monkeypatch, fn, cls, message):
    monkeypatch.setitem(stages.STAGES, "probe", pf.probe_row(fn))
    with pytest.raises(cls) as e:
        stages.run_stage(load_config(probe_cfg), "probe", echo=None)
    assert type(e.value) is cls and str(e.value) == message
    run = probe_cfg.parent / "run"
    assert not (run / "probe").exists() and not list(run.glob("**/_DONE"))  # nothing published
    assert message in (run / "logs" / "probe.log").read_text()  # logged once, by the task


def test_a_retried_attempt_starts_from_an_empty_output_folder(ray_local, probe_cfg, monkeypatch) -> None:
    marker = probe_cfg.parent / "crashed-once"
    monkeypatch.setenv("DAPT_TEST_CRASH_MARKER", str(marker))
    monkeypatch.setitem(stages.STAGES, "probe", pf.probe_row(pf.crash_once))
    m = stages.run_stage(load_config(probe_cfg), "probe", echo=None)
    retry = m["retry"]
    assert retry["first_pid"] != retry["pid"]  # the first worker died: a system failure, retried
    assert retry["found_at_start"] == []  # its half-written file was gone before the retry began
    out = probe_cfg.parent / "run" / "probe"
    assert sorted(p.name for p in out.iterdir()) == ["_DONE", "full.txt", "log.txt", "manifest.json"]
    assert "removed 1 entr(y/ies) an earlier attempt left" in (out / "log.txt").read_text()


# ------------------------------------------------------------------------------------ two-node cluster
PROBE = """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import placement_fixtures as pf
    pf.register_by_value()
    from dapt.pipeline import stages
    from dapt.pipeline.config import load_config
    from dapt.pipeline.ray_runtime import init_ray
    import ray
    cfg = load_config(sys.argv[2], [f"ray.address={sys.argv[3]}"])
    init_ray(cfg.ray)
    while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
        time.sleep(0.5)
    stages.STAGES["probe"] = pf.probe_row()
    said = []
    m = stages.run_stage(cfg, "probe", echo=said.append)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"placement": m["placement"], "said": said, "nodes": nodes}))
"""


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def _config(path: Path, run_dir: Path, source: Path) -> Path:
    path.write_text(
        f"name: probe\nrun_dir: {run_dir}\nmodel: {{from_config: {{}}}}\n"
        f"sources:\n  - {{name: fin, kind: domain, paths: ['{source}']}}\n"
    )
    return path


@pytest.mark.slow
def test_runner_checks_shared_storage_on_a_two_node_cluster() -> None:
    """On a real 2-node loopback cluster: a worker stage passes the check (run_dir and its source file
    probed on both nodes) and runs in a task there. Then a third node joins with its own view of one
    folder (a user + mount namespace with an empty tmpfs over it, as in test_cluster.py): `dapt clean`
    with run_dir in that folder fails in seconds, one line naming the folder and exactly that node."""
    with local_cluster(nodes=2, cpus_per_node=1) as c:
        env, gcs, d = {**c["env"], "RAY_AUTH_MODE": "token"}, c["state"]["gcs_address"], c["dir"]
        shared, hidden = d / "shared", d / "node-local"
        shared.mkdir()
        hidden.mkdir()
        (shared / "fin.jsonl").write_text('{"text": "every node sees this file"}\n')
        ok_cfg = _config(d / "ok.yaml", shared / "run", shared / "fin.jsonl")
        r = run_py(PROBE, env, str(TESTS), str(ok_cfg), gcs)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert "probe: shared storage checked: 2 path(s) visible on every Ray node" in out["said"]
        assert out["placement"]["where"] == "ray_task" and out["placement"]["node_id"] in out["nodes"]
        assert len(out["nodes"]) == 2

        if not _can_unshare():
            pytest.skip("needs user + mount namespaces (`unshare -rm`) to give one node its own filesystem")
        join_py = d / "join_node.py"
        join_py.write_text(textwrap.dedent(JOIN_NODE))
        join = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
             "sh", "-c", f"mount -t tmpfs tmpfs {hidden} && exec {sys.executable} {join_py} {gcs}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            line = join.stdout.readline()
            assert line, join.stderr.read()[-2000:]
            blind = json.loads(line)["node_id"]
            bad_cfg = _config(d / "bad.yaml", hidden / "run", shared / "fin.jsonl")
            proc = dapt_cli("clean", "--config", str(bad_cfg), f"ray.address={gcs}", env=env, timeout=300)
            assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("dapt: error:")]
            assert len(errors) == 1, proc.stderr[-2000:]
            assert errors[0].startswith(f"dapt: error: {hidden / 'run'} is not visible on Ray node {blind} ")
            assert sorted(p.name for p in (hidden / "run").iterdir()) == []  # nothing written, probe removed
        finally:
            tree = [psutil.Process(join.pid), *psutil.Process(join.pid).children(recursive=True)]
            from dapt.pipeline.cluster import stop_processes

            stop_processes(tree, first=tree[:1])
