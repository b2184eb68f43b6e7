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


SPELLED = [
    "Document <s> with </s> boundaries spelled out, and <unk> too. Net income rose.",
    "A filing that quotes </s></s><s> and then goes on: revenue rose 12% to $1,234 million.",
]


def _monitor_ids(tmp_path, tokenizer_dir, texts: list[str]) -> list[int]:
    """The ids the training monitor scores ``texts`` with (read back from its windows file)."""
    import json

    import numpy as np

    from dapt.train.monitor import IGNORE, build_monitor_file

    held = tmp_path / "heldout" / "fin"
    held.mkdir(parents=True)
    held.joinpath("validation.jsonl").write_text(
        "".join(json.dumps({"kind": "domain", "text": t}) + "\n" for t in texts), encoding="utf-8"
    )
    out = tmp_path / "monitor.npz"
    build_monitor_file(tmp_path / "heldout", str(tokenizer_dir), 4096, 1 << 20, 2, out)
    targets = np.load(out)["domain_targets"]
    return [int(t) for t in targets.ravel() if t != IGNORE]


def test_special_token_text_scored_identically_in_train_and_eval(sp_tokenizer_dir, tmp_path):
    """Issue 19, item 5: text that spells special tokens gets the same ids from the mix stage's encoder
    (training blocks), the training monitor, eval's bits-per-byte and lm-eval through dapt's backend with
    the eval stage's tokenizer, and none of them turns it into BOS/EOS."""
    from transformers import AutoTokenizer

    from dapt.eval.lm_backend import DaptLM
    from dapt.eval.stage import load_model
    from dapt.tokenizer.encode import load_encoder

    stock = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    assert stock.eos_token_id in stock(SPELLED[0], add_special_tokens=False)["input_ids"]  # HF's default
    mix = load_encoder(sp_tokenizer_dir).encode_batch(SPELLED)
    specials = {stock.bos_token_id, stock.eos_token_id}
    assert not specials & {i for ids in mix for i in ids}

    assert _monitor_ids(tmp_path, sp_tokenizer_dir, SPELLED) == [i for ids in mix for i in ids]

    model_dir = tmp_path / "model"
    make_tiny_llama(len(stock), seed=4).save_pretrained(model_dir)
    model, tok = load_model(str(model_dir), str(sp_tokenizer_dir), "cpu")  # eval's own loader
    res = bits_per_byte(model, tok, SPELLED, max_length=32, stride=None, batch_size=2)
    assert res["tokens"] == sum(len(ids) for ids in mix)
    assert bits_per_byte(model, stock, SPELLED, max_length=32)["nll_sum"] == pytest.approx(res["nll_sum"])
    lm = DaptLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=32, add_bos_token=False)
    assert [lm.tok_encode(t) for t in SPELLED] == mix


def _extended_tokenizer(sp_tokenizer_dir, out):
    """A tokenizer-stage-style output: the fixture's Unigram extended by ``dapt.tokenizer.extend`` (new
    pieces appended, scores above their base segmentation), plus two plain ``add_tokens`` words."""
    import json

    from transformers import AutoTokenizer

    from dapt.tokenizer.extend import extend_unigram, save_extended

    base = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    tj = json.loads(base.backend_tokenizer.to_str())
    cands = [("▁dividend", 50), ("▁receivable", 40), ("▁shareholders", 30), ("▁quarterly", 20)]
    ext = extend_unigram(tj, cands, new_tokens=4, min_frequency=1)
    assert len(ext.added) >= 2
    tok = save_extended(base, ext, out)
    tok.add_tokens(["EBITDA", "basis points"])
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def test_bpb_agrees_with_lm_eval_on_an_extended_tokenizer(sp_tokenizer_dir, tmp_path):
    """Issue 19, item 7: on a tokenizer-stage-style tokenizer (extended Unigram plus added tokens) and a
    tiny Llama, dapt's bits-per-byte and lm-eval's own loglikelihood_rolling (stock HFLM, fp32, through
    ``simple_evaluate``, the eval stage's cross-check) agree to 1e-6 with disjoint windows, on text with
    added tokens and spelled-out special tokens, with identical ids on both sides. The two things that do
    move lm-eval's number are shown too: its default window (the model's max_position_embeddings) and
    its stock tokenizer parsing ``</s>`` out of the text."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.harness import crosscheck_texts
    from dapt.tokenizer.encode import text_only, vocab_rows

    stock = _extended_tokenizer(sp_tokenizer_dir, tmp_path / "tok")
    tok = text_only(_extended_tokenizer(sp_tokenizer_dir, tmp_path / "tok2"))
    assert vocab_rows(tok) == len(stock) > 300
    model = make_tiny_llama(vocab_rows(tok), seed=5).eval()
    texts = make_docs("domain", 4, seed=8, sentences=6) + [
        "EBITDA rose 40 basis points; the dividend is receivable quarterly. " * 6,
        *SPELLED,
    ]
    ids = stock(texts, add_special_tokens=False)["input_ids"]
    assert {t for x in ids for t in x} & {stock.convert_tokens_to_ids("EBITDA"), 300}  # new ids in use
    L = 48
    heldout = {"fin": {"kind": "domain", "texts": texts[:5]}, "odd": {"kind": "domain", "texts": SPELLED}}
    check = crosscheck_texts(model, tok, heldout, tmp_path / "cc", L, "cpu", batch_size=3)
    for src, c in check.items():
        assert c["rel_diff"] < 1e-6, (src, c)
        assert c["same_ids"] and c["dapt_tokens"] == c["lmeval_tokens"], src
        assert c["max_length"] == L
    ours = bits_per_byte(model, tok, texts[:5], max_length=L)
    assert ours["windows"] > 5 and ours["bpb"] == pytest.approx(check["fin"]["dapt_bpb"], rel=1e-12)

    def rolling(lm, docs):
        reqs = [
            Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
            for i, t in enumerate(docs)
        ]
        return -sum(lm.loglikelihood_rolling(reqs, disable_tqdm=True)) / sum(len(t.encode()) for t in docs)

    default_window = HFLM(pretrained=model, tokenizer=tok, batch_size=3, add_bos_token=False)
    assert default_window.max_length == 512  # not eval.max_length: other windows, another number
    lm_nats = rolling(default_window, texts[:5])
    assert abs(lm_nats / math.log(2) - ours["bpb"]) / ours["bpb"] > 1e-4
    parsed = HFLM(pretrained=model, tokenizer=stock, batch_size=3, max_length=L, add_bos_token=False)
    assert parsed.tok_encode(SPELLED[0]) != tok.encode(SPELLED[0], add_special_tokens=False)
