"""Benchmark (issue 20): does `dapt clean` + `dapt mix` scale with input size and CPUs?

    .venv/bin/python bench/scale.py                          # 0.5, 1 and 2 GB at 2 CPUs (hours)
    .venv/bin/python bench/scale.py --sizes 25mb,50mb        # quick check
    .venv/bin/python bench/scale.py --sizes 25mb --cpus 1,2  # the 1 -> 2 CPU speed-up

Corpus (cached by size under ``bench/out/scale-<size>/``, reused when present): built by
``bench/clean_corpus.build`` (planted exact / near / "hard" duplicates with exact ground truth; see that
file). Its paragraphs are the Debian demo text when installed (``dict-gcide``, ``dict-wn``,
``fortunes``); otherwise they fall back to the template paragraphs of ``corpora/synthetic.py`` (domain
and general templates, as many documents as the size needs), and the output says so. The part files
are then split in two: the first half is the ``domain`` source, the second half the ``general``
source (planted copies cross the split, so global dedup sees both).

Config: ``configs/tiny.yaml`` with its sources replaced by those two, no ``date_field``, clean's
shuffle partitions and buckets at their default ``auto`` (sized by the data; ``--fixed-shuffles`` keeps
tiny.yaml's 2 and 8, as the runs before 2026-12-06 evening had),
``run_dir`` under ``bench/out/scale-runs/`` (deleted before each run: every run is cold) and
``ray.num_cpus=C`` on the command line. Stages ``clean``, ``split``, ``tokenizer`` and ``mix`` run
as ``dapt`` subprocesses; only clean and mix are timed and sampled. Each subprocess is pinned to the
first C cores (``--no-pin`` to turn off): ``ray.num_cpus`` limits Ray's scheduling, not the threads a
library starts, and before pipeline/threads.py the tokenizer's pool made a "1 CPU" mix use both cores.

Sampling: every ``--interval`` s (0.2) the whole process tree of the ``dapt`` subprocess is read with
psutil. The ``dapt`` process is the driver; a process whose title starts with ``ray::`` or ``dapt:``
(a named dapt task), or that runs ``default_worker.py``, is a Ray worker; every other descendant (raylet, gcs_server, dashboard, agents,
log monitor) is a Ray system process, reported separately. Per class: peak RSS of one process (driver,
largest worker, largest system process) and peak sum over the class; RSS counts the object-store
pages a process has touched (shared memory), so ``anon`` (RSS minus file/shmem pages) is reported too.

Writes ``bench/results/scale.json`` and prints a table plus the issue's goal ratios: driver peak RSS
largest / smallest size (goal <= 1.2), MB/s per core largest / smallest size (goal ~1), and the
1 -> 2 CPU speed-up (goal >= 1.7).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running bench/scale.py puts bench/ first on sys.path (bench/tokenize*.py could shadow the standard
# library): drop that entry, add the repo root (as bench/clean.py does).
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402
import yaml  # noqa: E402

from bench.scale_corpus import build_corpus, parse_size, size_label  # noqa: E402

DAPT = ROOT / ".venv/bin/dapt"
TIMED = ("clean", "mix")
STAGES = ("clean", "split", "tokenizer", "mix")


# --------------------------------------------------------------------------------------------- config


def write_config(path: Path, run_dir: Path, corpus: dict, fixed_shuffles: bool = False) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    steps = cfg["sources"][0]["steps"]
    base = {"id_field": "id", "license": "see bench/clean_corpus.py", "steps": steps}
    cfg["name"] = "bench-scale"
    cfg["run_dir"] = str(run_dir)
    cfg["sources"] = [
        {"name": "domain", "kind": "domain", "paths": corpus["domain"], **base},
        {"name": "general", "kind": "general", "paths": corpus["general"], **base},
    ]
    cfg["eval"]["task_dirs"] = [str(ROOT / d) for d in cfg["eval"]["task_dirs"]]
    if not fixed_shuffles:  # tiny.yaml fixes 2 partitions and 8 buckets for tests: per-partition memory
        cfg["clean"].pop("shuffle_partitions", None)  # would grow with the corpus; the defaults are auto
        cfg["clean"].pop("buckets", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------- sampling


# Processes whose title starts with ray:: but that are Ray's own machinery, not stage work: the node's
# agents and Ray Data's bookkeeping actors. They count as "system".
# Prefixes, since a title read from /proc/<pid>/comm is cut at 15 characters.
_RAY_SYSTEM_TITLES = ("ray::Dashboard", "ray::RuntimeEnv", "ray::_Stats", "ray::_Autoscal", "ray::Autoscal")


def classify(proc: psutil.Process, root_pid: int) -> tuple[str, str]:
    """(kind, label): kind is driver, worker, system or gone; label is the title or script name."""
    if proc.pid == root_pid:
        return "driver", "dapt"
    try:
        name = proc.name()
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone", ""
    head = cmd[0] if cmd else name
    if head.startswith("dapt:") or name.startswith("dapt:"):  # a named dapt task (e.g. dapt:mix-index)
        return "worker", (head if head.startswith("dapt:") else name).split()[0][:48]
    if head.startswith("ray::"):
        label = head.split()[0][:48]
        return ("system" if label.startswith(_RAY_SYSTEM_TITLES) else "worker"), label
    scripts = [Path(c).name for c in cmd[1:3] if c.endswith(".py")]
    if scripts == ["default_worker.py"]:  # a worker before it sets its title
        return "worker", "default_worker.py"
    return "system", scripts[0] if scripts else name


class TreeSampler(threading.Thread):
    """Samples RSS (and anon RSS) of a process tree every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop_event = threading.Event()
        self.samples = 0
        self.peak: dict[str, float] = {}
        self.names: dict[str, set[str]] = {"worker": set(), "system": set()}
        self.max_workers = 0
        self.peak_label: dict[str, str] = {}
        self.anon_by_title: dict[str, float] = {}

    def _bump(self, key: str, value: float) -> None:
        if value > self.peak.get(key, 0):
            self.peak[key] = value

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop_event.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            sums: dict[str, float] = {}
            workers = 0
            for p in procs:
                kind, label = classify(p, self.pid)  # every sample: an IDLE worker becomes an actor
                if kind == "gone":
                    continue
                try:
                    mi = p.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if kind != "driver":
                    self.names[kind].add(label)
                rss, anon = mi.rss / 1e9, (mi.rss - mi.shared) / 1e9
                workers += kind == "worker"
                if kind == "worker" and anon > self.anon_by_title.get(label, 0):
                    self.anon_by_title[label] = anon  # which kind of task grows, not only the largest
                if rss > self.peak.get(f"{kind}_rss_gb", 0):
                    self.peak_label[kind] = label
                self._bump(f"{kind}_rss_gb", rss)
                self._bump(f"{kind}_anon_gb", anon)
                sums[kind] = sums.get(kind, 0) + rss
                sums["tree"] = sums.get("tree", 0) + rss
            for k, v in sums.items():
                self._bump(f"{k}_sum_rss_gb", v)
            self.max_workers = max(self.max_workers, workers)
            self.samples += 1
            self.stop_event.wait(self.interval)

    def result(self) -> dict:
        keys = ("driver_rss_gb", "driver_anon_gb", "worker_rss_gb", "worker_anon_gb", "worker_sum_rss_gb")
        keys += ("system_rss_gb", "system_sum_rss_gb", "tree_sum_rss_gb")
        out = {k: round(self.peak.get(k, 0.0), 3) for k in keys}
        out["largest_worker"] = self.peak_label.get("worker", "")
        out["largest_system"] = self.peak_label.get("system", "")
        out["max_workers"] = self.max_workers
        out["samples"] = self.samples
        out["system_processes"] = sorted(self.names["system"])
        out["worker_titles"] = sorted(self.names["worker"])
        top = sorted(self.anon_by_title.items(), key=lambda kv: -kv[1])[:8]
        out["worker_anon_gb_by_title"] = {k: round(v, 3) for k, v in top}
        return out


