"""Model FLOPs per token and peak accelerator throughput, for model-FLOPs utilisation (MFU).

MFU: the FLOPs the model needs per token (6 per matmul weight for forward + backward, plus attention's
12 * layers * hidden * keys attended per query), times tokens/s, divided by the hardware's peak. The
PaLM paper counts attention over the full sequence (12 * L * H * seq_len); here it follows the mask in
use, (seq_len + 1) / 2 keys on average for causal attention and fewer with document masking, so it is
the work the model does, not the work of a dense attention matrix. Activation recomputation is not
counted (that would be hardware FLOPs utilisation). Stdlib only, so
bench/gpu_check.py can reuse it on a machine that has only torch and transformers.
"""

from __future__ import annotations

# Dense (no sparsity) peak TFLOP/s per GPU from the vendors' data sheets, by compute dtype.
# fp32 training on Ampere/Hopper runs matmuls in TF32 when allowed; we report against TF32 peak.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.7},  # SXM / HBM3
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.7},
    "H20": {"bf16": 148.0, "fp16": 148.0, "fp32": 74.0},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0},
    "A10G": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5},
}


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Peak FLOP/s for a CUDA device name (``torch.cuda.get_device_name``), or None when unknown/CPU."""
    if not device_name:
        return None
    name = device_name.upper()
    # Longest key first so "H100 PCIe" wins over "H100".
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_TFLOPS[key].get(precision, PEAK_TFLOPS[key]["bf16"]) * 1e12
    return None


def flops_per_token(
    n_params: int, n_layers: int, hidden: int, context: float, n_embedding: int = 0, tied_output: bool = False
) -> float:
    """Training FLOPs per token: 6 per matmul weight + 12 * layers * hidden * ``context``.

    The input embedding is a lookup, not a matmul, so its ``n_embedding`` parameters are excluded; the
    output projection is a matmul and counts, also when it is the same (tied) matrix as the embedding,
    which ``n_params`` counts once (``tied_output=True`` adds it back). ``context`` is the mean number
    of keys a query attends to under the mask in use: ``(seq_len + 1) / 2`` for causal attention,
    less with document masking (``train.batches`` measures it on the data).
    """
    matmul_params = n_params - n_embedding + (n_embedding if tied_output else 0)
    return 6.0 * matmul_params + 12.0 * n_layers * hidden * context


def causal_context(seq_len: int) -> float:
    """Mean keys per query of causal attention over ``seq_len`` tokens: query ``i`` sees ``i + 1``."""
    return (seq_len + 1) / 2


def mfu(tokens_per_s: float, flops_token: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (CPU)."""
    if not peak or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_token / (peak * n_devices)
