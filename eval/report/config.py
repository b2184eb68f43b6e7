"""Config of this component's section of the run config. (Imports pydantic only.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
