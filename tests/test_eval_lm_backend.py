"""DaptLM (context sharing + packing) gives lm-eval's HFLM answers, request for request."""

from __future__ import annotations

import json
import random

import pytest
from conftest import make_docs, make_tiny_llama

from dapt.eval.lm_backend import DaptLM, _build_segments, _pack_rows


@pytest.fixture(scope="module")
def model_and_tok(sp_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    model = make_tiny_llama(len(tok), seed=5).eval()
    return model, tok


def _requests(tok, n_items: int, seed: int = 0):
    """Multiple-choice shaped requests: a shared context, 2-5 choices of 1 to ~12 tokens each."""
    rng = random.Random(seed)
    docs = make_docs("domain", n_items, seed=seed, sentences=3) + make_docs("general", 4, seed=seed)
    reqs = []
    for d in docs[:n_items]:
        words = d.split()
        ctx = " ".join(words[: rng.randint(3, 40)]) + "\nAnswer:"
        for _ in range(rng.randint(2, 5)):
            choice = " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
            reqs.append((ctx, choice))
    reqs.append((reqs[0][0], reqs[0][1]))  # an exact duplicate request
    reqs.append(("", " standalone text"))  # empty context: lm-eval's prefix token
    return reqs


def _instances(pairs):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]


@pytest.mark.parametrize("batch_size,pack_tokens", [(1, 16), (4, 128), (8, 512)])
def test_loglikelihood_matches_hflm(model_and_tok, batch_size, pack_tokens):
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tok
    pairs = _requests(tok, 12)
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=128)
    ours = DaptLM(
        pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=128, pack_tokens=pack_tokens
    )
    a = ref.loglikelihood(_instances(pairs), disable_tqdm=True)
    b = ours.loglikelihood(_instances(pairs), disable_tqdm=True)
    assert len(a) == len(b) == len(pairs)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=1e-4, abs=1e-4)
        assert ga == gb


def test_truncated_requests_use_lm_eval_semantics(model_and_tok):
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tok
    long_ctx = " ".join(make_docs("general", 3, seed=1, sentences=8))
    pairs = [(long_ctx, " the end"), (long_ctx, " a different ending here"), ("short", " one")]
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=32)
    ours = DaptLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=32)
    assert len(tok(long_ctx)["input_ids"]) > 40  # really longer than the window
    a = ref.loglikelihood(_instances(pairs), disable_tqdm=True)
    b = ours.loglikelihood(_instances(pairs), disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=1e-4, abs=1e-4)
        assert ga == gb


def test_rolling_matches_hflm(model_and_tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tok
    texts = make_docs("domain", 5, seed=4, sentences=6)
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=48, add_bos_token=False)
    ours = DaptLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=48, add_bos_token=False)
    a = ref.loglikelihood_rolling(reqs, disable_tqdm=True)
    b = ours.loglikelihood_rolling(reqs, disable_tqdm=True)
    assert b == pytest.approx(a, rel=1e-4)


def test_segments_share_context_and_respect_limit():
    reqs = [
        (None, [1, 2, 3], [4, 5]),
        (None, [1, 2, 3], [6]),
        (None, [1, 2, 3], [4, 5]),  # duplicate: merged into one branch
        (None, [9], [7, 8, 9]),
    ]
    segs = _build_segments(reqs, list(range(4)), limit=64)
    assert len(segs) == 2
    shared = next(s for s in segs if s.ctx == [1, 2, 3])
    assert sorted(rids for _, rids in shared.branches) == [[0, 2], [1]]
    assert shared.length() == 3 + 1 + 0  # context once, then each continuation minus its last token
    # A tight limit splits the branches over several segments, each repeating the context.
    many = [(None, [1, 2, 3], [10 + i, 20 + i, 30 + i]) for i in range(6)]
    split = _build_segments(many, list(range(6)), limit=8)
    assert all(s.length() <= 8 for s in split) and len(split) > 1
    assert sorted(i for s in split for _, rids in s.branches for i in rids) == list(range(6))
    rows = _pack_rows(split, pack_tokens=16)
    assert all(r.length <= 16 for r in rows)
    assert sum(len(r.segments) for r in rows) == len(split)


