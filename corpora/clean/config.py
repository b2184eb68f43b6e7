"""Config of the clean stage. (Owned by the clean component; imports pydantic only.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StepSpec(BaseModel):
    """One cleaning step in a source's step list: its registered name and its parameters."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class CleanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