def pinned_cores(cpus: int) -> list[int]:
    """The first ``cpus`` cores this process may run on: the whole ``dapt`` process tree (driver, Ray's
    own processes, workers) is pinned to them, so "1 CPU" means one core, not one Ray CPU beside
    libraries that thread over every core (see pipeline/threads.py)."""
    cores = sorted(os.sched_getaffinity(0))
    if cpus > len(cores):
        raise SystemExit(f"--cpus {cpus}: this process may use {len(cores)} cores")
    return cores[:cpus]


def run_stage(
    stage: str, cfg: Path, cpus: int, log: Path, sample: bool, interval: float, pin: bool = True
) -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a private local Ray per command, as in bench/clean.py
    cmd = [str(DAPT), stage, "--config", str(cfg), f"ray.num_cpus={cpus}"]
    cores = pinned_cores(cpus) if pin else None
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        sampler = TreeSampler(proc.pid, interval) if sample else None
        if sampler:
            sampler.start()
        rc = proc.wait()
    secs = time.perf_counter() - t0
    if sampler:
        sampler.stop_event.set()
        sampler.join()
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); log {log}:\n{tail}")
    res = {
        "command": " ".join(cmd[1:]),
        "pinned_cores": cores,
        "seconds": round(secs, 2),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if sampler:
        res["memory"] = sampler.result()
    return res


def stage_facts(run_dir: Path, stage: str) -> dict:
    try:
        m = json.loads((run_dir / stage / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("timings_s", "timings", "totals", "counts", "n_blocks", "total_tokens", "dedup")
    return {k: m[k] for k in keys if k in m}


def run_one(
    corpus: dict, cpus: int, out_root: Path, interval: float, pin: bool = True, fixed_shuffles: bool = False
) -> dict:
    label = size_label(corpus["size_mb"])
    work = out_root / "scale-runs" / f"{label}-c{cpus}"
    if work.exists():
        shutil.rmtree(work)
    run_dir = work / "run"
    cfg = write_config(work / "scale.yaml", run_dir, corpus, fixed_shuffles)
    mb = corpus["bytes"] / 1e6
    row: dict = {"size": label, "input_mb": round(mb, 2), "cpus": cpus, "config": str(cfg), "stages": {}}
    for stage in STAGES:
        timed = stage in TIMED
        print(f"[{label} c{cpus}] dapt {stage} ...", flush=True)
        r = run_stage(stage, cfg, cpus, work / f"{stage}.log", timed, interval, pin)
        if timed:
            r["mb_per_s"] = round(mb / r["seconds"], 3)
            r["mb_per_s_per_cpu"] = round(mb / r["seconds"] / cpus, 3)
            r["manifest"] = stage_facts(run_dir, stage)
        row["stages"][stage] = r
        print(f"[{label} c{cpus}] dapt {stage}: {r['seconds']:.1f}s", flush=True)
    return row


# --------------------------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def goals(rows: list[dict]) -> dict:
    out: dict = {}
    for stage in TIMED:
        g: dict = {}
        by_cpu: dict[int, list[dict]] = {}
        for r in rows:
            by_cpu.setdefault(r["cpus"], []).append(r)
        for cpus, rs in sorted(by_cpu.items()):
            rs = sorted(rs, key=lambda r: r["input_mb"])
            if len(rs) < 2:
                continue
            lo, hi = rs[0]["stages"][stage], rs[-1]["stages"][stage]
            g[f"c{cpus}_{rs[0]['size']}_to_{rs[-1]['size']}"] = {
                "driver_rss_ratio": _ratio(hi["memory"]["driver_rss_gb"], lo["memory"]["driver_rss_gb"]),
                "worker_rss_ratio": _ratio(hi["memory"]["worker_rss_gb"], lo["memory"]["worker_rss_gb"]),
                "mb_per_s_per_cpu_ratio": _ratio(hi["mb_per_s_per_cpu"], lo["mb_per_s_per_cpu"]),
            }
        by_size: dict[str, dict[int, dict]] = {}
        for r in rows:
            by_size.setdefault(r["size"], {})[r["cpus"]] = r
        for size, rc in by_size.items():
            if 1 in rc and 2 in rc:
                g[f"speedup_1_to_2_cpus_{size}"] = _ratio(
                    rc[1]["stages"][stage]["seconds"], rc[2]["stages"][stage]["seconds"]
                )
        out[stage] = g
    return out


def print_table(rows: list[dict]) -> None:
    hdr = (
        f"{'size':>7s} {'MB':>7s} {'cpus':>4s} {'stage':>5s} {'wall s':>7s} {'MB/s':>6s} {'MB/s/c':>6s} "
        f"{'driver':>7s} {'worker':>7s} {'w.anon':>7s} {'w.sum':>7s} {'sys.max':>7s} {'sys.sum':>7s} {'load before->after':>20s}"
    )
    print(
        "\nRSS peaks in GB (driver = the dapt process; worker = largest single Ray worker; "
        "w.anon = its RSS minus file/shmem pages; w.sum = all workers; sys = raylet, gcs, dashboard, "
        "agents, Ray Data actors: largest one, all)"
    )
    print(hdr)
    for r in rows:
        for stage in TIMED:
            s = r["stages"][stage]
            m = s["memory"]
            load = f"{s['load_before'][0]:.1f}->{s['load_after'][0]:.1f}"
            print(
                f"{r['size']:>7s} {r['input_mb']:7.1f} {r['cpus']:4d} {stage:>5s} {s['seconds']:7.1f} "
                f"{s['mb_per_s']:6.2f} {s['mb_per_s_per_cpu']:6.2f} {m['driver_rss_gb']:7.2f} "
                f"{m['worker_rss_gb']:7.2f} {m['worker_anon_gb']:7.2f} {m['worker_sum_rss_gb']:7.2f} "
                f"{m['system_rss_gb']:7.2f} {m['system_sum_rss_gb']:7.2f} {load:>20s}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.5,1,2", help="comma list; GB unless suffixed mb (e.g. 50mb,100mb)")
    ap.add_argument("--cpus", default="2", help="comma list of ray.num_cpus values (e.g. 1,2)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results/scale.json")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin each command to its first C cores (then ray.num_cpus alone limits it)",
    )
    ap.add_argument(
        "--fixed-shuffles",
        action="store_true",
        help="keep configs/tiny.yaml's 2 shuffle partitions and 8 buckets instead of clean's auto sizing",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="add to the runs already in --results (a same size and cpus run is replaced), goals recomputed",
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    cpus_list = [int(c) for c in args.cpus.split(",") if c.strip()]
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = os.getloadavg()
    corpora = {}
    for mb in sizes:
        c = build_corpus(args.out, mb, args.seed)
        corpora[mb] = c
        print(
            f"corpus {size_label(mb)}: {c['bytes'] / 1e6:.1f} MB, {c['docs']} docs in {c['files']} files, "
            f"text={c['text']}, planted {c['planted']}"
            + (" (cached)" if c["cached"] else f" (built in {c['build_seconds']}s)"),
            flush=True,
        )
    rows = [
        run_one(corpora[mb], cpus, args.out, args.interval, not args.no_pin, args.fixed_shuffles)
        for mb in sizes
        for cpus in cpus_list
    ]
    command = " ".join([".venv/bin/python", "bench/scale.py", *sys.argv[1:]])
    commands, prev_corpora = [command], {}
    if args.merge and args.results.exists():
        prev = json.loads(args.results.read_text())
        new = {(r["size"], r["cpus"]) for r in rows}
        rows = [r for r in prev["runs"] if (r["size"], r["cpus"]) not in new] + rows
        rows.sort(key=lambda r: (r["input_mb"], r["cpus"]))
        commands = [*prev.get("commands", [prev.get("command")]), command]
        prev_corpora = prev.get("corpora", {})
        load_start = prev.get("load_start", load_start)
    print_table(rows)
    g = goals(rows)
    print(
        "\ngoal ratios (driver RSS <= 1.2x from smallest to largest size; MB/s per CPU ~1.0; speed-up >= 1.7):"
    )
    for stage, d in g.items():
        for k, v in d.items():
            print(f"  {stage:5s} {k}: {v}")
    texts = sorted({c["text"] for c in corpora.values()})
    result = {
        "started": started,
        "commands": commands,
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "text": texts,
        "note": "synthetic = corpora/synthetic.py template paragraphs (Debian demo text not installed)"
        if "synthetic" in texts
        else "Debian demo text (dict-gcide, dict-wn, fortunes)",
        "corpora": prev_corpora
        | {
            size_label(mb): {k: v for k, v in c.items() if k not in ("domain", "general")}
            for mb, c in corpora.items()
        },
        "runs": rows,
        "goals": g,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
