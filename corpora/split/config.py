"""Config of the split stage: which documents of each source are held out. (Imports pydantic only.)

Config version 1 had this section under ``mix.split``; the loader moves it here with a note.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SplitConfig(BaseModel):
    """How each source's validation and test documents are chosen (per source, before mixing)."""

    model_config = ConfigDict(extra="forbid")
    by: Literal["hash", "date"] = "hash"
    """``hash``: the documents with the smallest stable hash of their text (independent of ``mix.seed``,
    so changing the mix never changes the held-out sets). ``date``: every document dated after
    ``after`` is test (BloombergGPT held out later documents); validation is still by hash."""
    after: str | None = None
    """ISO date (``YYYY-MM-DD``); with ``by: date``, documents dated strictly later are test."""
    validation_fraction: float = Field(default=0.01, ge=0, lt=0.5)
    """Share of each source's documents held out for validation (rounded, at least ``min_docs``)."""
    test_fraction: float = Field(default=0.01, ge=0, lt=0.5)
    """Share of each source's documents held out for test (``by: hash`` only)."""
    validation_docs: int | None = Field(default=None, ge=0)
    """Exact validation count per source; overrides ``validation_fraction``."""
    test_docs: int | None = Field(default=None, ge=0)
    """Exact test count per source; overrides ``test_fraction`` (``by: hash`` only)."""
    min_docs: int = Field(default=1, ge=0, le=1000)
    """Each split gets at least this many documents when its fraction is non-zero, so a small source
    still has something to evaluate on."""
    max_docs: int = Field(default=2000, ge=1)
    """Cap per split and source for the hash splits: held-out text beyond a few thousand documents
    only slows evaluation down."""

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.by == "date":
            if not self.after:
                raise ValueError("split.by: date needs split.after (an ISO date such as 2023-01-01)")
            if self.test_docs is not None:
                raise ValueError(
                    "split.test_docs is for split.by: hash; with by: date the test set is every "
                    "document after split.after"
                )
        if self.after is not None:
            import datetime as _dt

            try:
                _dt.date.fromisoformat(self.after[:10])
            except ValueError:
                raise ValueError(f"split.after {self.after!r} is not an ISO date (YYYY-MM-DD)") from None
        return self
