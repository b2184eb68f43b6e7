"""Bits-per-byte: against a token-by-token hand computation, batching invariance, and lm-eval agreement."""

from __future__ import annotations

import math

import pytest
from conftest import make_docs, make_tiny_llama

from dapt.eval.bpb import bits_per_byte, rolling_windows


@pytest.fixture(scope="module")
def model_and_tok(sp_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    model = make_tiny_llama(len(tok), seed=3).eval()
    return model, tok


def _hand_nll(model, prefix: int, tokens: list[int], max_length: int, stride: int) -> float:
    """Each token scored with its own forward pass over exactly the context the window scheme gives it."""
    import torch

    seq = [prefix, *tokens]
    n = len(tokens)
    total = 0.0
    for i in range(n):
        if i < max_length:
            start = 0
        else:
            k = (i - max_length) // stride  # index of the later window holding token i
            end = min(max_length + (k + 1) * stride, n)
            start = max(0, end - max_length)
        with torch.no_grad():
            logits = model(torch.tensor([seq[start : i + 1]])).logits[0, -1]
        total -= torch.log_softmax(logits.double(), -1)[tokens[i]].item()
    return total


def test_windows_cover_every_token_once():
    toks = list(range(100, 137))
    for L, s in [(8, 8), (8, 4), (8, 1), (40, 40), (5, 3)]:
        ws = rolling_windows(toks, 1, L, s)
        scored = [t for w in ws for t in w.targets]
        assert scored == toks
        full = [1, *toks]
        for w in ws:
            assert len(w.ids) <= L
            k = len(w.targets)
            for q, t in enumerate(w.targets):  # input position before each target is its predecessor
                assert w.ids[len(w.ids) - k + q] == full[t - 100]


def test_bpb_matches_hand_computation(model_and_tok):
    model, tok = model_and_tok
    texts = make_docs("domain", 3, seed=11, sentences=2) + ["Short one.", "ünïcödé € text 12"]
    for max_length, stride in [(512, None), (16, 16), (16, 8), (10, 3)]:
        res = bits_per_byte(model, tok, texts, max_length=max_length, stride=stride, batch_size=4)
        hand = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            hand.append(_hand_nll(model, tok.bos_token_id, ids, max_length, stride or max_length))
        for (nll, nbytes), h, t in zip(res["per_doc"], hand, texts, strict=True):
            assert nbytes == len(t.encode("utf-8"))
            assert nll == pytest.approx(h, rel=1e-4, abs=1e-4)
        total_bytes = sum(len(t.encode("utf-8")) for t in texts)
        assert res["bpb"] == pytest.approx(sum(hand) / total_bytes / math.log(2), rel=1e-5)
        assert res["docs"] == len(texts)
        assert res["tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def test_batching_does_not_change_results(model_and_tok):
    model, tok = model_and_tok
    texts = make_docs("general", 6, seed=5, sentences=3) + ["x"]
    one = bits_per_byte(model, tok, texts, max_length=32, stride=16, batch_size=1)
    many = bits_per_byte(model, tok, texts, max_length=32, stride=16, batch_size=5)
    for (a, _), (b, _) in zip(one["per_doc"], many["per_doc"], strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    # half-window context gives each later token more context: not the same number as disjoint windows
    disjoint = bits_per_byte(model, tok, texts, max_length=32, stride=None, batch_size=5)
    assert disjoint["windows"] < many["windows"]


def test_agrees_with_lm_eval_loglikelihood_rolling(model_and_tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tok
    texts = make_docs("domain", 4, seed=2, sentences=6) + make_docs("general", 4, seed=2, sentences=6)
    L = 64
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=L, add_bos_token=False)
    reqs = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
        for i, t in enumerate(texts)
    ]
    lls = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    lm_eval_bpb = -sum(lls) / total_bytes / math.log(2)
    ours = bits_per_byte(model, tok, texts, max_length=L, stride=None, batch_size=4)
    assert ours["windows"] > len(texts)  # the documents really are split into windows
    assert ours["bpb"] == pytest.approx(lm_eval_bpb, rel=0.01)
    assert ours["bpb"] == pytest.approx(lm_eval_bpb, rel=1e-4)  # in fact identical up to float error
