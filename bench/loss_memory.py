"""Peak memory and time of the loss: full logits vs dapt's chunked loss (train/loss.py), same model and batch.

    .venv/bin/python bench/loss_memory.py [--vocab 32000] [--tokens 4096] [--hidden 256] [--chunk 1024]

Each variant runs forward + backward of a 2-layer Llama's loss in a fresh process (so the peak
resident memory, ``ru_maxrss``, is its own), three times; prints the peaks, the median seconds, the
ratios chunked / full and the load average. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dapt.train.loss import causal_lm_loss, install_chunked_head

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=max(1, args.hidden // 64),
        use_cache=False,
    )
    model = LlamaForCausalLM(cfg).train()
    head = install_chunked_head(model, args.chunk) if args.variant == "chunked" else None
    seq = 512
    x = torch.randint(0, args.vocab, (args.tokens // seq, seq))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loss = causal_lm_loss(model, x, x, head=head)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "loss": float(loss),
        "seconds": statistics.median(times),
        "peak_gb": peak / 2**20,
        "base_gb": base / 2**20,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(one(args)))
        return 0
    load_before = os.getloadavg()
    out = {}
    for variant in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k}={getattr(args, k)}" for k in ("vocab", "tokens", "hidden", "chunk", "threads")
        ]
        out[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        r = out[variant]
        print(
            f"{variant:8s} peak RSS {r['peak_gb']:.2f} GB (after model build {r['base_gb']:.2f}), "
            f"{r['seconds']:.3f} s per forward+backward, loss {r['loss']:.6f}"
        )
    f, c = out["full"], out["chunked"]
    grow_f, grow_c = f["peak_gb"] - f["base_gb"], c["peak_gb"] - c["base_gb"]
    print(
        f"{args.tokens} tokens x {args.vocab} vocabulary, chunk {args.chunk}: loss memory (peak - base) "
        f"chunked/full {grow_c / grow_f:.3f} ({grow_c:.2f} vs {grow_f:.2f} GB), time chunked/full "
        f"{c['seconds'] / f['seconds']:.3f}, |loss difference| {abs(c['loss'] - f['loss']):.2e}; "
        f"load average {[round(x, 2) for x in load_before]} -> {[round(x, 2) for x in os.getloadavg()]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
