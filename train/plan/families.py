"""Which ``transformers`` model families the chunked loss supports. Standard library only and in the
planner package, so the planner (which must run without torch) decides as the train loop does."""

from __future__ import annotations

DIRECT_LOGITS = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "phi",
        "phi3",
        "gemma",
        "olmo",
        "olmo2",
        "gpt2",
        "gpt_neox",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)
"""Model families whose forward returns the output projection's result as the logits, unchanged
(no soft-capping as in Gemma 2, no scale as in Cohere or Granite): the chunked loss (train/loss.py)
replaces their output projection; every other family gets the full logits."""


def chunked_loss_applies(model_type: str | None) -> bool:
    """Whether the train loop uses the chunked loss for this family (None: unknown, assumed Llama-like)."""
    return model_type is None or model_type in DIRECT_LOGITS
