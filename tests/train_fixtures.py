"""Tiny train runs shared by the train-stage tests (tests/test_train_ray.py, tests/test_train_cluster.py).

``make_run`` writes a run folder whose upstream ``tokenizer`` and ``mix`` stages are finished exactly as
the runner leaves them (files, ``manifest.json`` with a fingerprint, ``_DONE``), from real tokenised
text, plus its config file; ``small_train`` is a train section whose fit costs Ray Train's fixed
start-up and little else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from conftest import make_docs
from store_fixtures import store_from_docs

from dapt.corpora.mix.store import TokenStore

SEQ = 32


def _done(stage: Path, manifest: dict[str, Any]) -> None:
    (stage / "manifest.json").write_text(json.dumps({"fingerprint": f"fp-{stage.name}", **manifest}))
    (stage / "_DONE").write_text(f"fp-{stage.name}\n")


def make_run(tmp_path: Path, model_dir: Path, train: dict[str, Any], heldout: bool = True) -> Path:
    """A run folder with finished tokenizer and mix stages, and its config file (``heldout=False``: the
    mix has no held-out split, so the forgetting monitor is off)."""
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    tok_stage = run / "tokenizer"
    tok_stage.mkdir(parents=True)
    shutil.copytree(model_dir, tok_stage / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.save_pretrained(tok_stage / "tokenizer")
    _done(
        tok_stage,
        {
            "outputs": {"model": "model", "tokenizer": "tokenizer"},
            "base_model": {"name_or_path": str(model_dir), "revision": None, "from_config": None},
        },
    )

    mix = run / "mix"
    ids = {
        k: [tok(t, add_special_tokens=False)["input_ids"] for t in make_docs(k, 40, seed=5)]
        for k in ("domain", "general")
    }
    index = store_from_docs(
        mix,
        {"fin": ("domain", ids["domain"]), "gen": ("general", ids["general"])},
        SEQ + 1,
        eos_id=2,
        vocab_size=len(tok),
        prep=tmp_path / "prep",
    )
    n = len(TokenStore(index.parent))
    for name, kind in (("fin", "domain"), ("gen", "general")) if heldout else ():
        (mix / "heldout" / name).mkdir(parents=True)
        for split, seed in (("validation", 7), ("test", 8)):
            lines = [
                json.dumps({"id": f"{name}-{i}", "source": name, "kind": kind, "text": t})
                for i, t in enumerate(make_docs(kind, 4, seed=seed))
            ]
            (mix / "heldout" / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    _done(
        mix,
        {
            "outputs": {"train_tokens": "train/index.json", "heldout": "heldout"},
            "seq_len": SEQ,
            "n_blocks": n,
            "vocab_size": len(tok),
            "eos_id": 2,
        },
    )
    cfg = {
        "name": "t",
        "run_dir": str(run),
        "sources": [
            {"name": "fin", "kind": "domain", "paths": [str(tmp_path / "fin.jsonl")]},
            {"name": "gen", "kind": "general", "paths": [str(tmp_path / "gen.jsonl")]},
        ],
        "model": {"name_or_path": str(model_dir)},
        "ray": {"num_cpus": 2, "object_store_memory_gb": 1.0},
        "mix": {"seq_len": SEQ},
        "train": train,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def small_train(**train: Any) -> dict[str, Any]:
    """One CPU worker, tiny batches: a fit costs Ray Train's fixed start-up and little else."""
    return {
        "num_workers": 1,
        "cpus_per_worker": 1,
        "precision": "fp32",
        "micro_batch_size": 2,
        "global_batch_tokens": 2 * SEQ,
        "lr": 3e-3,
        "monitor_every": 10,
        "monitor_max_tokens": 2000,
        "log_every": 1,
        **train,
    }


def metrics(run: Path) -> list[dict[str, Any]]:
    """The finished train stage's ``metrics.jsonl`` rows."""
    return [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
