"""The ``tokenizer`` stage: keep, extend or replace the tokenizer; resize and initialise the model.

Outputs (``<run>/tokenizer/``): ``tokenizer/`` (HF tokenizer folder, plus ``tokenizer.model`` when a
sentencepiece model backs it, for the fast encode path), ``model/`` (HF model folder with the resized,
initialised embeddings; in ``base`` mode with a local pretrained model the manifest points at the
original folder instead of copying it). The manifest carries the fertility table, the measured domain
token reduction, round-trip and id-equality checks, and the base-vs-extended loss check.

Where it runs: the stage table places it on a worker (pipeline/placement.py): the body runs in one Ray
task asking for :func:`resources`, so sentencepiece training and the model's load and resize use a
cluster node's cores and memory, not the head node's.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from dapt.corpora.clean.outputs import kept_dir
from dapt.corpora.split.stage import heldout_rule, read_heldout_ids
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.stages import StageContext
from dapt.tokenizer.encode import SP_FILE, Encoder, load_encoder
from dapt.tokenizer.extend import (
    extend_bpe,
    extend_sp_proto,
    extend_unigram,
    extend_wordpiece,
    pretoken_counts,
    save_extended,
)
from dapt.tokenizer.fertility import fertility, token_reduction
from dapt.tokenizer.objective import (
    ensure_objective_tokens,
    model_config,
    resolve_objective,
    set_objective_ids,
)
from dapt.tokenizer.train import (
    Sample,
    sample_corpus,
    sp_to_hf,
    train_sentencepiece,
    train_with_sweep,
    write_lines,
)


def _local(path: str | None) -> Path | None:
    if path and Path(path).expanduser().exists():
        return Path(path).expanduser().resolve()
    return None


def resources(ctx: StageContext, cluster: Any) -> Any:
    """CPUs for sentencepiece's trainer threads (``tokenizer.num_threads``; None: a whole node), capped
    by the runner at the largest node; no GPU. No memory hint: sentencepiece's peak grows with
    ``sample_bytes`` and the vocabulary in ways not modelled here, and a guess could only mislead."""
    from dapt.pipeline.placement import TaskResources

    n = ctx.cfg.tokenizer.num_threads
    return TaskResources(num_cpus=n or cluster.max_cpus or 1, reason=f"tokenizer.num_threads: {n}")


def _load_base_tokenizer(ctx: StageContext) -> tuple[Any, str | None, bytes | None]:
    """The base HF tokenizer (or None), its id/path, and its sentencepiece model bytes if it has one."""
    from transformers import AutoTokenizer

    m = ctx.cfg.model
    path = m.tokenizer_path
    if path is None:
        return None, None, None
    rev = m.revision if m.tokenizer is None else None
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=rev, trust_remote_code=m.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - report any load failure as a config problem
        key = "model.tokenizer" if m.tokenizer else "model.name_or_path"
        raise ConfigError(
            f"{ctx.cfg.config_path or 'config'}: {key}: cannot load tokenizer {path!r}: {e}"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise InputError(f"{path}: tokenizer has no fast (Rust) backend; dapt needs one")
    proto = None
    local = _local(path)
    if local is not None and (local / SP_FILE).is_file():
        proto = (local / SP_FILE).read_bytes()
    elif local is None:
        try:
            from huggingface_hub import hf_hub_download

            proto = Path(hf_hub_download(path, SP_FILE, revision=rev)).read_bytes()
        except Exception:  # noqa: BLE001 - most hub tokenizers have no sentencepiece file
            proto = None
    return tok, path, proto


def _save_tokenizer(tok: Any, out: Path, proto: bytes | None) -> None:
    tok.save_pretrained(str(out))
    if proto is not None:
        (out / SP_FILE).write_bytes(proto)


def _load_model(ctx: StageContext, vocab_rows: int, objective: str) -> Any:
    """The base model: pretrained from ``model.name_or_path`` or random from ``model.from_config``
    (whose vocabulary size is the tokenizer's, ``vocab_rows``), through the objective's Auto class."""
    import torch
    from transformers import AutoConfig

    from dapt.train.objectives import auto_class

    auto = auto_class(objective)
    m = ctx.cfg.model
    if m.name_or_path:
        try:
            return auto.from_pretrained(
                m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code, dtype="auto"
            )
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f"{ctx.cfg.config_path or 'config'}: model.name_or_path: cannot load {m.name_or_path!r}: {e}"
            ) from None
    fc = m.from_config
    assert fc is not None
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_rows,
        hidden_size=fc.hidden_size,
        intermediate_size=fc.intermediate_size,
        num_hidden_layers=fc.num_hidden_layers,
        num_attention_heads=fc.num_attention_heads,
        num_key_value_heads=fc.num_key_value_heads or fc.num_attention_heads,
        max_position_embeddings=fc.max_position_embeddings,
        tie_word_embeddings=fc.tie_word_embeddings,
    )
    kwargs.update(fc.extra)
    try:
        conf = AutoConfig.for_model(fc.model_type, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{ctx.cfg.config_path or 'config'}: model.from_config: {e}") from None
    torch.manual_seed(fc.seed)
    if fc.vocab_size != vocab_rows:
        ctx.log.info(
            "from_config: vocab_size %d taken from the tokenizer (config said %d)", vocab_rows, fc.vocab_size
        )
    return auto.from_config(conf)


def _set_special_ids(model: Any, tok: Any) -> None:
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tok, key, None)
        setattr(model.config, key, value)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            setattr(gen, key, value)


def _save_model(model: Any, tok: Any, out: Path, objective: str) -> None:
    _set_special_ids(model, tok)
    set_objective_ids(model, tok, objective)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _roundtrip(tok: Any, enc: Encoder, docs: list[str]) -> dict[str, Any]:
    """decode(encode(x)) == x with the HF tokenizer's decoder on the encoder's ids; ``lossy_normalizer``
    marks a tokenizer whose normalizer changes the text, for which failures are expected."""
    failed = 0
    example = None
    for doc, ids in zip(docs, enc.encode_batch(docs), strict=True):
        if tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != doc:
            failed += 1
            example = example or doc[:80]
    out = {"docs": len(docs), "failed": failed, **({"example": example} if example else {})}
    normalizer = tok.backend_tokenizer.normalizer
    if normalizer is not None and any(normalizer.normalize_str(d) != d for d in docs):
        # BERT's uncased normalizer lowercases and strips accents: no decode can give the text back
        out["lossy_normalizer"] = True
    return out


def _id_equality(folder: Path, docs: list[str], limit: int = 5000) -> dict[str, Any] | None:
    """sentencepiece vs AutoTokenizer ids on held-out lines (None when there is no sp model)."""
    if not (folder / SP_FILE).is_file():
        return None
    import sentencepiece as spm
    from transformers import AutoTokenizer

    lines = [ln for d in docs for ln in d.split("\n") if ln][:limit]
    sp = spm.SentencePieceProcessor(model_file=str(folder / SP_FILE))
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = [tok(ln, add_special_tokens=False)["input_ids"] for ln in lines]
    mism = sum(a != b for a, b in zip(sp.encode(lines, out_type=int), hf, strict=True))
    return {"lines": len(lines), "mismatches": mism}


def _loss(
    model: Any, batch: list[list[int]], old_vocab: int | None = None
) -> tuple[list[float], list[float]]:
    """Mean next-token cross-entropy per sequence over all logits, and over the first ``old_vocab``
    logits (the base vocabulary) from the same forward pass."""
    import torch

    full, sliced = [], []
    model.eval()
    with torch.no_grad():
        for ids in batch:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].float()
            full.append(float(torch.nn.functional.cross_entropy(logits, x[0, 1:])))
            if old_vocab is not None:
                sliced.append(float(torch.nn.functional.cross_entropy(logits[:, :old_vocab], x[0, 1:])))
    return full, sliced


def _bits_per_byte(model: Any, tok: Any, texts: list[str]) -> float:
    """Bits per UTF-8 byte of ``texts`` (each after a BOS/EOS token, so every text token is
    predicted): comparable across tokenizers, unlike per-token loss."""
    import math

    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    batch = [
        ([start] if start is not None else []) + tok(t, add_special_tokens=False)["input_ids"] for t in texts
    ]
    nats = 0.0
    for ids, (full, _) in zip(batch, (_loss(model, [b]) for b in batch), strict=True):
        nats += full[0] * (len(ids) - 1)
    return nats / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


def _domain_candidates(
    sample: Sample, ctx: StageContext, new_tokens: int
) -> tuple[list[tuple[str, int]], Path]:
    """Pieces of a Unigram model trained on the domain sample, with their use counts there."""
    import sentencepiece as spm

    t = ctx.cfg.tokenizer
    docs = sample.train_docs("domain")
    lines = ctx.work_dir / "domain.txt"
    if write_lines(docs, lines) == 0:
        raise InputError("no domain text in the clean output to extend the tokenizer with")
    size = t.domain_vocab_size or max(2 * new_tokens, 1000)
    try:  # a soft limit: a small domain sample gives a smaller model instead of an error
        model = train_sentencepiece(
            lines, ctx.work_dir / "domain_sp", t, size, model_type="unigram", hard_limit=False
        )
    except (ValueError, RuntimeError) as e:
        raise InputError(f"cannot train a domain tokenizer on the domain sample: {e}") from None
    sp = spm.SentencePieceProcessor(model_file=str(model))
    counts = [0] * sp.get_piece_size()
    for ids in sp.encode(docs, out_type=int):
        for i in ids:
            counts[i] += 1
    cands = [
        (sp.id_to_piece(i), counts[i])
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
    ]
    ctx.log.info("domain model: %d pieces", sp.get_piece_size())
    return cands, model


def run(ctx: StageContext) -> dict[str, Any]:
    from transformers import AutoTokenizer

    cfg = ctx.cfg
    t = cfg.tokenizer
    m = cfg.model
    for child in ctx.work_dir.iterdir():  # no resumable state here: start clean
        shutil.rmtree(child) if child.is_dir() else child.unlink()

    kept = kept_dir(ctx)
    ids_file = ctx.require_output("split", "heldout_ids")
    rule = heldout_rule(read_heldout_ids(ids_file), ctx.upstream_manifest("split"))
    sources = [(s.name, s.kind, s.weight) for s in cfg.sources]
    sample = sample_corpus(kept, sources, t, cfg.seed, exclude=rule)
    heldout_all = sample.heldout_docs()

    base_tok, base_tok_path, base_proto = _load_base_tokenizer(ctx)
    try:
        objective = resolve_objective(m, model_config(m))
    except Exception as e:  # noqa: BLE001 - any config load failure is a config problem
        raise ConfigError(
            f"{cfg.config_path or 'config'}: model: cannot read the model's config: {e}"
        ) from None
    ctx.log.info("objective: %s (model.objective: %s)", objective, m.objective)
    if base_tok is None and t.mode != "replace":
        raise ConfigError(
            f"{cfg.config_path or 'config'}: model.tokenizer: mode {t.mode!r} with model.from_config needs a "
            "tokenizer (set model.tokenizer, or tokenizer.mode: replace to train one)"
        )
    out_tok = ctx.out_dir / "tokenizer"
    out_model = ctx.out_dir / "model"
    work = ctx.work_dir
    folders: dict[str, Path] = {}
    if base_tok is not None:
        _save_tokenizer(base_tok, work / "base_tokenizer", base_proto)
        folders["base"] = work / "base_tokenizer"

    result: dict[str, Any] = {"mode": t.mode, "objective": objective}
    objective_tokens: list[str] = []
    added: list[dict[str, Any]] = []
    model_ref: str
    new_tok: Any

    if t.mode == "base":
        missing = ensure_objective_tokens(AutoTokenizer.from_pretrained(folders["base"]), objective)
        if missing:
            raise ConfigError(
                f"{cfg.config_path or 'config'}: model.objective {objective} needs {missing[:3]} in the tokenizer, "
                "which tokenizer.mode: base cannot add (use extend or replace)"
            )
        _save_tokenizer(base_tok, out_tok, base_proto)
        new_tok = AutoTokenizer.from_pretrained(str(out_tok))
        local_model = _local(m.name_or_path)
        if local_model is not None:
            model_ref = str(local_model)  # pretrained and local: point at it, do not copy
        else:
            model = _load_model(ctx, len(base_tok), objective)
            _save_model(model, new_tok, out_model, objective)
            model_ref = "model"

    elif t.mode == "extend":
        tj = json.loads(base_tok.backend_tokenizer.to_str())
        kind = tj["model"]["type"]
        if kind == "Unigram":
            cands, domain_model = _domain_candidates(sample, ctx, t.new_tokens)
            ext = extend_unigram(tj, cands, t.new_tokens, t.min_frequency, allow_digits=not t.split_digits)
            proto = extend_sp_proto(base_proto, ext.added) if base_proto is not None else None
            sp_to_hf(domain_model, work / "domain_tokenizer")
            folders["trained"] = work / "domain_tokenizer"
        elif kind == "BPE":
            counts = pretoken_counts(base_tok.backend_tokenizer, sample.train_docs("domain"))
            ext = extend_bpe(tj, counts, t.new_tokens, t.min_frequency, allow_digits=not t.split_digits)
            proto = None
        elif kind == "WordPiece":  # BERT family: whole domain words appended, ids kept
            counts = pretoken_counts(base_tok.backend_tokenizer, sample.train_docs("domain"))
            ext = extend_wordpiece(tj, counts, t.new_tokens, t.min_frequency, allow_digits=not t.split_digits)
            proto = None
        else:
            raise InputError(
                f"{base_tok_path}: cannot extend a {kind} tokenizer (Unigram, BPE and WordPiece are supported)"
            )
        added = ext.added
        new_tok = save_extended(base_tok, ext, out_tok, proto)
        objective_tokens = ensure_objective_tokens(new_tok, objective)
        if objective_tokens:
            new_tok.save_pretrained(str(out_tok))
        base_vocab, new_vocab = base_tok.get_vocab(), new_tok.get_vocab()
        changed = [k for k, v in base_vocab.items() if new_vocab.get(k) != v]
        if changed:
            raise RuntimeError(f"extend changed the ids of {len(changed)} base tokens, e.g. {changed[:3]}")
        ctx.log.info("extend: added %d tokens (%s base)", len(added), kind)
        result["extend"] = {
            "base_model_type": kind,
            "single_token_words": _single_token_words(new_tok, added) if kind == "BPE" else None,
            "examples": [a["token"] for a in added[:30]],
        }

    else:  # replace
        lines = work / "sample.txt"
        n_lines = write_lines(sample.train_docs(), lines)
        if n_lines == 0:
            raise InputError("no text in the clean output to train a tokenizer on")
        sp_model, sweep = train_with_sweep(lines, work, t, heldout_all)
        sp_to_hf(sp_model, out_tok)
        new_tok = AutoTokenizer.from_pretrained(str(out_tok))
        objective_tokens = ensure_objective_tokens(new_tok, objective)
        if objective_tokens:
            new_tok.save_pretrained(str(out_tok))
        result["sweep"] = sweep

    output_name = {"base": "base", "extend": "extended", "replace": "trained"}[t.mode]
    folders[output_name] = out_tok

    # The model: resize before any sharding, initialise new rows from sub-token means.
    if t.mode != "base":
        from dapt.tokenizer.embeddings import plan_rows, resize_and_init

        old_len = len(base_tok) if base_tok is not None else None
        loss_texts: list[list[int]] = []
        causal = objective == "clm"  # the loss checks score next-token prediction
        if t.mode == "extend" and t.loss_check_docs and causal:
            loss_texts = _no_new_token_texts(
                base_tok, new_tok, heldout_all, t.loss_check_docs, t.loss_check_tokens
            )
        if base_tok is None:
            model = _load_model(ctx, len(new_tok), objective)  # random init at the trained tokenizer's size
            init = {"initialised": 0, "note": "random init from model.from_config: no base to transfer"}
        else:
            model = _load_model(ctx, len(base_tok), objective)
            ctx.log.info("loaded the base model")
            rows = model.get_input_embeddings().weight.shape[0]
            if rows < len(base_tok):
                raise InputError(f"model has {rows} embedding rows but its tokenizer {len(base_tok)} tokens")
            base_losses = _loss(model, loss_texts)[0] if loss_texts else []
            bpb_texts = [d[:600] for d in heldout_all if d.strip()][: t.loss_check_docs] if causal else []
            if t.mode == "replace" and bpb_texts:
                base_bpb = _bits_per_byte(model, base_tok, bpb_texts)
            ctx.log.info("base losses on %d texts", len(loss_texts))
            ids = list(range(len(new_tok))) if t.mode == "replace" else [a["id"] for a in added]
            plan = plan_rows(new_tok, base_tok, ids)
            new_rows = len(new_tok) if t.mode == "replace" else max(rows, len(new_tok))
            init = resize_and_init(model, plan, new_rows, t.output_init, replace=t.mode == "replace")
            ctx.log.info("resized %s", init)
            if t.mode == "replace" and bpb_texts:
                result["transfer_check"] = {
                    "docs": len(bpb_texts),
                    "base_bits_per_byte": round(base_bpb, 4),
                    "replaced_bits_per_byte": round(_bits_per_byte(model, new_tok, bpb_texts), 4),
                }
            if loss_texts:
                full, sliced = _loss(model, loss_texts, old_vocab=old_len)
                result["loss_check"] = {
                    "docs": len(loss_texts),
                    "base": round(sum(base_losses) / len(base_losses), 6),
                    "extended_old_vocab": round(sum(sliced) / len(sliced), 6),
                    "extended_full_vocab": round(sum(full) / len(full), 6),
                    "max_abs_diff_old_vocab": max(
                        abs(a - b) for a, b in zip(base_losses, sliced, strict=True)
                    ),
                }
        result["embedding_init"] = init
        _save_model(model, new_tok, out_model, objective)
        ctx.log.info("saved the model")
        model_ref = "model"
        del model

    # Checks and fertility on the held-out documents.
    encoders = {name: load_encoder(folder) for name, folder in folders.items()}
    enc = encoders[output_name]
    table = fertility(encoders, sample.heldout, base="base")
    ctx.log.info("fertility done")
    domain_sources = [s for s, k in sample.kinds.items() if k == "domain"]
    reduction = token_reduction(table, domain_sources) if base_tok is not None else {}
    result.update(
        {
            "outputs": {"tokenizer": "tokenizer", "model": model_ref},
            "base": {"model": m.name_or_path, "tokenizer": base_tok_path},
            "base_model": {
                "name_or_path": m.name_or_path,
                "revision": m.revision,
                "from_config": m.from_config.model_dump(mode="json") if m.from_config else None,
                "pretraining_tokens": m.pretraining_tokens,
            },
            "trained_on": {
                "split": "train",
                "documents": sum(len(v) for v in sample.train.values()),
                "heldout_excluded": sum(sample.excluded.values()),
                "heldout_ids_file": str(ids_file),
            },
            "vocab_size": len(new_tok),
            "added_tokens": len(added),
            "objective_tokens": objective_tokens,
            "eos_id": enc.eos_id,
            "bos_id": new_tok.bos_token_id,
            "encoder_backend": enc.backend,
            "fertility": table,
            "domain_token_reduction": reduction,
            "roundtrip": {
                name: _roundtrip(AutoTokenizer.from_pretrained(str(f)), encoders[name], heldout_all)
                for name, f in folders.items()
            },
            "id_equality": _id_equality(out_tok, heldout_all),
            "counts": {
                "train_docs": sum(len(v) for v in sample.train.values()),
                "heldout_docs": len(heldout_all),
                "train_bytes": sum(len(d.encode("utf-8")) for d in sample.train_docs()),
                "added_tokens": len(added),
                "vocab_size": len(new_tok),
            },
        }
    )
    ctx.log.info("tokenizer %s: vocab %d, domain token reduction %s", t.mode, len(new_tok), reduction)
    return result


def _single_token_words(tok: Any, added: list[dict[str, Any]]) -> dict[str, int]:
    """How many added BPE words now encode as one token when they occur as a word."""
    words = sorted({a["word"] for a in added if a.get("word") and a["token"] == a["word"]})
    model = tok.backend_tokenizer.model
    single = sum(1 for w in words if len(model.tokenize(w)) == 1)
    return {"words": len(words), "single_token": single}


def _no_new_token_texts(
    base_tok: Any, new_tok: Any, docs: list[str], n: int, max_tokens: int
) -> list[list[int]]:
    """Up to ``n`` held-out texts (as base ids, truncated) whose extended encoding uses no new token
    and equals the base encoding: the texts on which base and extended losses must agree."""
    old = len(base_tok)
    out = []
    for d in docs:
        for chunk in re.split(r"(?<=[.!?;:])\s+|\n", d):
            if len(out) >= n:
                return out
            a = base_tok(chunk, add_special_tokens=False)["input_ids"]
            b = new_tok(chunk, add_special_tokens=False)["input_ids"]
            if len(a) >= 8 and a == b and max(b) < old:
                out.append(a[:max_tokens])
    return out
