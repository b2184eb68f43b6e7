"""Throughput of `dapt train` (1 Ray Train worker) vs a bare PyTorch loop: same model, data, batch, precision.

    .venv/bin/python bench/train.py [--steps 40] [--precision fp32|bf16] [--threads 2] [--set train.k=v ...]

Both train the same Llama (from the same saved folder) on the same packed blocks with the same
AdamW (fused, as dapt's), clipping and precision; the bare loop computes the loss from the full
logits, dapt from its default chunked loss (``--set train.loss_chunk_tokens=0`` compares like with
like). The bare loop runs before and after `dapt train` (this machine's
speed drifts, so the two bare runs bracket it). Reported separately:

* steady state: median per-step tokens/s after ``--warmup`` steps (dapt's come from its
  metrics.jsonl, logged every step), and their ratio dapt / bare;
* fixed start-up overhead: the stage's wall time minus its training-step time (Ray start, worker
  start, model load, checkpoint, export), vs the bare loop's set-up time.

Prints ratios and writes bench/results/train.json. Timings are never asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/x.py`, Python puts bench/ first on sys.path, where other benchmarks' files
# (bench/tokenize.py) shadow standard-library modules that torch imports later: drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_inputs(d: Path, args: argparse.Namespace) -> Path:
    """A saved model, packed blocks and finished upstream stages; returns the run config path."""
    import numpy as np
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64 or 128,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=4096,
    )
    run = d / "run"
    (run / "tokenizer").mkdir(parents=True)
    LlamaForCausalLM(cfg).save_pretrained(run / "tokenizer" / "model")
    from dapt.corpora.mix.store import write_plain_store

    n_blocks = args.steps * args.micro_batch
    (run / "mix" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    # Documents of geometric lengths (mean 100 tokens) ending in EOS, in a token store: the format the mix
    # stage writes, with the document starts that train.attention: document needs.
    docs, total = [], 0
    while total < (n_blocks + 1) * (args.seq_len + 1):
        n = int(rng.geometric(1 / 100))
        docs.append(np.r_[rng.integers(3, args.vocab, n), 2].astype(np.int64))
        total += n + 1
    store = write_plain_store(run / "mix" / "train", docs, args.seq_len + 1, eos_id=2, vocab_size=args.vocab)
    assert len(store) >= n_blocks
    for stage, man in (
        ("tokenizer", {"outputs": {"model": "model"}}),
        (
            "mix",
            {
                "outputs": {"train_tokens": "train/index.json"},
                "seq_len": args.seq_len,
                "n_blocks": len(store),
                "vocab_size": args.vocab,
                "eos_id": 2,
            },
        ),
    ):
        (run / stage / "manifest.json").write_text(json.dumps({"fingerprint": f"bench-{stage}", **man}))
        (run / stage / "_DONE").write_text("x\n")
    config = {
        "name": "bench",
        "run_dir": str(run),
        "sources": [{"name": "x", "kind": "domain", "paths": [str(d / "none.jsonl")]}],
        "model": {"name_or_path": str(run / "tokenizer" / "model")},
        "ray": {"num_cpus": args.threads, "object_store_memory_gb": 0.5},
        "mix": {"seq_len": args.seq_len},
        "train": {
            "num_workers": 1,
            "cpus_per_worker": args.threads,
            "precision": args.precision,
            "micro_batch_size": args.micro_batch,
            "global_batch_tokens": args.micro_batch * args.seq_len,
            "max_steps": args.steps,
            "lr": 1e-4,
            "checkpoint_every": 10**6,
            "keep_checkpoints": 1,
            "log_every": 1,
        },
    }
    path = d / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bare_loop(run: Path, args: argparse.Namespace) -> dict:
    """The same training with nothing but PyTorch: no Ray, no checkpoints, no logging."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(run / "tokenizer" / "model", dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        fused=True,  # the optimizer dapt uses: the ratio measures the loop around it, not the optimizer
    )
    from dapt.corpora.mix.store import TokenStore

    store = TokenStore(run / "mix" / "train")
    amp = args.precision != "fp32"
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    from dapt.train.schedule import lr_factor, warmup_steps

    warm = warmup_steps(args.steps, 0.01)  # TrainConfig's default warmup_fraction, cosine to 10%
    setup = time.perf_counter() - t0
    times, losses = [], []
    for step in range(args.steps):
        t = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = 1e-4 * lr_factor(step, args.steps, warm, "cosine", 0.1)
        rows = range(step * args.micro_batch, (step + 1) * args.micro_batch)
        b = torch.from_numpy(np.stack([store.block(r) for r in rows]).astype(np.int64))
        x, y = b[:, :-1], b[:, 1:]
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t)
    tokens = args.micro_batch * args.seq_len
    steady = [tokens / t for t in times[args.warmup :]]
    return {
        "setup_seconds": setup,
        "train_seconds": sum(times),
        "steady_tokens_per_s": statistics.median(steady),
        "losses": losses,
    }


