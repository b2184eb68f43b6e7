"""The encode path, training and HF conversion, with real sentencepiece and HF tokenizers."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from test_tokenizer_helpers import corpus, make_bytelevel_bpe

from dapt.pipeline.errors import InputError
from dapt.tokenizer.config import TokenizerConfig
from dapt.tokenizer.encode import DEFAULT_PROBES, encode_texts, load_encoder, text_only, vocab_rows
from dapt.tokenizer.train import sp_to_hf, train_sentencepiece, train_with_sweep, write_lines

HARD = [
    "Net income:   $1,234,567.89  (€1.2bn; ¥130; £5; ₹99)",
    "  two leading, three   inner,\ttab, trailing  ",
    "Ångström naïve façade — 日本語テキスト — Ελληνικά — Здравствуйте 🚀",
    "line\nbreaks\n\n\nand 0.000123 and 2024-03-31",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A 600-piece Unigram tokenizer trained by dapt's settings, its HF folder, and held-out lines."""
    d = tmp_path_factory.mktemp("trained")
    train_docs = corpus("domain", 150, seed=3) + corpus("general", 150, seed=3)
    write_lines(train_docs, d / "lines.txt")
    model = train_sentencepiece(d / "lines.txt", d / "sp", TokenizerConfig(), 600)
    folder = sp_to_hf(model, d / "hf")
    heldout = corpus("domain", 120, seed=99) + corpus("general", 120, seed=99)
    lines = [ln for doc in heldout for ln in doc.split("\n")] + HARD + list(DEFAULT_PROBES)
    return folder, lines


def test_trained_tokenizer_ids_match_sentencepiece_and_round_trip(trained):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder, lines = trained
    # at least 1000 held-out lines: split documents into sentences as well
    lines = lines + [s for ln in lines for s in ln.split(". ") if s]
    assert len(lines) >= 1000
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = text_only(AutoTokenizer.from_pretrained(str(folder)))  # text is text
    hf = [tok(ln, add_special_tokens=False)["input_ids"] for ln in lines]
    assert sp.encode(lines, out_type=int) == hf
    for ln, ids in zip(lines, hf, strict=True):
        assert tok.decode(ids) == ln
    # digits split, newline one token, no <unk> thanks to byte fallback
    assert len(sp.encode("12345")) == 6 or all(
        len(sp.id_to_piece(i).strip("▁")) <= 1 for i in sp.encode("12345")
    )
    assert sp.unk_id() not in sp.encode(HARD[2])
    assert sp.piece_to_id("\n") != sp.unk_id()


def test_encoder_default_is_exact_hf_and_sentencepiece_is_opt_in(trained):
    from transformers import AutoTokenizer

    folder, lines = trained
    tok = text_only(AutoTokenizer.from_pretrained(str(folder)))  # text is text
    reference = [tok(x, add_special_tokens=False)["input_ids"] for x in lines]
    enc = load_encoder(folder)
    assert enc.backend == "hf_fast"
    fast = load_encoder(folder, probes=lines[:50], exact=False)
    assert fast.backend == "sentencepiece"
    for e in (enc, fast):
        assert e.eos_id == tok.eos_token_id == 2
        assert e.vocab_size == vocab_rows(tok) == 600
        clone = pickle.loads(pickle.dumps(e))
        assert clone.backend == e.backend
        assert clone.encode_batch(lines) == reference
        assert clone.decode(clone.encode(HARD[0])) == HARD[0]
        assert e.encode_batch([]) == []