def test_simple_evaluate_same_accuracy(model_and_tok, tmp_path):
    """A whole lm-eval multiple-choice task: identical per-item accuracy through both backends."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.tasks_registry import seeds, task_manager

    model, tok = model_and_tok
    rng = random.Random(0)
    words = " ".join(make_docs("general", 20, seed=7)).split()
    task_dir = tmp_path / "tasks" / "mc"
    task_dir.mkdir(parents=True)
    rows = []
    for _ in range(30):
        choices = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(4)]
        rows.append({"q": " ".join(rng.choice(words) for _ in range(12)), "choices": choices, "label": 1})
    (task_dir / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (task_dir / "mc.yaml").write_text(
        "task: tiny_mc_backend\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {task_dir / 'test.jsonl'}\n"
        "test_split: test\nfewshot_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Q: {{q}}\\nA:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n  - metric: mcc\nmetadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    out = {}
    for name, cls in (("hf", HFLM), ("dapt", DaptLM)):
        lm = cls(pretrained=model, tokenizer=tok, batch_size=4, max_length=256)
        res = simple_evaluate(
            model=lm,
            tasks=["tiny_mc_backend"],
            task_manager=task_manager(tmp_path / "tasks", include_defaults=False),
            num_fewshot=2,
            bootstrap_iters=0,
            log_samples=True,
            **seeds(0),
        )
        out[name] = res
    samples = {k: {s["doc_id"]: s for s in v["samples"]["tiny_mc_backend"]} for k, v in out.items()}
    assert samples["hf"].keys() == samples["dapt"].keys() and len(samples["hf"]) == 30
    for doc_id, s in samples["hf"].items():
        t = samples["dapt"][doc_id]
        assert t["acc"] == s["acc"] and t["acc_norm"] == s["acc_norm"]
        for ra, rb in zip(s["filtered_resps"], t["filtered_resps"], strict=True):
            assert float(rb[0]) == pytest.approx(float(ra[0]), rel=1e-4, abs=1e-4)
    res_hf, res_dapt = out["hf"]["results"]["tiny_mc_backend"], out["dapt"]["results"]["tiny_mc_backend"]
    assert res_dapt["acc,none"] == res_hf["acc,none"]
    assert res_dapt["mcc,none"] == pytest.approx(res_hf["mcc,none"])

    # The stage's extraction: mean metrics per item, the corpus-level MCC with lm-eval's aggregation,
    # and a paired bootstrap for both (the same model twice: no difference).
    from lm_eval.tasks import get_task_dict

    from dapt.eval.compare import task_rows
    from dapt.eval.harness import task_results

    leaves = get_task_dict(["tiny_mc_backend"], task_manager(tmp_path / "tasks", include_defaults=False))
    per = {role: task_results(out[k], leaves) for role, k in (("base", "hf"), ("adapted", "dapt"))}
    t = per["adapted"]["tiny_mc_backend"]
    assert set(t["items"]) == {"acc", "acc_norm"} and len(t["items"]["acc"]) == 30
    assert set(t["corpus"]) == {"mcc"} and len(t["corpus"]["mcc"]["items"]) == 30
    assert t["corpus"]["mcc"]["fn"](list(t["corpus"]["mcc"]["items"].values())) == pytest.approx(
        res_dapt["mcc,none"]
    )
    rows = {r["metric"]: r for r in task_rows(per, iters=200, alpha=0.05, seed=0)}
    assert set(rows) == {"acc", "acc_norm", "mcc"}
    for r in rows.values():
        assert r["p_value"] == 1.0 and r["significant"] is False and r["n_items"] == 30


def test_sliding_window_model_matches_hflm(sp_tokenizer_dir):
    """A sliding-window model (tiny Mistral, window 12): requests longer than the window keep the model's
    own windowed mask (HFLM's path), shorter ones are packed; all answers equal HFLM's."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=12,
        max_position_embeddings=256,
    )
    model = MistralForCausalLM(cfg).eval()
    pairs = _requests(tok, 8, seed=3)
    lengths = [len(tok(c + x)["input_ids"]) for c, x in pairs]
    assert min(lengths) < 12 < max(lengths)  # both kinds of request are present
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=128)
    ours = DaptLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=128)
    a = ref.loglikelihood(_instances(pairs), disable_tqdm=True)
    b = ours.loglikelihood(_instances(pairs), disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=1e-4, abs=1e-4)
        assert ga == gb
