"""Downstream probe for masked LMs: fine-tune a classifier briefly, base vs adapted, over several seeds.

Why: a masked LM has no likelihood to compare, and the pseudo-log-likelihood (``eval/pll.py``) says how
well it fills gaps, not whether its representations got more useful. "Don't Stop Pretraining"
(Gururangan et al. 2020) answers that the way users will use the encoder: fine-tune it on an in-domain
classification task and on a general one, base and adapted under the same recipe, and compare
accuracy and macro-F1. Domain-adaptive pretraining should help the first and not hurt the second.

Recipe (the same for both models): the saved encoder is loaded with
``AutoModelForSequenceClassification`` (an ``...ForMaskedLM`` folder gives its encoder weights; the
classification head, and BERT's pooler when the folder has none, are initialised fresh under
``torch.manual_seed(seed)``), then trained for ``steps`` AdamW steps (linear warm-up over
``warmup_ratio`` of the steps, then linear decay to 0; gradient norm clipped at 1) on batches drawn in a
seeded order, and the test items are predicted. Everything random comes from the seed (inside a forked
torch RNG, so the caller's random state is untouched), so a seed run twice on the CPU gives identical
predictions; CUDA kernels need not be bit-reproducible, so on a GPU expect near, not exact, repeats.
Fine-tuning outcomes vary a lot from seed to seed on small
sets (Dodge et al. 2020), hence several seeds, each reported.

Texts are encoded with the tokenizer's special tokens (``[CLS] ... [SEP]``), truncated to
``max_length``, and follow dapt's text-is-text rule (``dapt.tokenizer.encode.text_only``, as every
tokenizer the eval stage loads). Padding uses the model's ``pad_token_id`` (RoBERTa derives positions from
it), masked out by the attention mask.

Comparison (:func:`compare_probe`): both models predict the same test items, so the test is paired over
items. Accuracy uses each item's correctness averaged over seeds (a ratio of sums, ``paired_bootstrap``);
macro-F1 is not a sum over items, so ``paired_bootstrap_corpus`` recomputes each seed's macro-F1 on each
resample and averages over seeds. Both are the shifted-null paired bootstrap of ``eval/significance.py``,
and the p-values get Holm's correction within each probe set (``compare.p_family``). The test resamples
items with the seeds held fixed: it asks whether these fine-tuning runs differ on this population of
items; the spread over seeds is reported next to it (``base_seed_std``, ``adapted_seed_std``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from dapt.eval.compare import _row_common, adjust_rows, p_family
from dapt.eval.significance import paired_bootstrap, paired_bootstrap_corpus


def label_index(item: dict, labels: Sequence[str]) -> int:
    """The class index of an item: ``label`` as a name in ``labels`` or an index; else the FPB-schema
    ``gold`` index."""
    lb = item.get("label", item.get("gold"))
    if isinstance(lb, str):
        if lb not in labels:
            raise ValueError(f"label {lb!r} of item {item.get('id')!r} is not one of {list(labels)}")
        return list(labels).index(lb)
    if isinstance(lb, int | np.integer) and 0 <= int(lb) < len(labels):
        return int(lb)
    raise ValueError(f"item {item.get('id')!r} has no usable label ({lb!r}) for {len(labels)} classes")


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``gold`` or ``pred`` (scikit-learn's
    ``f1_score(average="macro")`` without ``labels``): a class absent from both, as happens in a bootstrap
    resample, is not counted as an F1 of 0."""
    g = np.asarray(gold, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if len(g) == 0:
        return float("nan")
    k = int(max(g.max(), p.max())) + 1
    tp = np.bincount(g[g == p], minlength=k)
    n_gold = np.bincount(g, minlength=k)
    n_pred = np.bincount(p, minlength=k)
    present = (n_gold + n_pred) > 0
    f1 = 2 * tp[present] / (n_gold[present] + n_pred[present])
    return float(f1.mean())


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No load report and progress bar per seed: the fresh head is expected, and ``fresh_weights``
    records which weights were initialised."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _encode(tok: Any, texts: list[str], max_length: int) -> list[list[int]]:
    return tok(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]


def _batch(ids: list[list[int]], rows: Sequence[int], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids[i]) for i in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    m = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        x[r, : len(ids[i])] = torch.tensor(ids[i])
        m[r, : len(ids[i])] = 1
    return {"input_ids": x.to(device), "attention_mask": m.to(device)}


def _rng_devices(device: Any) -> list[int]:
    import torch

    d = torch.device(device)
    return [d.index if d.index is not None else torch.cuda.current_device()] if d.type == "cuda" else []


def _order(n: int, total: int, seed: int) -> list[int]:
    """``total`` item indices: seeded permutations of ``range(n)`` one after the other (epochs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < total:
        out.extend(torch.randperm(n, generator=g).tolist())
    return out[:total]


def _one_seed(
    model_dir: str,
    ids_train: list[list[int]],
    y_train: list[int],
    ids_test: list[list[int]],
    n_labels: int,
    seed: int,
    steps: int,
    lr: float,
    batch_size: int,
    warmup_ratio: float,
    weight_decay: float,
    eval_batch_size: int,
    device: Any,
) -> tuple[list[int], dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    t0 = time.perf_counter()
    torch.manual_seed(seed)  # the fresh head (and dropout below) draw from this
    with _quiet_loading():
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=n_labels, dtype=torch.float32, output_loading_info=True
        )
    fresh = sorted(loading["missing_keys"])
    params = dict(model.named_parameters())
    n_fresh = sum(params[k].numel() for k in fresh if k in params)
    if n_fresh > 0.5 * sum(p.numel() for p in params.values()):
        raise ValueError(
            f"{model_dir}: most weights of the classifier were not in the checkpoint ({fresh[:5]} ...): "
            "not an encoder this architecture can load"
        )
    model.to(device)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    losses: list[float] = []
    if steps > 0:
        # no weight decay on biases and norm scales (1-D), as in the usual fine-tuning recipe
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
        )
        sched = get_linear_schedule_with_warmup(opt, math.ceil(warmup_ratio * steps), steps)
        order = _order(len(ids_train), steps * batch_size, seed)
        y = torch.tensor(y_train)
        model.train()
        for s in range(steps):
            rows = order[s * batch_size : (s + 1) * batch_size]
            logits = model(**_batch(ids_train, rows, pad_id, device)).logits
            loss = F.cross_entropy(logits.float(), y[rows].to(logits.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    model.eval()
    preds = [0] * len(ids_test)
    by_len = sorted(range(len(ids_test)), key=lambda i: len(ids_test[i]))  # less padding
    with torch.no_grad():
        for lo in range(0, len(by_len), eval_batch_size):
            rows = by_len[lo : lo + eval_batch_size]
            out = model(**_batch(ids_test, rows, pad_id, device)).logits.argmax(-1).tolist()
            for i, p in zip(rows, out, strict=True):
                preds[i] = int(p)
    tail = losses[-max(1, len(losses) // 10) :]
    info = {
        "fresh_weights": fresh,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": float(np.mean(tail)) if losses else None,
        "seconds": time.perf_counter() - t0,
    }
    del model
    return preds, info


def probe(
    model_dir: str,
    tokenizer_dir: str,
    train: list[dict],
    test: list[dict],
    labels: list[str],
    seeds: list[int],
    steps: int,
    lr: float,
    batch_size: int,
    max_length: int,
    device: Any,
    *,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    eval_batch_size: int = 32,
    name: str = "probe",
) -> dict[str, Any]:
    """Fine-tune a fresh classification head (and the encoder) from ``model_dir`` once per seed on
    ``train`` (``{"text", "label"}`` items; FPB-schema ``gold`` also works) and predict ``test``.

    Returns a JSON-able dict: ``name``, ``model``, ``tokenizer``, ``labels``, ``settings``,
    ``fresh_weights`` (the weights not in the checkpoint, initialised by the seed: the head), ``ids`` and
    ``gold`` (test items in order), ``per_seed`` (``seed``, ``accuracy``, ``macro_f1``, first and last
    training loss, ``seconds``), ``predictions`` (one list per seed), ``correct`` (per test item, one 0/1
    per seed: what :func:`compare_probe` pairs), and ``accuracy`` / ``macro_f1`` (mean over seeds) with
    their ``*_std`` over seeds and the total ``seconds``. Torch's thread count is left as the caller set it.
    """
    import torch
    from transformers import AutoTokenizer

    from dapt.tokenizer.encode import text_only

    if not train or not test:
        raise ValueError(f"probe {name!r}: needs train and test items ({len(train)} / {len(test)})")
    if len(labels) < 2 or not seeds:
        raise ValueError(f"probe {name!r}: needs >= 2 labels and >= 1 seed")
    if steps < 0 or batch_size < 1 or max_length < 4:
        raise ValueError(f"probe {name!r}: steps >= 0, batch_size >= 1 and max_length >= 4")
    t0 = time.perf_counter()
    tok = text_only(AutoTokenizer.from_pretrained(tokenizer_dir), tokenizer_dir)
    ids_train = _encode(tok, [str(it["text"]) for it in train], max_length)
    ids_test = _encode(tok, [str(it["text"]) for it in test], max_length)
    y_train = [label_index(it, labels) for it in train]
    gold = [label_index(it, labels) for it in test]
    per_seed, predictions, fresh = [], [], []
    for seed in seeds:
        with torch.random.fork_rng(devices=_rng_devices(device)):  # the caller's RNG state is left alone
            preds, info = _one_seed(
                model_dir,
                ids_train,
                y_train,
                ids_test,
                len(labels),
                int(seed),
                steps,
                lr,
                batch_size,
                warmup_ratio,
                weight_decay,
                eval_batch_size,
                device,
            )
        fresh = info.pop("fresh_weights")
        acc = float(np.mean(np.asarray(preds) == np.asarray(gold)))
        per_seed.append({"seed": int(seed), "accuracy": acc, "macro_f1": macro_f1(gold, preds), **info})
        predictions.append(preds)
    accs = [s["accuracy"] for s in per_seed]
    f1s = [s["macro_f1"] for s in per_seed]
    return {
        "name": name,
        "model": str(model_dir),
        "tokenizer": str(tokenizer_dir),
        "labels": list(labels),
        "settings": {
            "seeds": [int(s) for s in seeds],
            "steps": steps,
            "lr": lr,
            "batch_size": batch_size,
            "max_length": max_length,
            "warmup_ratio": warmup_ratio,
            "weight_decay": weight_decay,
            "n_train": len(train),
            "n_test": len(test),
        },
        "fresh_weights": fresh,
        "ids": [str(it.get("id", i)) for i, it in enumerate(test)],
        "gold": gold,
        "per_seed": per_seed,
        "predictions": predictions,
        "correct": [[int(p[i] == g) for p in predictions] for i, g in enumerate(gold)],
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "macro_f1": float(np.mean(f1s)),
        "macro_f1_std": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0,
        "seconds": time.perf_counter() - t0,
    }


def _mean_macro_f1(items: list[tuple[int, tuple[int, ...]]]) -> float:
    """Mean over seeds of macro-F1, for items ``(gold, (prediction per seed))``."""
    gold = [g for g, _ in items]
    n_seeds = len(items[0][1])
    return float(np.mean([macro_f1(gold, [p[s] for _, p in items]) for s in range(n_seeds)]))


def compare_probe(
    base: dict[str, Any], adapted: dict[str, Any], iters: int, alpha: float, seed: int
) -> list[dict[str, Any]]:
    """Rows ``probe/<set>/acc`` and ``probe/<set>/macro_f1`` comparing two :func:`probe` results on the
    same test items: the fields of ``compare.task_rows``' rows (``delta = adapted - base``, paired
    bootstrap CI and p-value, Holm within the set) plus ``n_seeds``, ``seeds`` and the seed spreads."""
    if base["ids"] != adapted["ids"] or base["gold"] != adapted["gold"]:
        raise ValueError("compare_probe needs both models' predictions on the same test items")
    if list(base["labels"]) != list(adapted["labels"]):
        raise ValueError(f"compare_probe: labels differ ({base['labels']} vs {adapted['labels']})")
    name = adapted.get("name") or base.get("name") or "probe"
    b_acc = [float(np.mean(c)) for c in base["correct"]]
    a_acc = [float(np.mean(c)) for c in adapted["correct"]]
    b_items = [(g, tuple(int(p[i]) for p in base["predictions"])) for i, g in enumerate(base["gold"])]
    a_items = [(g, tuple(int(p[i]) for p in adapted["predictions"])) for i, g in enumerate(adapted["gold"])]
    tests = {
        "acc": paired_bootstrap(b_acc, a_acc, iters=iters, seed=seed),
        "macro_f1": paired_bootstrap_corpus(b_items, a_items, _mean_macro_f1, iters=iters, seed=seed),
    }
    spread = {"acc": "accuracy_std", "macro_f1": "macro_f1_std"}
    rows = []
    for metric, st in tests.items():
        rows.append(
            {
                "name": f"probe/{name}/{metric}",
                "kind": "probe",
                "task": name,
                "metric": metric,
                "aggregation": "mean over seeds",
                "n_items": len(base["gold"]),
                "n_seeds": len(adapted["per_seed"]),
                "seeds": adapted["settings"]["seeds"],
                "base": st["base"],
                "adapted": st["adapted"],
                **_row_common(st["base"], st["adapted"], higher_is_better=True),
                "base_stderr": st["base_stderr"],
                "adapted_stderr": st["adapted_stderr"],
                "base_seed_std": base.get(spread[metric]),
                "adapted_seed_std": adapted.get(spread[metric]),
                "ci_low": st["ci_low"],
                "ci_high": st["ci_high"],
                "p_value": st["p_value"],
                "significant": st["p_value"] < alpha,
            }
        )
    return adjust_rows(rows, alpha, family=p_family)
