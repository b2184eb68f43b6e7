"""Size the libraries' own thread pools to the CPUs Ray gave the task.

Ray schedules by logical CPUs; the libraries a task calls size their pools from the machine. HF
tokenizers' Rust pool (rayon) uses every core for ``encode_batch``: measured on this 2-core machine, one
call burns 1.2-1.8 seconds of CPU per second of wall time by default and 0.95 with the pool off. So a
1-CPU task runs on all cores: a node running one such task per CPU is oversubscribed (64 tasks x 64
threads on a 64-core node), and a "1 CPU" benchmark measures more than one core. Ray itself sets
``OMP_NUM_THREADS`` only when it starts a worker, from that first task; a reused worker keeps it.
"""

from __future__ import annotations

import os
import sys


def assigned_cpus() -> int:
    """CPUs Ray assigned the current task or actor (0 outside Ray or when none were asked for)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 0
    try:
        return int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # the driver, or an older runtime context: nothing assigned to size by
        return 0


def use_cpus(cpus: int | None = None) -> int:
    """Thread pools of OpenMP, torch and HF tokenizers sized to ``cpus`` (default: what Ray assigned);
    returns the count used (0: nothing changed). Tokenizers read ``TOKENIZERS_PARALLELISM`` on every
    call, so one CPU turns their pool off at once; ``RAYON_NUM_THREADS`` sizes the pool when a process
    first uses it."""
    cpus = assigned_cpus() if cpus is None else cpus
    if cpus < 1:
        return 0
    os.environ["OMP_NUM_THREADS"] = str(cpus)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if cpus > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(cpus)
    torch = sys.modules.get("torch")  # never imported here: the frame does not need torch
    if torch is not None and torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)
    return cpus
