"""Config of the eval stage. (Imports pydantic only.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=list)
    """lm-eval task names (built-in, or the project's own YAML tasks under eval/tasks/)."""
