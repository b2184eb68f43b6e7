"""Measure what the planner predicts: a rank's model-state bytes, saved activations, GPU peak memory.

This module imports torch (the arithmetic in ``memory.py`` does not). The tests use it to hold the
prediction to measurement on 2 gloo ranks; ``python -m dapt.train.plan.measure`` on a CUDA machine
prints the prediction next to ``torch.cuda.max_memory_allocated`` for a few configurations
(``bench/gpu_check`` can call :func:`gpu_check` directly). It needs only torch and transformers.
:func:`objective_activations` does the same for a masked LM or an encoder-decoder's saved tensors.
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


def _is_weight_copy(t: torch.Tensor) -> bool:
    """Whether ``t`` is (a view of) autocast's 16-bit copy of a parameter: its graph goes from views
    through one dtype cast to a leaf. Those copies are the plan's working buffers, not activations."""
    fn = t.grad_fn
    while fn is not None and type(fn).__name__ in ("TBackward0", "ViewBackward0", "ExpandBackward0"):
        fn = fn.next_functions[0][0] if fn.next_functions else None
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    nxt = fn.next_functions[0][0] if fn.next_functions else None
    return type(nxt).__name__ == "AccumulateGrad"


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Iterable[torch.Tensor] = ()) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside the block (distinct storages only).

    Tensors sharing storage with ``exclude`` (pass ``model.parameters()``: a linear layer saves its
    weight, or a transposed view of it, and those bytes are model states, not activations) are skipped.
    ``weight_copies`` is the part of ``bytes`` that is autocast's 16-bit copies of parameters.
    The result is filled in on exit.
    """
    skip = {_local(t).untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    copies: set[int] = set()
    result = {"bytes": 0, "tensors": 0, "weight_copies": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip and st.data_ptr() not in seen:
            seen[st.data_ptr()] = st.nbytes()
            if _is_weight_copy(t):
                copies.add(st.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(seen.values())
    result["tensors"] = len(seen)
    result["weight_copies"] = sum(seen[p] for p in copies)


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


def bert_config(layers: int, hidden: int, heads: int, intermediate: int, vocab: int, **kw: Any):
    """A transformers BertConfig (lazily imported); ``dropout`` sets both of BERT's dropout rates."""
    from transformers import BertConfig

    p = kw.pop("dropout", 0.1)
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_dropout_prob=kw.pop("hidden_dropout", p),
        attention_probs_dropout_prob=kw.pop("attention_dropout", p),
        **kw,
    )


def t5_config(
    layers: int, decoder_layers: int, hidden: int, heads: int, d_kv: int, d_ff: int, vocab: int, **kw: Any
):
    """A transformers T5Config (lazily imported); ``gated`` picks v1.1's gated GELU over ReLU."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab,
        d_model=hidden,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_decoder_layers=decoder_layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu" if kw.pop("gated", False) else "relu",
        dropout_rate=kw.pop("dropout", 0.1),
        decoder_start_token_id=kw.pop("decoder_start_token_id", 0),
        pad_token_id=kw.pop("pad_token_id", 0),
        **kw,
    )


def objective_activations(
    config: Any,
    objective: str,
    seq_len: int,
    micro_batch: int,
    precision: str = "fp32",
    checkpointing: bool = False,
    checkpoint_every: int = 1,
    attn: str = "sdpa",
    span_lengths: tuple[int, int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Saved-tensor bytes of one training forward of a model built from ``config`` for ``objective``
    (``mlm``: the objective's Auto class, ``AutoModelForMaskedLM``; ``span``: ``AutoModelForSeq2SeqLM``),
    measured on CPU, next to the planner's figure for the same step.

    The forward and loss are train/loss.py's (full logits, upcast, cross-entropy; span passes the labels,
    so the model also computes its own loss), with the output kept alive until the loss exists so that
    no freed storage is reused and counted once. ``measured`` excludes the parameters and autocast's
    weight copies (planned as working buffers). ``predicted`` is the activation estimate less the block
    that only exists while being recomputed, plus what the losses save: fp32 log-probabilities per logits
    position (and for span the model's own loss's, in the logits' dtype, fp32 under autocast).
    ``precision``: ``fp32``, ``bf16-pure`` (16-bit weights, as under FSDP2 mixed precision) or ``bf16``
    (fp32 weights under ``torch.autocast``, as DDP)."""
    import torch.nn.functional as F
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    from dapt.train.plan import encoder_memory, encoders

    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if objective == "span" else AutoModelForMaskedLM
    model = auto.from_config(config, attn_implementation=attn)
    if precision == "bf16-pure":
        model.to(torch.bfloat16)
    if checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=checkpoint_every
        )
    model.train()
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    if objective == "span":
        if span_lengths is None:
            raise ValueError("span: give span_lengths")
        se, sd = span_lengths
        x = torch.randint(3, vocab, (micro_batch, se), generator=gen)
        y = torch.randint(3, vocab, (micro_batch, sd), generator=gen)
        kw: dict[str, Any] = {"labels": y, "use_cache": False}
    else:
        x = torch.randint(3, vocab, (micro_batch, seq_len), generator=gen)
        y, kw = x, {}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with saved_tensor_bytes(model.parameters()) as r, autocast:
        out = model(input_ids=x, **kw)
        logits = out.logits
        F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        del out, logits
    spec = encoders.describe(config.to_dict(), objective)
    a = memory.compute_dtype_bytes(precision)
    est_kw = dict(
        act_bytes=a,
        checkpointing=checkpointing,
        flash_attention=attn != "eager",
        autocast=precision == "bf16",
        checkpoint_every=checkpoint_every,
        device="cpu",
    )
    if objective == "span":
        est = encoder_memory.t5_activation_bytes(spec, span_lengths, micro_batch, **est_kw)
        own_loss = 4 if precision == "bf16" else a
        losses = (4 + own_loss) * vocab * span_lengths[1] * micro_batch
    else:
        est = encoder_memory.encoder_activation_bytes(spec, seq_len, micro_batch, **est_kw)
        losses = 4 * vocab * seq_len * micro_batch
    del model
    return {
        "measured": r["bytes"] - r["weight_copies"],
        "predicted": est["total"] - est["recompute"] + losses,
        "activations": est["total"],
        "recompute": est["recompute"],
        "losses": losses,
        "weight_copies": r["weight_copies"],
    }


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
