"""Config of the mix stage. (Owned by the mix component; imports pydantic only.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MixConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
