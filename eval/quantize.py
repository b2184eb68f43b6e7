"""Precision variants of a model and their measured size: the quantization table.

fp32 / bf16 / fp16 are plain casts. int8 is weight-only per-channel int8 of every ``nn.Linear``
through torchao (``Int8WeightOnlyConfig``, PyTorch's maintained quantization library; it runs on CPU):
weights are stored as int8 with one scale per output row and dequantised on the fly, activations stay
fp32. Embeddings are not Linear layers and stay in fp32, which is why int8 is less than 4x smaller
than fp32 for a small-vocabulary-heavy model.

Sizes are measured, not computed from the parameter count: ``bytes_in_memory`` sums the storage of every
parameter and buffer (for torchao tensor subclasses, of their inner int8 data and scales), and
``bytes_on_disk`` is the size of the files written by the format each variant is saved in
(safetensors via ``save_pretrained`` for float variants; ``torch.save`` of the state dict for int8,
because safetensors cannot hold torchao's tensor subclasses).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
log = logging.getLogger("dapt.eval")


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def variant(model: Any, precision: str) -> Any:
    """A copy of ``model`` at ``precision`` (the original is left untouched)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    m = copy.deepcopy(model).eval()
    if precision != "int8":
        return m.to(_dtype(precision))
    m = m.float()
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("int8 needs torchao: pip install torchao") from e
    quantize_(m, Int8WeightOnlyConfig())
    return m


def _tensor_bytes(t: Any) -> int:
    """Bytes actually held by a tensor, looking inside tensor subclasses (int8 data + scales)."""
    import torch

    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)
    return t.numel() * t.element_size()


def memory_bytes(model: Any) -> int:
    """Bytes of all parameters and buffers (shared tensors, e.g. tied embeddings, counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total


def save_variant(model: Any, precision: str, out: Path) -> tuple[int, str]:
    """Write the variant to ``out``; returns (bytes on disk, format)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        torch.save(model.state_dict(), out / "model_int8.pt")
        fmt = "torch.save (torchao Int8Tensor)"
    else:
        model.save_pretrained(out, safe_serialization=True)
        fmt = "safetensors"
    weights = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".pt", ".bin"}]
    return sum(p.stat().st_size for p in weights), fmt
