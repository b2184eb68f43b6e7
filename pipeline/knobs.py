"""Which config fields change a stage's output: declared next to the field, read by the runner.

A stage's fingerprint hashes its config sections. A knob that cannot change what the stage writes (a log
cadence, a licence string, how many checkpoints to keep) is declared with ``json_schema_extra=
NOT_FINGERPRINTED``; :func:`fingerprint_view` leaves such fields out, so changing them keeps the stage
done and never discards its work. Everything not declared counts, so forgetting a declaration can only
cost a rerun, never a stale result.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

NOT_FINGERPRINTED: dict[str, Any] = {"fingerprint": False}
"""``Field(..., json_schema_extra=NOT_FINGERPRINTED)``: the field does not change the stage's output."""


def is_fingerprinted(model_cls: type[BaseModel], name: str) -> bool:
    extra = model_cls.model_fields[name].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("fingerprint") is False)


def fingerprint_view(value: Any) -> Any:
    """``value`` as JSON-able data without the fields declared ``NOT_FINGERPRINTED`` (at any depth)."""
    if isinstance(value, BaseModel):
        cls = type(value)
        return {
            name: fingerprint_view(getattr(value, name))
            for name in cls.model_fields
            if is_fingerprinted(cls, name) and not cls.model_fields[name].exclude
        }
    if isinstance(value, list | tuple):
        return [fingerprint_view(v) for v in value]
    if isinstance(value, dict):
        return {str(k): fingerprint_view(v) for k, v in value.items()}
    return to_jsonable_python(value)


def ignored_fields(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the fields declared NOT_FINGERPRINTED in ``model_cls`` and its sub-models (docs)."""
    out = []
    for name, f in model_cls.model_fields.items():
        if not is_fingerprinted(model_cls, name):
            out.append(prefix + name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(ignored_fields(ann, f"{prefix}{name}."))
    return out
