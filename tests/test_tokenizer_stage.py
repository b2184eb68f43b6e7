"""The ``tokenizer`` stage end to end through the runner: base / extend / replace on a sentencepiece
Unigram base and on a GPT-2-style byte-level BPE base, with real tiny Llama models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from test_tokenizer_helpers import corpus, make_bytelevel_bpe, make_clean_stage, write_config

from dapt.pipeline.config import load_config
from dapt.pipeline.errors import ConfigError
from dapt.pipeline.stages import run_stage
from dapt.tokenizer.encode import load_encoder

TOK = {"new_tokens": 40, "heldout_fraction": 0.25, "sweep_sizes": [400, 600], "sample_bytes": 1_000_000}


@pytest.fixture(scope="module")
def sp_base(tiny_model_dir: Path, sp_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture Llama with its sentencepiece model beside tokenizer.json (as Llama checkpoints ship)."""
    d = tmp_path_factory.mktemp("sp_base") / "model"
    shutil.copytree(tiny_model_dir, d)
    shutil.copyfile(sp_model_path, d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def bpe_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer (SmolLM2's kind of tokenizer)."""
    from transformers import AutoTokenizer

    d = make_bytelevel_bpe(tmp_path_factory.mktemp("bpe_base") / "model")
    make_tiny_llama(len(AutoTokenizer.from_pretrained(str(d))), seed=1).save_pretrained(str(d))
    return d


def _run(tmp_path: Path, model: dict, **tok) -> tuple[dict, Path]:
    make_clean_stage(tmp_path / "run")
    cfg = load_config(write_config(tmp_path, model, TOK | tok))
    run_stage(cfg, "split", echo=None)  # the real split stage: the tokenizer reads its held-out ids
    man = run_stage(cfg, "tokenizer", echo=None)
    return man, tmp_path / "run" / "tokenizer"


def _load(stage: Path, man: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = Path(man["outputs"]["model"])
    model_path = model_path if model_path.is_absolute() else stage / model_path
    tok = AutoTokenizer.from_pretrained(str(stage / man["outputs"]["tokenizer"]))
    return tok, AutoModelForCausalLM.from_pretrained(str(model_path))


def _ce(model, ids: list[int], vocab: int | None = None) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    if vocab is not None:
        logits = logits[:, :vocab]
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])))


def _check_common(man: dict, stage: Path, mode: str) -> None:
    assert (stage / "_DONE").exists()
    assert man["mode"] == mode
    for key in (
        "outputs",
        "base",
        "vocab_size",
        "added_tokens",
        "eos_id",
        "fertility",
        "domain_token_reduction",
    ):
        assert key in man, key
    tok, model = _load(stage, man)
    assert len(tok) == man["vocab_size"]
    assert model.get_input_embeddings().weight.shape[0] >= man["vocab_size"]
    assert man["eos_id"] == tok.eos_token_id
    assert load_encoder(stage / "tokenizer").eos_id == man["eos_id"]
    for source in ("fin", "gen"):
        row = man["fertility"][source]
        for stats in row.values():
            assert stats["tokens_per_word"] > 0 and stats["bytes_per_token"] > 0


