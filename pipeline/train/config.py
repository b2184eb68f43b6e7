"""Config of the train stage. (Imports pydantic only.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq_len: int = Field(default=512, ge=8, le=1 << 20)
    """Tokens per training sequence; the mix stage packs blocks of ``seq_len + 1`` tokens."""