def dapt_run(cfg_path: Path, args: argparse.Namespace) -> dict:
    from dapt.pipeline.config import load_config
    from dapt.pipeline.stages import run_stage

    cfg = load_config(cfg_path, list(args.set))
    t0 = time.perf_counter()
    man = run_stage(cfg, "train", force=True, echo=None, extra={"preflight": False, "progress": False})
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (cfg.run_path / "train" / "metrics.jsonl").read_text().splitlines()]
    steady = [r["tokens_per_s"] for r in rows[args.warmup :]]
    return {
        "wall_seconds": wall,
        "train_seconds": man["train_seconds"],
        "overhead_seconds": wall - man["train_seconds"],
        "steady_tokens_per_s": statistics.median(steady),
        "losses": [r["loss"] for r in rows],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the temporary run folder")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for dapt's run"
    )
    args = p.parse_args()
    d = Path(tempfile.mkdtemp(prefix="dapt_bench_train_"))
    try:
        cfg_path = make_inputs(d, args)
        run = d / "run"
        load_before = os.getloadavg()
        print(
            f"model hidden={args.hidden} layers={args.layers} vocab={args.vocab}; {args.steps} steps of "
            f"{args.micro_batch}x{args.seq_len} tokens, {args.precision}, {args.threads} threads",
            flush=True,
        )
        bare1 = bare_loop(run, args)
        print(
            f"bare (before): {bare1['steady_tokens_per_s']:.0f} tokens/s steady, setup {bare1['setup_seconds']:.1f}s",
            flush=True,
        )
        dapt = dapt_run(cfg_path, args)
        print(
            f"dapt train   : {dapt['steady_tokens_per_s']:.0f} tokens/s steady, wall {dapt['wall_seconds']:.1f}s",
            flush=True,
        )
        bare2 = bare_loop(run, args)
        print(f"bare (after) : {bare2['steady_tokens_per_s']:.0f} tokens/s steady", flush=True)
        bare_best = max(bare1["steady_tokens_per_s"], bare2["steady_tokens_per_s"])
        bare_tps = (bare1["steady_tokens_per_s"] + bare2["steady_tokens_per_s"]) / 2
        same_losses = max(abs(a - b) for a, b in zip(bare1["losses"], dapt["losses"], strict=False))
        load_after = os.getloadavg()
        result = {
            "args": vars(args),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after],
            "bare_steady_tokens_per_s": bare_tps,
            "bare_runs": [bare1["steady_tokens_per_s"], bare2["steady_tokens_per_s"]],
            "dapt_steady_tokens_per_s": dapt["steady_tokens_per_s"],
            "steady_ratio": dapt["steady_tokens_per_s"] / bare_tps,
            "steady_ratio_vs_fastest_bare": dapt["steady_tokens_per_s"] / bare_best,
            "dapt_wall_seconds": dapt["wall_seconds"],
            "dapt_train_seconds": dapt["train_seconds"],
            "dapt_startup_overhead_seconds": dapt["overhead_seconds"],
            "bare_setup_seconds": bare1["setup_seconds"],
            "max_abs_loss_difference_dapt_vs_bare": same_losses,
        }
        print(
            f"\nsteady-state ratio dapt/bare: {result['steady_ratio']:.3f} vs the mean of the bare runs, "
            f"{result['steady_ratio_vs_fastest_bare']:.3f} vs the fastest (conservative)  "
            f"(dapt {result['dapt_steady_tokens_per_s']:.0f}, bare {bare_tps:.0f} / {bare_best:.0f} tokens/s)\n"
            f"fixed start-up overhead of dapt train: {result['dapt_startup_overhead_seconds']:.1f}s "
            f"(bare loop set-up {result['bare_setup_seconds']:.1f}s)\n"
            f"max |loss difference| per step, dapt vs bare: {same_losses:.2e}\n"
            f"load average (1, 5, 15 min) before {result['load_before']}, after {result['load_after']}"
        )
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
