"""The encode path, training and HF conversion, with real sentencepiece and HF tokenizers."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from test_tokenizer_helpers import corpus, make_bytelevel_bpe

from dapt.pipeline.errors import InputError
from dapt.tokenizer.config import TokenizerConfig
from dapt.tokenizer.encode import DEFAULT_PROBES, load_encoder
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
    tok = AutoTokenizer.from_pretrained(str(folder))
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
    tok = AutoTokenizer.from_pretrained(str(folder))
    reference = [tok(x, add_special_tokens=False)["input_ids"] for x in lines]
    enc = load_encoder(folder)
    assert enc.backend == "hf_fast"
    fast = load_encoder(folder, probes=lines[:50], exact=False)
    assert fast.backend == "sentencepiece"
    for e in (enc, fast):
        assert e.eos_id == tok.eos_token_id == 2
        assert e.vocab_size == len(tok) == 600
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
    tok = AutoTokenizer.from_pretrained(str(folder))
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
