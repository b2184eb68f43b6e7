"""One-GPU check of sharded bf16 training: a ~1B-parameter Llama, FSDP2, ~100 steps, synthetic data.

Needs only this repository, torch and transformers (no pydantic, ray, numpy-only project code): from
the project it imports nothing but the standard-library-only modules ``train.flops`` (MFU)
and ``train.plan.memory`` (the planner's memory prediction), each inside try/except.

What it does, in a world of one process (``torch.distributed`` initialised from env vars):
1. builds a TinyLlama-shaped 1.1B model from a config (random init) on the GPU,
2. applies FSDP2 ``fully_shard`` per transformer block and on the root, bf16 ``MixedPrecisionPolicy``
   (fp32 master weights and reductions), AdamW,
3. trains on synthetic packed blocks (random token ids), warm-up steps untimed, the rest timed with
   ``torch.cuda.synchronize``,
4. prints tokens/s, MFU (peak table: A100 312, H100 989, H200 989 TFLOP/s bf16 dense), peak memory
   (``torch.cuda.max_memory_allocated``) next to the planner's prediction, and writes
   ``$OUT/gpu_check.json`` when ``OUT`` is set.

On an out-of-memory error it halves the micro-batch and tries again, so it reports something on any
card. ``--tiny --device cpu`` runs the same code path in seconds on a CPU (gloo) for testing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
# Run as `python bench/x.py`, Python puts bench/ first on sys.path, where other benchmarks' files
# (bench/tokenize.py) shadow standard-library modules that torch imports later: drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Fallback if train.flops cannot be imported (it is stdlib-only, so it should).
_PEAK_BF16_TFLOPS = {"A100": 312.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0}

CONFIGS = {
    # TinyLlama-1.1B's shape: 22 layers, hidden 2048, MLP 5632, 32 heads, 4 KV heads, 32k vocab.
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def say(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def peak_flops(device_name: str | None, precision: str = "bf16") -> float | None:
    try:
        from dapt.train.flops import peak_flops as pf

        return pf(device_name, precision)
    except Exception:
        if not device_name:
            return None
        for key in sorted(_PEAK_BF16_TFLOPS, key=len, reverse=True):
            if key.upper() in device_name.upper():
                return _PEAK_BF16_TFLOPS[key] * 1e12
        return None


def flops_per_token(n_params: int, n_emb: int, layers: int, hidden: int, seq_len: int) -> float:
    """As dapt's MFU: untied output projection counted, causal attention over (seq_len + 1) / 2 keys."""
    try:
        from dapt.train.flops import causal_context
        from dapt.train.flops import flops_per_token as fpt

        return fpt(n_params, layers, hidden, causal_context(seq_len), n_embedding=n_emb)
    except Exception:
        return 6.0 * (n_params - n_emb) + 12.0 * layers * hidden * (seq_len + 1) / 2


def planner_prediction(
    arch: dict, seq_len: int, micro: int, ac: bool, mem: int | None, every: int = 1, chunk: int = 0
) -> dict | None:
    """The planner's predicted peak memory for this exact run, if ``train.plan.memory`` imports."""
    try:
        from dapt.train.plan import memory
    except Exception as e:  # the planner module is optional here
        say(f"planner not importable ({type(e).__name__}: {e}); no prediction")
        return None
    try:
        est = memory.estimate(
            layers=arch["num_hidden_layers"],
            hidden=arch["hidden_size"],
            heads=arch["num_attention_heads"],
            vocab=arch["vocab_size"],
            kv_heads=arch["num_key_value_heads"],
            intermediate=arch["intermediate_size"],
            tied=False,
            seq_len=seq_len,
            micro_batch=micro,
            precision="bf16",
            sharding="zero3",
            world_size=1,
            activation_checkpointing=ac,
            checkpoint_every=every,
            loss_chunk_tokens=chunk,
            flash_attention=True,
            grad_accumulation=False,
            device_mem_bytes=mem,
        )
    except Exception as e:
        say(f"planner estimate failed ({type(e).__name__}: {e})")
        return None
    return {k: v for k, v in est.items() if isinstance(v, int | float | bool | str)}