@pytest.mark.parametrize("base_kind", ["sp", "bpe"])
def test_extend(base_kind, sp_base, bpe_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = sp_base if base_kind == "sp" else bpe_base
    man, stage = _run(tmp_path, {"name_or_path": str(base_dir)}, mode="extend")
    _check_common(man, stage, "extend")
    base_tok = AutoTokenizer.from_pretrained(str(base_dir))
    base_model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    tok, model = _load(stage, man)
    old = len(base_tok)
    assert 0 < man["added_tokens"] <= TOK["new_tokens"]
    assert len(tok) == old + man["added_tokens"]

    # every old id is unchanged; every old embedding row is bit-identical
    new_vocab = tok.get_vocab()
    assert all(new_vocab[t] == i for t, i in base_tok.get_vocab().items())
    w_in, b_in = model.get_input_embeddings().weight, base_model.get_input_embeddings().weight
    w_out, b_out = model.get_output_embeddings().weight, base_model.get_output_embeddings().weight
    assert torch.equal(w_in[:old], b_in) and torch.equal(w_out[:old], b_out)
    assert torch.count_nonzero(w_out[old:]) == 0  # untied output rows: zero (ChipNeMo)

    # a new token's input row is the mean of the base rows of its own text under the base tokenizer
    for i in range(old, len(tok)):
        if base_kind == "bpe":
            text = tok.decode([i])
            base_ids = base_tok(text, add_special_tokens=False)["input_ids"]
        else:
            piece = tok.convert_ids_to_tokens(i)
            base_ids = [t.id for t in base_tok.backend_tokenizer.model.tokenize(piece)]
            assert "".join(base_tok.convert_ids_to_tokens(base_ids)) == piece
        assert len(base_ids) >= 2
        assert torch.allclose(w_in[i], b_in[base_ids].mean(0), atol=1e-6)

    # domain text gets shorter; decoding is exactly as lossless as the base's
    assert man["domain_token_reduction"]["extended"] > 0
    assert man["roundtrip"]["extended"]["failed"] == man["roundtrip"]["base"]["failed"]
    if base_kind == "bpe":
        assert man["roundtrip"]["extended"]["failed"] == 0
        assert man["extend"]["single_token_words"]["single_token"] > 0
    else:
        # the extended tokenizer.model agrees with the extended tokenizer.json (opt-in fast path)
        assert load_encoder(stage / "tokenizer", exact=False).backend == "sentencepiece"

    # the loss on text that uses no new token equals the base model's
    assert man["loss_check"]["docs"] > 0 and man["loss_check"]["max_abs_diff_old_vocab"] <= 1e-5
    checked = 0
    for doc in corpus("general", 30, seed=42):
        for sent in doc.split(". "):
            a = base_tok(sent, add_special_tokens=False)["input_ids"]
            if len(a) < 8 or tok(sent, add_special_tokens=False)["input_ids"] != a:
                continue
            assert abs(_ce(model, a, vocab=old) - _ce(base_model, a)) <= 1e-5
            checked += 1
        if checked >= 4:
            break
    assert checked > 0


def test_extend_a_wordpiece_bert_base(wordpiece_tokenizer_dir, tmp_path):
    """A BERT (WordPiece, uncased) through the stage in extend mode: objective mlm resolved from the
    architecture, whole domain words appended after every old id, the masked LM resized with new rows
    the mean of their base pieces' rows, old rows bit-identical; the uncased normalizer is marked
    lossy instead of counting as a round-trip failure of the extension."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

    base_dir = tmp_path / "bert_base"
    shutil.copytree(wordpiece_tokenizer_dir, base_dir)
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(base_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertForMaskedLM(cfg).save_pretrained(base_dir)
    man, stage = _run(tmp_path, {"name_or_path": str(base_dir)}, mode="extend")
    assert man["objective"] == "mlm" and man["objective_tokens"] == []  # BERT already has [MASK], [PAD]
    assert man["extend"]["base_model_type"] == "WordPiece" and 0 < man["added_tokens"] <= TOK["new_tokens"]
    tok = AutoTokenizer.from_pretrained(stage / man["outputs"]["tokenizer"])
    model = AutoModelForMaskedLM.from_pretrained(stage / man["outputs"]["model"])
    base = BertForMaskedLM.from_pretrained(base_dir)
    old = len(base_tok)
    assert all(tok.get_vocab()[t] == i for t, i in base_tok.get_vocab().items())
    w, b = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert w.shape[0] == len(tok) == old + man["added_tokens"] and torch.equal(w[:old], b)
    for i in range(old, len(tok)):
        base_ids = base_tok(tok.convert_ids_to_tokens(i), add_special_tokens=False)["input_ids"]
        assert len(base_ids) >= 2 and torch.allclose(w[i], b[base_ids].mean(0), atol=1e-6)
    assert man["domain_token_reduction"]["extended"] > 0
    assert man["roundtrip"]["extended"]["lossy_normalizer"] and man["roundtrip"]["base"]["lossy_normalizer"]


def test_extend_bpe_does_not_match_inside_words_and_round_trips(bpe_base, tmp_path):
    from transformers import AutoTokenizer

    man, stage = _run(tmp_path, {"name_or_path": str(bpe_base)}, mode="extend", new_tokens=60)
    tok = AutoTokenizer.from_pretrained(str(stage / "tokenizer"))
    base_tok = AutoTokenizer.from_pretrained(str(bpe_base))
    old = len(base_tok)
    words = [t for t in tok.convert_ids_to_tokens(list(range(old, len(tok)))) if t.startswith("Ġ")]
    word = tok.convert_tokens_to_string([max(words, key=len)]).strip()
    # as a word after a space: one new token; glued inside another word: the base's tokens, no new id
    assert any(i >= old for i in tok(f"the {word} was", add_special_tokens=False)["input_ids"])
    inside = f"x{word}y"
    assert (
        tok(inside, add_special_tokens=False)["input_ids"]
        == base_tok(inside, add_special_tokens=False)["input_ids"]
    )
    for text in [f"  {word}  {word}\n\t{word}.", f"{word}{word} {word}s", "plain text, no domain"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_extend_tied_embeddings_mean_init(tmp_path):
    """Tied input/output embeddings: the shared new rows are means (no separate output init)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = make_bytelevel_bpe(tmp_path / "base")
    make_tiny_llama(len(AutoTokenizer.from_pretrained(str(base_dir))), seed=2, tie=True).save_pretrained(
        str(base_dir)
    )
    man, stage = _run(tmp_path, {"name_or_path": str(base_dir)}, mode="extend")
    assert man["embedding_init"]["tied"] is True
    _, model = _load(stage, man)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    old = base.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(model.get_input_embeddings().weight[:old], base.get_input_embeddings().weight)
    assert torch.count_nonzero(model.get_output_embeddings().weight[old:]) > 0


@pytest.mark.parametrize("base_kind", ["sp", "bpe"])
def test_replace(base_kind, tiny_model_dir, bpe_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tiny_model_dir if base_kind == "sp" else bpe_base
    man, stage = _run(tmp_path, {"name_or_path": str(base_dir)}, mode="replace")
    _check_common(man, stage, "replace")
    assert man["sweep"]["chosen"] in (400, 600) and man["vocab_size"] == man["sweep"]["chosen"]
    assert man["encoder_backend"] == "hf_fast"
    assert load_encoder(stage / "tokenizer", exact=False).backend == "sentencepiece"
    assert man["id_equality"]["lines"] > 0 and man["id_equality"]["mismatches"] == 0
    assert man["roundtrip"]["trained"]["failed"] == 0
    assert "trained" in man["domain_token_reduction"]
    assert man["embedding_init"]["initialised"] == man["vocab_size"]
    tc = man["transfer_check"]
    assert tc["docs"] > 0 and tc["base_bits_per_byte"] > 0 and tc["replaced_bits_per_byte"] > 0
    tok, model = _load(stage, man)
    base_tok = AutoTokenizer.from_pretrained(str(base_dir))
    base_model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    b_in = base_model.get_input_embeddings().weight
    piece = next(
        p for p in tok.convert_ids_to_tokens(list(range(len(tok)))) if p.startswith("▁") and len(p) > 4
    )
    text = piece.replace("▁", " ")
    if base_kind == "bpe":
        base_ids = base_tok(text, add_special_tokens=False)["input_ids"]
    else:
        base_ids = [t.id for t in base_tok.backend_tokenizer.model.tokenize(piece)]
    row = model.get_input_embeddings().weight[tok.convert_tokens_to_ids(piece)]
    assert torch.allclose(row, b_in[base_ids].mean(0), atol=1e-6)
    eos_row = model.get_input_embeddings().weight[tok.eos_token_id]
    assert torch.equal(eos_row, b_in[base_tok.eos_token_id])
    ids = tok("The bond's yield to maturity fell.", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("base_kind", ["sp", "bpe"])
def test_base(base_kind, tiny_model_dir, bpe_base, tmp_path):
    base_dir = tiny_model_dir if base_kind == "sp" else bpe_base
    man, stage = _run(tmp_path, {"name_or_path": str(base_dir)}, mode="base")
    _check_common(man, stage, "base")
    assert man["outputs"]["model"] == str(base_dir.resolve())  # pretrained and local: not copied
    assert not (stage / "model").exists()
    assert man["base"] == {"model": str(base_dir), "tokenizer": str(base_dir)}
    assert man["added_tokens"] == 0 and set(man["fertility"]["fin"]) == {"base"}


def test_from_config(sp_tokenizer_dir, tmp_path):
    fc = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    man, stage = _run(tmp_path / "a", {"from_config": fc}, mode="replace")
    tok, model = _load(stage, man)
    assert man["base"] == {"model": None, "tokenizer": None}
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == man["vocab_size"]
    assert model.config.eos_token_id == tok.eos_token_id

    man, stage = _run(tmp_path / "b", {"from_config": fc, "tokenizer": str(sp_tokenizer_dir)}, mode="extend")
    assert man["added_tokens"] > 0 and man["base"]["model"] is None

    with pytest.raises(ConfigError, match="model.tokenizer"):
        _run(tmp_path / "c", {"from_config": fc}, mode="extend")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.mode"):
        load_config(write_config(tmp_path, {"name_or_path": "x/y"}, {"mode": "grow"}))
    with pytest.raises(ConfigError, match="tokenizer.new_tokens"):
        load_config(write_config(tmp_path, {"name_or_path": "x/y"}, {"new_tokens": 0}))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(write_config(tmp_path, {"name_or_path": "x/y"}, {"vocab": 5}))


PLANTED = "Quorvexian"


def _plant(docs: list[str], first: bool) -> list[str]:
    """``docs`` with document 1 full of a unique word (not 0: the tokenizer's own fertility sample,
    a hash of the id, would take ``fin-0`` out of the control), salted so its split key is the smallest of
    the source (``first``: the split stage puts it in test) or not the smallest (it stays in training)."""
    from dapt.corpora.split.select import split_key

    others = min(split_key(d) for d in docs)
    for salt in range(100_000):
        text = f"{docs[1]} " + f"{PLANTED} ledger. " * 120 + f"ref {salt}"
        if (split_key(text) < others) == first:
            return [docs[0], text, *docs[2:]]
    raise AssertionError("no salt found")


@pytest.mark.parametrize("in_test", [True, False])
def test_tokenizer_never_sees_heldout_text(in_test, bpe_base, tmp_path):
    """A word that occurs only in one test-split document never becomes a piece of the adapted
    tokenizer; planted in a training document instead (the control), the same word does."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    make_clean_stage(run)
    part = run / "clean" / "kept" / "fin" / "part-00000.parquet"
    table = pq.read_table(part)
    texts = _plant(table.column("text").to_pylist(), first=in_test)
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", [texts]), part)
    cfg = load_config(write_config(tmp_path, {"name_or_path": str(bpe_base)}, TOK | {"mode": "extend"}))
    split = run_stage(cfg, "split", echo=None)
    test_ids = (run / "split" / "heldout" / "fin" / "test.jsonl").read_text()
    assert ('"fin-1"' in test_ids) == in_test
    man = run_stage(cfg, "tokenizer", echo=None)
    assert man["trained_on"]["split"] == "train"
    assert man["trained_on"]["heldout_excluded"] == sum(
        c["validation"] + c["test"] for c in split["heldout"].values()
    )
    tok = AutoTokenizer.from_pretrained(str(run / "tokenizer" / man["outputs"]["tokenizer"]))
    base = AutoTokenizer.from_pretrained(str(bpe_base))
    new_pieces = [tok.decode([i]) for i in range(len(base), len(tok))]
    pieces_with_word = [p for p in new_pieces if len(p.strip()) >= 4 and p.strip() in PLANTED]
    if in_test:
        assert pieces_with_word == [], pieces_with_word
    else:
        assert pieces_with_word, new_pieces
