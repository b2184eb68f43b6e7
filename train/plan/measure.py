"""Measure what the planner predicts: a rank's model-state bytes, saved activations, GPU peak memory.

This module imports torch (the arithmetic in ``memory.py`` does not). The tests use it to hold the
prediction to measurement on 2 gloo ranks; ``python -m dapt.train.plan.measure`` on a CUDA machine
prints the prediction next to ``torch.cuda.max_memory_allocated`` for a few configurations
(``bench/gpu_check`` can call :func:`gpu_check` directly). It needs only torch and transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from dapt.train.plan import memory


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local tensor of a DTensor (FSDP2 parameters, gradients and optimizer states)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def local_state_bytes(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, int]:
    """Bytes of this rank's local parameter, gradient and optimizer-state tensors.

    ``params``/``grads``/``optimizer`` count each local tensor's elements (what a shard holds);
    ``params_storage`` counts the distinct storages behind the parameters, which for FSDP2 is the padded
    shard it really allocated.
    """
    params = list(model.parameters())
    out = {"params": 0, "grads": 0, "optimizer": 0, "params_storage": 0, "tensors": len(params)}
    seen: set[int] = set()
    for p in params:
        lp = _local(p)
        out["params"] += _nbytes(lp)
        st = lp.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            out["params_storage"] += st.nbytes()
        if p.grad is not None:
            out["grads"] += _nbytes(_local(p.grad))
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    out["optimizer"] += _nbytes(_local(v))
    return out


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Iterable[torch.Tensor] = ()) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside the block (distinct storages only).

    Tensors sharing storage with ``exclude`` (pass ``model.parameters()``: a linear layer saves its
    weight, or a transposed view of it, and those bytes are model states, not activations) are skipped.
    The result is filled in on exit.
    """
    skip = {_local(t).untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    result = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(seen.values())
    result["tensors"] = len(seen)


def llama_config(
    layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab: int, **kw: Any
):
    """A transformers LlamaConfig (imported lazily so this module loads without transformers)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=kw.pop("max_position_embeddings", 4096),
        tie_word_embeddings=kw.pop("tied", False),
        **kw,
    )


def _train_step_peak(
    cfg, seq_len: int, micro_batch: int, precision: str, checkpointing: bool, sharding: str
) -> dict:
    """One AdamW step of a fresh model on this CUDA device under FSDP2 (world size 1) or plain DDP-like
    single-process training; returns the measured peak and the model-state bytes."""
    import gc

    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda")
    gc.collect()  # HF models hold reference cycles: free the previous case before taking the baseline
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    if precision == "bf16-pure":
        model.to(torch.bfloat16)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    autocast = contextlib.nullcontext()
    if sharding in ("zero2", "zero3"):
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29533")
            dist.init_process_group("nccl", rank=0, world_size=1)
        mp = MixedPrecisionPolicy()
        if precision == "bf16":  # as dapt's train loop: bf16 compute, fp32 gradient reduction
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp, reshard_after_forward=sharding == "zero3")
        fully_shard(model, mp_policy=mp, reshard_after_forward=sharding == "zero3")
    elif precision == "bf16":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # default: foreach on CUDA
    ids = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), device=dev)
    peaks = {}
    for i in range(2):  # the second step has the optimizer states allocated before the forward
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with autocast:
            out = model(input_ids=ids, labels=ids)
        torch.cuda.synchronize()
        peaks["forward"] = torch.cuda.max_memory_allocated() - base
        out.loss.backward()
        del out
        torch.cuda.synchronize()
        peaks["forward_backward"] = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        peaks["optimizer_step"] = torch.cuda.max_memory_allocated() - base
        if i == 1:
            states = local_state_bytes(model, opt)
        opt.zero_grad(set_to_none=True)
    del model, opt, ids
    gc.collect()
    torch.cuda.empty_cache()
    return {"peak": max(peaks.values()), "peaks": peaks, "states": states}


GPU_CASES: list[dict[str, Any]] = [
    # ~0.5B-parameter Llama (hidden 1536, 16 layers, GQA), a realistic shape at a cheap size.
    dict(precision="fp32", sharding="ddp", seq_len=1024, micro_batch=4, checkpointing=False),
    dict(precision="bf16", sharding="ddp", seq_len=1024, micro_batch=4, checkpointing=False),
    dict(precision="bf16", sharding="zero3", seq_len=1024, micro_batch=4, checkpointing=False),
    dict(precision="bf16", sharding="zero3", seq_len=2048, micro_batch=4, checkpointing=True),
    dict(precision="bf16", sharding="zero2", seq_len=2048, micro_batch=2, checkpointing=False),
    dict(precision="bf16-pure", sharding="ddp", seq_len=2048, micro_batch=2, checkpointing=False),
    dict(precision="bf16", sharding="zero3", seq_len=4096, micro_batch=8, checkpointing=True),
    dict(precision="bf16", sharding="ddp", seq_len=4096, micro_batch=4, checkpointing=True),
]
GPU_SHAPE = dict(layers=16, hidden=1536, heads=12, kv_heads=4, intermediate=4096, vocab=32000)


def gpu_check(cases: list[dict[str, Any]] | None = None, shape: dict[str, int] | None = None) -> list[dict]:
    """Predicted vs measured peak memory for each case on the current CUDA device (world size 1)."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_check needs a CUDA device")
    shape = dict(shape or GPU_SHAPE)
    cfg = llama_config(**shape)
    rows = []
    for case in cases or GPU_CASES:
        pred = memory.estimate(
            layers=shape["layers"],
            hidden=shape["hidden"],
            heads=shape["heads"],
            kv_heads=shape["kv_heads"],
            intermediate=shape["intermediate"],
            vocab=shape["vocab"],
            seq_len=case["seq_len"],
            micro_batch=case["micro_batch"],
            precision=case["precision"],
            sharding=case["sharding"],
            world_size=1,
            activation_checkpointing=case["checkpointing"],
            grad_accumulation=False,
        )
        try:
            meas = _train_step_peak(
                cfg,
                case["seq_len"],
                case["micro_batch"],
                case["precision"],
                case["checkpointing"],
                case["sharding"],
            )
        except torch.OutOfMemoryError as e:  # a case too big for this card is a result too
            meas = {"peak": None, "error": str(e).splitlines()[0]}
        row = {"case": case, "predicted": pred["total"], "breakdown": pred, **meas}
        if meas.get("peak"):
            row["ratio"] = pred["total"] / meas["peak"]
        rows.append(row)
        peak = meas.get("peak")
        print(
            f"{case['precision']:>9} {case['sharding']:>5} s={case['seq_len']:<5} b={case['micro_batch']:<3} "
            f"ckpt={int(case['checkpointing'])}  predicted {pred['total'] / memory.GIB:7.2f} GiB  "
            f"measured {peak / memory.GIB if peak else float('nan'):7.2f} GiB  "
            f"ratio {row.get('ratio', float('nan')):.3f}  "
            f"[fwd meas {meas.get('peaks', {}).get('forward', 0) / memory.GIB:.2f}; "
            f"fwd/bwd pred {pred['peak_forward_backward'] / memory.GIB:.2f} meas "
            f"{meas.get('peaks', {}).get('forward_backward', 0) / memory.GIB:.2f}; step pred "
            f"{pred['peak_optimizer_step'] / memory.GIB:.2f} meas {meas.get('peaks', {}).get('optimizer_step', 0) / memory.GIB:.2f}]  "
            f"(states {pred['model_states_padded'] / memory.GIB:.2f}, acts {pred['activations'] / memory.GIB:.2f}, "
            f"logits {pred['logits'] / memory.GIB:.2f}, buffers {sum(pred['buffers'].values()) / memory.GIB:.2f})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    rows = gpu_check()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