def init_dist(device: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group("nccl" if device == "cuda" else "gloo")


def build(arch: dict, device, ac: bool, dtype):
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**arch, max_position_embeddings=4096, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if ac:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(device.type, (1,))
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model, cfg


def train(args, arch: dict, micro: int) -> dict:
    import torch
    import torch.nn.functional as F

    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16
    t_build = time.perf_counter()
    model, cfg = build(arch, device, args.activation_checkpointing, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    n_emb = model.get_input_embeddings().weight.numel()
    say(f"model: {n_params / 1e9:.3f}B params built and sharded in {time.perf_counter() - t_build:.1f}s")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    g = torch.Generator(device="cpu").manual_seed(0)
    # Synthetic packed data: a fixed pool of random blocks of seq_len + 1 tokens, cycled.
    pool = torch.randint(0, arch["vocab_size"], (8 * micro, args.seq_len + 1), generator=g)
    tokens_per_step = micro * args.seq_len
    losses, times = [], []
    for step in range(args.steps):
        i = (step * micro) % len(pool)
        block = pool[i : i + micro].to(device, non_blocking=True)
        x, y = block[:, :-1], block[:, 1:]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
        if step == 0 or (step + 1) % max(1, args.steps // 10) == 0:
            gnv = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            say(
                f"step {step + 1}/{args.steps} loss {losses[-1]:.4f} grad_norm {gnv:.3f} step_s {times[-1]:.3f}"
            )
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"non-finite loss at step {step + 1}")
        if time.perf_counter() - T0 > args.time_limit and step + 1 >= args.warmup + 5:
            say(f"time limit {args.time_limit:.0f}s reached: stopping after {step + 1} steps")
            break
    warm = min(args.warmup, len(times) - 1)
    timed = times[warm:]
    tps = tokens_per_step * len(timed) / sum(timed)
    f_tok = flops_per_token(n_params, n_emb, arch["num_hidden_layers"], arch["hidden_size"], args.seq_len)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_flops(name, "bf16")
    total_mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    peak_mem = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    if peak_mem is None:
        import resource

        peak_mem = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    result = {
        "device": name or "cpu",
        "params": n_params,
        "seq_len": args.seq_len,
        "micro_batch": micro,
        "tokens_per_step": tokens_per_step,
        "steps": len(times),
        "timed_steps": len(timed),
        "activation_checkpointing": args.activation_checkpointing,
        "tokens_per_s": tps,
        "step_seconds_median": sorted(timed)[len(timed) // 2],
        "flops_per_token": f_tok,
        "achieved_tflops": tps * f_tok / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": tps * f_tok / peak if peak else None,
        "peak_memory_bytes": peak_mem,
        "peak_memory_gib": peak_mem / 2**30,
        "device_memory_bytes": total_mem,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    pred = planner_prediction(arch, args.seq_len, micro, args.activation_checkpointing, total_mem)
    if pred is not None:
        result["planner"] = pred
        tot = pred.get("total")
        if tot and device.type == "cuda":
            result["planner_total_gib"] = tot / 2**30
            result["measured_over_predicted"] = peak_mem / tot
    del model, opt
    return result


VARIANTS = {
    # name: dapt train options (train.loop's TrainSpec fields) on top of the same 1B model and data
    "eager": {},
    "compile": {"compile": True},
    "compile+document": {"compile": True, "attention": "document"},
    "compile+selective_ac": {
        "compile": True,
        "activation_checkpointing": True,
        "activation_checkpointing_every": 2,
    },
    "compile+float8": {"compile": True, "float8": True},
}


def synthetic_store(folder: Path, vocab: int, seq_len: int, blocks: int):
    """A token store of random documents with geometric lengths (mean seq_len / 2, so a block holds
    about two document starts), for the document-masking variant; None without numpy / the project."""
    import numpy as np

    from dapt.corpora.mix.store import write_plain_store

    rng = np.random.default_rng(0)
    docs, total = [], 0
    while total < blocks * (seq_len + 1) + seq_len:
        n = int(rng.geometric(2 / seq_len)) + 1
        d = rng.integers(3, vocab, n, dtype=np.int64)
        d[-1] = 2
        docs.append(d)
        total += n
    return write_plain_store(folder, docs, seq_len + 1, eos_id=2, vocab_size=vocab)


def dapt_variant(args, arch: dict, micro: int, steps: int, name: str, options: dict, data: Path) -> dict:
    """Run dapt's own worker loop (``train.loop.train_loop``) with ``options`` on the 1B model: tokens/s
    (median of the logged windows after the first), MFU as the loop computes it, peak memory and the
    planner's prediction for the same options. Any failure (a refused option, an import) is reported
    for that variant and the next one runs."""
    import shutil
    import tempfile

    import torch

    try:
        from dapt.train.loop import train_loop
    except Exception as e:
        return {"skipped": f"{type(e).__name__}: {e}"}
    tmp = Path(tempfile.mkdtemp(prefix=f"dapt_gpu_check_{name.replace('+', '_')}_"))
    try:
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        spec = {
            "data_path": str(data),
            "model_path": None,
            "model_config": {
                "model_type": "llama",
                **arch,
                "max_position_embeddings": 4096,
                "tie_word_embeddings": False,
            },
            "steps": steps,
            "micro_batch_size": micro,
            "grad_accum": 1,
            "seq_len": args.seq_len,
            "sharding": "zero3",
            "precision": "bf16",
            "lr": 3e-4,
            "min_lr_ratio": 0.1,
            "schedule": "cosine",
            "warmup_steps": 1,
            "decay_fraction": 0.2,
            "weight_decay": 0.1,
            "beta1": 0.9,
            "beta2": 0.95,
            "eps": 1e-8,
            "grad_clip": 1.0,
            "checkpoint_every": 10**9,
            "final_checkpoint": False,
            "keep_checkpoints": 1,
            "monitor_every": 10**9,
            "log_every": max(1, steps // 5),
            "checkpoint_dir": str(tmp / "ckpt"),
            "log_dir": str(tmp / "logs"),
            "export_dir": None,
            "fingerprint": "gpu-check",
            "progress": False,
            "use_gpu": args.device == "cuda",
            **options,
        }
        t = time.perf_counter()
        summary = train_loop(spec)
        rows = [json.loads(x) for x in (tmp / "logs" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steady = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]
        mfus = [r["mfu"] for r in rows[1:] if r.get("mfu") is not None]
        total_mem = torch.cuda.get_device_properties(0).total_memory if args.device == "cuda" else None
        ac = bool(options.get("activation_checkpointing"))
        pred = planner_prediction(
            arch, args.seq_len, micro, ac, total_mem, options.get("activation_checkpointing_every", 1), 1024
        )
        out = {
            "options": options,
            "steps": summary["steps"],
            "tokens_per_s_steady": sorted(steady)[len(steady) // 2],
            "mfu_steady": sorted(mfus)[len(mfus) // 2] if mfus else summary["mfu"],
            "attention_context": summary.get("attention_context"),
            "flops_per_token": summary["flops_per_token"],
            "peak_memory_gib": summary["peak_memory_bytes"] / 2**30,
            "planner_total_gib": pred["total"] / 2**30 if pred and pred.get("total") else None,
            "loss_first": rows[0]["loss"] if rows else None,
            "loss_last": rows[-1]["loss"] if rows else None,
            "seconds": time.perf_counter() - t,
        }
        say(f"variant {name}: {out}")
        return out
    except Exception as e:
        say(f"variant {name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return {"options": options, "error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_variants(args, arch: dict, micro: int) -> dict:
    import tempfile

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    data_dir = Path(tempfile.mkdtemp(prefix="dapt_gpu_check_data_"))
    try:
        store = synthetic_store(data_dir / "train", arch["vocab_size"], args.seq_len, 8 * micro)
    except Exception as e:
        return {"skipped": f"no token store ({type(e).__name__}: {e})"}
    out = {}
    for name in names:
        import gc

        gc.collect()
        out[name] = dapt_variant(args, arch, micro, args.pipeline_steps, name, VARIANTS[name], store.folder)
    say("variant              tokens/s     MFU   peak GiB  planner GiB")
    for name, r in out.items():
        if "tokens_per_s_steady" in r:
            mfu = f"{r['mfu_steady']:.1%}" if r.get("mfu_steady") is not None else "n/a"
            plan = f"{r['planner_total_gib']:.2f}" if r.get("planner_total_gib") else "n/a"
            say(
                f"{name:20s} {r['tokens_per_s_steady']:9.0f} {mfu:>7s} {r['peak_memory_gib']:9.2f}  {plan:>10s}"
            )
        else:
            say(f"{name:20s} {r.get('error') or r.get('skipped')}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (for CPU tests of this script)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument(
        "--time-limit", type=float, default=90.0, help="seconds for the FSDP2 run; fewer steps if needed"
    )
    p.add_argument(
        "--pipeline-steps", type=int, default=20, help="steps of dapt's own loop per variant (0: skip them)"
    )
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"dapt variants to run ({', '.join(VARIANTS)})"
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.seq_len = min(args.seq_len, 64)
        args.micro_batch = min(args.micro_batch, 2)
    import torch
    import transformers

    say(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"cuda available: {torch.cuda.is_available()}"
    )
    if args.device == "cuda" and not torch.cuda.is_available():
        say("no CUDA device: rerun with --device cpu --tiny")
        return 2
    init_dist(args.device)
    arch = CONFIGS["tiny" if args.tiny else "1b"]
    out_dir = os.environ.get("OUT")
    micro = args.micro_batch
    result: dict | None = None
    attempts = []
    while micro >= 1:
        try:
            say(f"training: micro_batch {micro} x seq_len {args.seq_len}, {args.steps} steps, bf16, FSDP2")
            result = train(args, arch, micro)
            break
        except torch.OutOfMemoryError as e:
            attempts.append({"micro_batch": micro, "error": str(e).splitlines()[0]})
            say(f"out of memory at micro_batch {micro}; halving")
            import gc

            gc.collect()
            torch.cuda.empty_cache()
            micro //= 2
    if result is None:
        say("failed at every micro-batch size")
        return 1
    result["oom_attempts"] = attempts
    if args.pipeline_steps > 0:
        import gc

        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        result["dapt_variants"] = run_variants(args, arch, result["micro_batch"])
    result["wall_seconds"] = time.perf_counter() - T0
    mfu_s = "n/a" if result["mfu"] is None else f"{result['mfu']:.1%}"
    say(
        f"RESULT device={result['device']} params={result['params'] / 1e9:.3f}B "
        f"tokens/s={result['tokens_per_s']:.0f} "
        f"MFU={mfu_s} "
        f"peak_mem={result['peak_memory_gib']:.2f}GiB "
        + (
            f"planner={result['planner_total_gib']:.2f}GiB (measured/predicted {result['measured_over_predicted']:.2f})"
            if "planner_total_gib" in result
            else "planner=n/a"
        )
    )
    print(json.dumps(result, indent=1, default=str), flush=True)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
