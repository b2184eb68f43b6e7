"""The run's pretraining objective, resolved once, and the special tokens it needs in the tokenizer.

``model.objective`` (``auto | clm | mlm | span``) is resolved here, by the first stage that loads the
model, and recorded in the tokenizer manifest: mix packs blocks for it, train trains with it, eval
scores with it. Resolving it in one place keeps the stages from disagreeing about a model they each
inspect on their own.

The tokens: a masked LM needs a mask token and a padding token (eval batches rows of different
lengths, and a classification probe pads); span corruption needs T5's sentinels ``<extra_id_0>`` ...
and a padding token (T5's decoder starts from it). A pretrained BERT or T5 tokenizer has them already
and nothing changes; a tokenizer trained by ``tokenizer.mode: replace`` gets them appended as special
tokens, after every trained id, so the trained pieces keep their ids.
"""

from __future__ import annotations

from typing import Any

from dapt.train.objectives import infer_objective

SENTINELS = 100
"""Sentinel tokens added for span corruption when the tokenizer has none (T5's ``extra_ids``)."""


def model_config(model_cfg: Any) -> Any:
    """The ``transformers`` config of the run's base model, without loading its weights: the pretrained
    folder's ``config.json``, or the config ``model.from_config`` builds."""
    from transformers import AutoConfig

    if model_cfg.name_or_path:
        return AutoConfig.from_pretrained(
            model_cfg.name_or_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    fc = model_cfg.from_config
    return AutoConfig.for_model(fc.model_type, **fc.extra)


def resolve_objective(model_cfg: Any, config: Any) -> str:
    """``model.objective``, or for ``auto`` the objective the architecture was pretrained with."""
    return model_cfg.objective if model_cfg.objective != "auto" else infer_objective(config)


def ensure_objective_tokens(tok: Any, objective: str) -> list[str]:
    """Add the special tokens ``objective`` needs and ``tok`` lacks; returns what was added (in
    place: ``tok`` is a ``transformers`` tokenizer)."""
    added: list[str] = []
    if objective == "clm":
        return added
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<pad>"})
        added.append("<pad>")
    if objective == "mlm" and tok.mask_token is None:
        tok.add_special_tokens({"mask_token": "<mask>"})
        added.append("<mask>")
    if objective == "span":
        unk = tok.unk_token_id
        if tok.convert_tokens_to_ids("<extra_id_0>") in (None, unk):
            sentinels = [f"<extra_id_{i}>" for i in range(SENTINELS)]
            tok.add_special_tokens({"additional_special_tokens": sentinels})
            added += sentinels
    return added


def set_objective_ids(model: Any, tok: Any, objective: str) -> None:
    """Point the model config's special ids at the tokenizer's: T5's decoder starts from the padding
    token, which a trained tokenizer may have received only now."""
    if objective == "span" and tok.pad_token_id is not None:
        model.config.decoder_start_token_id = int(tok.pad_token_id)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.decoder_start_token_id = int(tok.pad_token_id)
