"""Config of the report stage (the ``report:`` section of the run config).

Everything the report *measures* comes from the upstream manifests; the fields here are only the things a
person must state because no stage can know them (the licence of the adapted model, its intended use) and
knobs of the rendering itself. Imports pydantic and the frame's ``knobs`` only (the CLI loads it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dapt.pipeline.knobs import NOT_FINGERPRINTED


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)
    """Report title; defaults to ``dapt report: <run name>``."""

    model_name: str | None = Field(default=None, max_length=200)
    """Name of the adapted model in the model card; defaults to ``<run name>``."""

    developed_by: str | None = Field(default=None, max_length=200)
    """Who trained the model (model card "Developed by"); "not recorded" when unset."""

    license: str | None = Field(default=None, max_length=100)
    """SPDX id of the adapted model's licence (model card metadata). It must be compatible with the base
    model's and the training data's licences, which only a person can decide, so there is no default."""

    language: list[str] = Field(default_factory=lambda: ["en"], max_length=50)
    """ISO 639-1 codes of the training text's languages (model card metadata)."""

    intended_use: str | None = Field(default=None, max_length=4000)
    """Direct-use statement for the model card; a conservative default (research on domain adaptation of
    the base model) is used when unset."""

    out_of_scope_use: str | None = Field(default=None, max_length=4000)
    """Out-of-scope uses for the model card; a default warning against unreviewed financial advice and
    high-stakes decisions is used when unset."""

    copy_model_card: bool = Field(
        default=True,
        description="Deprecated, no effect: the publish stage copies the model card into the final model "
        "folder as README.md. Still accepted so that older configs load.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    """Deprecated and ignored (kept so that older configs load; the report logs a warning when it is set).
    The report writes the card only into its own folder (``model_card.md``); the ``publish`` stage copies
    it as ``README.md`` into the final model folder, so no stage writes into the train stage's folder."""

    plot_dpi: int = Field(default=100, ge=50, le=300)
    """Resolution of the embedded PNG plots; 100 keeps the self-contained HTML small (~50 KB per plot)."""

    max_curve_points: int = Field(default=2000, ge=10, le=1_000_000)
    """Training curves longer than this are thinned (evenly, keeping the last point) before plotting, so a
    million-step run still renders quickly; tables and conclusions always use every point."""

    significance_level: float = Field(default=0.05, gt=0.0, lt=1.0)
    """Used only for rows of results.json that carry a ``p_value`` but no ``significant`` flag."""
