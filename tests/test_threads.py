"""A Ray task's thread pools follow the CPUs Ray gave it (pipeline/threads.py): a 1-CPU task encodes on one
thread instead of starting the tokenizer's pool on every core. Each probe runs in a fresh worker
(``max_calls=1``) and counts the threads the encoder started."""

from __future__ import annotations

import os

import ray

from dapt.pipeline.threads import assigned_cpus, use_cpus


@ray.remote(max_calls=1)
def _probe(tokenizer_dir: str, limit: bool) -> dict:
    cpus = use_cpus() if limit else 0
    before = len(os.listdir("/proc/self/task"))
    from dapt.tokenizer.encode import load_encoder

    load_encoder(tokenizer_dir).encode_batch(["debits and credits in the general ledger " * 50] * 512)
    return {
        "cpus": cpus,
        "assigned": assigned_cpus(),
        "env": {
            k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "OMP_NUM_THREADS")
        },
        "new_threads": len(os.listdir("/proc/self/task")) - before,
    }


def test_one_cpu_task_encodes_on_one_thread(ray_local, sp_tokenizer_dir) -> None:
    one = ray.get(_probe.options(num_cpus=1).remote(str(sp_tokenizer_dir), True))
    assert one["cpus"] == one["assigned"] == 1
    assert one["env"] == {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    assert one["new_threads"] <= 1
    two = ray.get(_probe.options(num_cpus=2).remote(str(sp_tokenizer_dir), True))
    assert two["cpus"] == 2
    assert two["env"] == {"TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    # the problem it solves: left alone, a 1-CPU task's encoder starts a thread per core of the machine
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        default = {
            "env_vars": {"TOKENIZERS_PARALLELISM": "true"}
        }  # the library's default (conftest sets false)
        alone = ray.get(_probe.options(num_cpus=1, runtime_env=default).remote(str(sp_tokenizer_dir), False))
        assert alone["new_threads"] >= cores


def test_outside_ray_nothing_changes(monkeypatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "keep")
    assert use_cpus(0) == 0 and os.environ["TOKENIZERS_PARALLELISM"] == "keep"
