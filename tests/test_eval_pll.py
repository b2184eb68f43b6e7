"""Held-out scores of masked LMs and encoder-decoders (eval/pll.py) on tiny real models: the batched
pseudo-log-likelihood equals a slow one-forward-per-token reference, and the denoising score is the
span-corruption loss per byte."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_docs

from dapt.eval.bpb import encode_texts
from dapt.eval.pll import _windows, denoising_bits_per_byte, pll_bits_per_byte


def _reference_pll(model, tok, texts: list[str], max_length: int) -> tuple[float, int]:
    """Salazar et al.'s PLL the slow way: one forward per scored token, each with only it masked."""
    total, correct = 0.0, 0
    with torch.no_grad():
        for toks in encode_texts(tok, texts):
            for ids, off, n in _windows(tok, toks, max_length):
                for i in range(n):
                    x = torch.tensor([ids])
                    x[0, off + i] = tok.mask_token_id
                    logits = model(input_ids=x).logits[0, off + i]
                    total -= float(torch.log_softmax(logits.double(), -1)[ids[off + i]])
                    correct += int(int(logits.argmax()) == ids[off + i])
    return total, correct


def test_batched_pll_equals_the_one_token_at_a_time_reference(tiny_bert_dir: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    texts = make_docs("domain", 3, seed=4)
    got = pll_bits_per_byte(model, tok, texts, max_length=24, batch_size=7)  # windows and batches both cut
    want, correct = _reference_pll(model, tok, texts, 24)
    assert got["nll_sum"] == pytest.approx(want, rel=1e-6)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert got["bytes"] == n_bytes and got["bpb"] == pytest.approx(want / n_bytes / math.log(2), rel=1e-6)
    assert got["tokens"] == sum(len(t) for t in encode_texts(tok, texts))
    assert got["masked_accuracy"] == pytest.approx(correct / got["tokens"])
    assert got["windows"] > len(texts) and len(got["per_doc"]) == 3
    assert math.fsum(n for n, _ in got["per_doc"]) == pytest.approx(got["nll_sum"])


def test_denoising_bpb_is_the_span_loss_per_byte_and_repeatable(tiny_t5_dir: Path) -> None:
    import torch.nn.functional as F
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from dapt.train.objectives import span_corrupt, token_roles

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    texts = make_docs("general", 2, seed=8)
    got = denoising_bits_per_byte(model, tok, texts, max_length=40, seed=3)
    assert got == denoising_bits_per_byte(model, tok, texts, max_length=40, seed=3)  # same corruption
    roles = token_roles(tok, "span", model.config.vocab_size)
    want, w = 0.0, 0
    with torch.no_grad():
        for toks in encode_texts(tok, texts):
            for lo in range(0, len(toks), 40):
                x, y = span_corrupt(np.asarray(toks[lo : lo + 40]), w, 3, roles)
                w += 1
                yt = torch.from_numpy(y)[None]
                logits = model(input_ids=torch.from_numpy(x)[None], labels=yt).logits
                want += float(F.cross_entropy(logits[0], yt[0], reduction="sum"))
    assert got["nll_sum"] == pytest.approx(want, rel=1e-5)
    assert got["bpb"] == pytest.approx(want / got["bytes"] / math.log(2), rel=1e-5)
