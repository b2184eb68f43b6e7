"""Model FLOPs per token and peak accelerator throughput, for model-FLOPs utilisation (MFU).

MFU follows the PaLM paper's definition: the FLOPs the model needs (6 per parameter per token for
forward + backward, plus attention's 12 * layers * hidden * seq_len), divided by the hardware's peak.
Activation recomputation is not counted (that would be hardware FLOPs utilisation). Stdlib only, so
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


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int, n_embedding: int = 0) -> float:
    """Training FLOPs per token: 6 * (non-embedding) params + 12 * layers * hidden * seq_len (attention).

    The input embedding is a lookup, not a matmul, so its parameters are excluded (pass them as
    ``n_embedding``); the output projection is a matmul and stays in.
    """
    return 6.0 * (n_params - n_embedding) + 12.0 * n_layers * hidden * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (CPU)."""
    if not peak or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_token / (peak * n_devices)
