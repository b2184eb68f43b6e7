"""Which config fields change a stage's output: declared next to the field, read by the runner.

A stage's fingerprint hashes its config sections. A knob that cannot change what the stage writes (a log
cadence, a licence string, how many checkpoints to keep) is declared with ``json_schema_extra=
NOT_FINGERPRINTED``; :func:`fingerprint_view` leaves such fields out, so changing them keeps the stage
done and never discards its work. Everything not declared counts, so forgetting a declaration can only
cost a rerun, never a stale result.

A second, weaker declaration, ``CONTINUES_RUN``, is for knobs that do change the output but with which
a stage may *continue* its saved state rather than start over: a training budget (``train.max_steps``)
makes a new result, yet the checkpoints of the shorter run are the first steps of the longer one. Such
fields stay in the fingerprint (the stage reruns) and are left out of the *state key*
(:func:`state_view`), which is what a stage keys its resumable work by (``ctx.state_key``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

NOT_FINGERPRINTED: dict[str, Any] = {"fingerprint": False}
"""``Field(..., json_schema_extra=NOT_FINGERPRINTED)``: the field does not change the stage's output."""


CONTINUES_RUN: dict[str, Any] = {"continues_run": True}
"""``Field(..., json_schema_extra=CONTINUES_RUN)``: the field changes the output, but saved state of a
run with another value may be continued (it is left out of ``ctx.state_key``)."""


def _extra(model_cls: type[BaseModel], name: str) -> dict[str, Any]:
    extra = model_cls.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def is_fingerprinted(model_cls: type[BaseModel], name: str) -> bool:
    return _extra(model_cls, name).get("fingerprint") is not False


def continues_run(model_cls: type[BaseModel], name: str) -> bool:
    return _extra(model_cls, name).get("continues_run") is True


def _view(value: Any, keep: Any) -> Any:
    if isinstance(value, BaseModel):
        cls = type(value)
        return {
            name: _view(getattr(value, name), keep)
            for name in cls.model_fields
            if keep(cls, name) and not cls.model_fields[name].exclude
        }
    if isinstance(value, list | tuple):
        return [_view(v, keep) for v in value]
    if isinstance(value, dict):
        return {str(k): _view(v, keep) for k, v in value.items()}
    return to_jsonable_python(value)


def fingerprint_view(value: Any) -> Any:
    """``value`` as JSON-able data without the fields declared ``NOT_FINGERPRINTED`` (at any depth)."""
    return _view(value, is_fingerprinted)


def state_view(value: Any) -> Any:
    """:func:`fingerprint_view` also without the ``CONTINUES_RUN`` fields: what resumable state depends on."""
    return _view(value, lambda cls, name: is_fingerprinted(cls, name) and not continues_run(cls, name))


def fields_where(model_cls: type[BaseModel], pred: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``model_cls`` and its sub-models for which ``pred(cls, name)`` holds."""
    out = []
    for name, f in model_cls.model_fields.items():
        if pred(model_cls, name):
            out.append(prefix + name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(fields_where(ann, pred, f"{prefix}{name}."))
    return out


def continuing_fields(model_cls: type[BaseModel]) -> list[str]:
    """Dotted names of the fields declared CONTINUES_RUN in ``model_cls`` and its sub-models."""
    return fields_where(model_cls, continues_run)


def ignored_fields(model_cls: type[BaseModel]) -> list[str]:
    """Dotted names of the fields declared NOT_FINGERPRINTED in ``model_cls`` and its sub-models (docs)."""
    return fields_where(model_cls, lambda cls, name: not is_fingerprinted(cls, name))