def test_sentencepiece_path_reorders_tied_runs_like_hf(trained):
    """Runs of a character whose pieces are powers of one root ('=', '====') tie in score; the
    sentencepiece path must order them as HF does."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder, _ = trained
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = text_only(AutoTokenizer.from_pretrained(str(folder)))  # text is text
    fast = load_encoder(folder, exact=False)
    runs = [c * n + " x" for c in ("=", "-", " ") for n in range(1, 40)]
    runs += [f"Title\n{'=' * n}\n{' ' * m}- item" for n in range(1, 30) for m in (0, 4, 8, 9)]
    reference = [tok(x, add_special_tokens=False)["input_ids"] for x in runs]
    assert fast.encode_batch(runs) == reference
    assert sp.encode(runs, out_type=int) != reference  # raw sentencepiece breaks these ties differently


def test_encoder_falls_back_to_hf_when_sentencepiece_disagrees(trained, sp_model_path, tmp_path):
    folder, lines = trained
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    shutil.copyfile(sp_model_path, bad / "tokenizer.model")  # a different model: ids would be wrong
    enc = load_encoder(bad, exact=False)
    assert enc.backend == "hf_fast"
    assert enc.encode_batch(lines[:20]) == load_encoder(folder).encode_batch(lines[:20])
    (bad / "tokenizer.model").unlink()
    assert load_encoder(bad, exact=False).backend == "hf_fast"


def test_encoder_on_bytelevel_bpe_and_special_text(tmp_path):
    from transformers import AutoTokenizer

    folder = make_bytelevel_bpe(tmp_path / "bpe")
    enc = load_encoder(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert enc.backend == "hf_fast" and enc.eos_id == tok.eos_token_id
    for text in HARD:
        ids = enc.encode(text)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert enc.decode(ids) == text
    # text that spells the EOS token must not become a document boundary
    assert enc.eos_id not in enc.encode("a <|endoftext|> b")
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.encode_batch(HARD) == enc.encode_batch(HARD)


def test_encoder_errors(tmp_path):
    with pytest.raises(InputError, match="cannot load"):
        load_encoder(tmp_path / "missing")


def test_vocab_sweep_picks_smallest_encoded_size(tmp_path):
    docs = corpus("domain", 120, seed=5) + corpus("general", 120, seed=5)
    write_lines(docs, tmp_path / "lines.txt")
    cfg = TokenizerConfig(sweep_sizes=[400, 600, 5000])
    model, sweep = train_with_sweep(tmp_path / "lines.txt", tmp_path, cfg, corpus("domain", 20, seed=6))
    feasible = [s for s in sweep["sizes"] if s["feasible"]]
    assert {s["vocab_size"] for s in feasible} == {400, 600}
    assert not next(s for s in sweep["sizes"] if s["vocab_size"] == 5000)["feasible"]
    best = min(feasible, key=lambda s: s["bits"])
    assert sweep["chosen"] == best["vocab_size"]
    assert model.name == f"sp_{best['vocab_size']}.model"


def test_bpe_algorithm_option_converts_exactly(tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    docs = corpus("domain", 100, seed=8) + corpus("general", 100, seed=8)
    write_lines(docs, tmp_path / "lines.txt")
    model = train_sentencepiece(
        tmp_path / "lines.txt", tmp_path / "bpe", TokenizerConfig(algorithm="bpe"), 500
    )
    sp = spm.SentencePieceProcessor(model_file=str(model))
    folder = sp_to_hf(model, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(str(folder))
    lines = [ln for d in corpus("domain", 40, seed=9) for ln in d.split("\n")] + HARD
    hf = [tok(ln, add_special_tokens=False)["input_ids"] for ln in lines]
    assert sp.encode(lines, out_type=int) == hf
    assert all(tok.decode(ids) == ln for ln, ids in zip(lines, hf, strict=True))


SPELLED = [
    "a <s> b </s> c <unk> d",
    "end of text: <|endoftext|> and </s></s> glued<s>to words",
    "<s>",
]


def test_text_that_spells_special_tokens_is_encoded_as_text(trained, tmp_path):
    """One rule (issue 19): a spelled-out special token is characters, never its id, on every path:
    the encoder (HF and sentencepiece backends), ``encode_texts`` and a ``text_only`` tokenizer. HF
    alone gets this wrong twice: without ``split_special_tokens`` it extracts ``<s>``, and with it a
    Unigram model still picks its ``<s>`` vocabulary piece (score 0) for the characters."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder, lines = trained
    stock = AutoTokenizer.from_pretrained(str(folder))
    special = set(stock.all_special_ids)
    assert special & set(stock("a <s> b", add_special_tokens=False)["input_ids"])
    split = stock("a <s> b", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert special & set(split)  # the Unigram trap: split_special_tokens is not enough
    normal = [ln for ln in lines if "<" not in ln][:300]
    before = stock(normal, add_special_tokens=False)["input_ids"]

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ref = sp.encode(SPELLED, out_type=int)  # sentencepiece never matches its control pieces
    assert not special & {i for ids in ref for i in ids}
    enc, fast = load_encoder(folder), load_encoder(folder, exact=False)
    assert fast.backend == "sentencepiece"
    assert enc.encode_batch(SPELLED) == fast.encode_batch(SPELLED) == ref
    assert encode_texts(stock, SPELLED) == ref
    assert stock(normal, add_special_tokens=False)["input_ids"] == before  # encode_texts left it alone
    assert encode_texts(stock, normal) == before  # and ordinary text keeps its ids

    tok = text_only(AutoTokenizer.from_pretrained(str(folder)))
    assert tok(SPELLED, add_special_tokens=False)["input_ids"] == ref
    assert [tok.encode(t, add_special_tokens=False) for t in SPELLED] == ref
    assert tok(normal, add_special_tokens=False)["input_ids"] == before
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size, vocab_rows(tok)) == (1, 2, 600, 600)
    assert tok.decode(ref[0]) == SPELLED[0] and enc.decode(ref[0]) == SPELLED[0]
    assert tok.convert_ids_to_tokens([1, 2]) == ["<s>", "</s>"]
    assert text_only(tok)(SPELLED, add_special_tokens=False)["input_ids"] == ref  # idempotent

    # byte-level BPE (GPT-2 style): the merges never rebuild <|endoftext|>, so only the added-token
    # layer needs switching off, and the encoder, encode_texts and text_only agree
    bpe = make_bytelevel_bpe(tmp_path / "bpe")
    bstock = AutoTokenizer.from_pretrained(str(bpe))
    eos = bstock.eos_token_id
    assert eos in bstock("x <|endoftext|> y", add_special_tokens=False)["input_ids"]
    ids = load_encoder(bpe).encode_batch(SPELLED)
    assert eos not in {i for x in ids for i in x}
    assert encode_texts(bstock, SPELLED) == ids
    assert text_only(bstock)(SPELLED, add_special_tokens=False)["input_ids"] == ids
