"""A table of common accelerators: memory as the driver reports it and dense peak FLOP/s. Stdlib only.

Memory is what ``nvidia-smi`` / ``torch.cuda.get_device_properties().total_memory`` show (MiB, not
the marketing GB: an "80GB" H100 reports 81,559 MiB). Peaks are the vendors' dense (no sparsity)
tensor-core figures for bf16/fp16, and plain fp32 (PyTorch does not use TF32 for matmuls by default).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    bf16_flops: float
    fp32_flops: float

    def peak_flops(self, precision: str) -> float:
        return self.fp32_flops if precision == "fp32" else self.bf16_flops


GPUS: dict[str, GPU] = {
    g.name.lower(): g
    for g in [
        GPU("H200-141GB", 143771 * MIB, 989e12, 67e12),
        GPU("H100-80GB", 81559 * MIB, 989e12, 67e12),  # SXM
        GPU("H100-PCIe-80GB", 81559 * MIB, 756e12, 51e12),
        GPU("A100-80GB", 81920 * MIB, 312e12, 19.5e12),
        GPU("A100-40GB", 40960 * MIB, 312e12, 19.5e12),
        GPU("L40S-48GB", 46068 * MIB, 362e12, 91.6e12),
        GPU("A10G-24GB", 23028 * MIB, 70e12, 31.2e12),
        GPU("L4-24GB", 23034 * MIB, 121e12, 30.3e12),
        GPU("RTX4090-24GB", 24564 * MIB, 165e12, 82.6e12),
        GPU("V100-32GB", 32768 * MIB, 125e12, 15.7e12),  # fp16 only (no bf16)
        GPU("T4-16GB", 15360 * MIB, 65e12, 8.1e12),  # fp16 only (no bf16)
        GPU("MI300X-192GB", 196592 * MIB, 1307e12, 163e12),
    ]
}
DEFAULT_GPU = "H100-80GB"


def lookup(name: str) -> GPU:
    """A GPU by name, case-insensitive; a unique prefix or a name without the memory suffix also works
    (``h100`` -> H100-80GB, ``a100-40`` -> A100-40GB). Raises KeyError listing the known names."""
    key = name.lower().replace(" ", "").replace("_", "-")
    if key in GPUS:
        return GPUS[key]
    matches = [g for k, g in GPUS.items() if k.startswith(key)]
    if len(matches) > 1:  # "h100" matches SXM and PCIe: prefer the exact family head (first listed)
        exact = [g for g in matches if g.name.lower().split("-")[0] == key]
        matches = exact[:1] or matches
    if len(matches) == 1 or (matches and all(m is matches[0] for m in matches)):
        return matches[0]
    raise KeyError(f"unknown GPU {name!r}; known: {', '.join(g.name for g in GPUS.values())}")


def match_device_name(device_name: str, memory_bytes: int | None = None) -> GPU | None:
    """The table entry for a CUDA device name such as "NVIDIA H100 80GB HBM3" (for the peak FLOP/s).

    Among entries of the same family (and PCIe or not), one whose memory tag ("40GB") is in the name
    wins, then the one closest to ``memory_bytes``, then the first listed.
    """
    n = device_name.upper().replace(" ", "")
    cands = [
        g
        for g in GPUS.values()
        if g.name.split("-")[0].upper() in n and ("PCIE" in n) == ("PCIE" in g.name.upper())
    ]
    if not cands:
        return None
    tagged = [g for g in cands if g.name.split("-")[-1].upper() in n]
    if tagged:
        return tagged[0]
    if memory_bytes:
        return min(cands, key=lambda g: abs(g.memory_bytes - memory_bytes))
    return cands[0]
