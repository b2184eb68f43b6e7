"""``extend`` on a WordPiece (BERT-style) base and on a T5-shaped sentencepiece Unigram base.

Both bases are built here, offline, in well under a second:

- WordPiece: ``tokenizers``' WordPieceTrainer with BERT's normaliser, pre-tokeniser, decoder and
  ``[CLS] $A [SEP]`` template, wrapped in ``BertTokenizerFast(tokenizer_object=...)``, saved and reloaded
  with ``AutoTokenizer`` (transformers 5 gives a ``BertTokenizer`` backed by ``tokenizer.json``).
- T5: a sentencepiece Unigram model trained with T5's special ids (pad 0, eos 1, unk 2, no bos) copied
  into a folder as ``spiece.model`` next to a ``tokenizer_config.json`` naming ``T5Tokenizer`` with
  ``extra_ids: 100``. ``AutoTokenizer`` converts it offline (no protobuf, no hub) into T5's layout: the
  sentencepiece pieces, then ``<extra_id_99>`` ... ``<extra_id_0>`` as Unigram pieces (score 0.0) and
  special added tokens at ids vocab-100 ... vocab-1.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import make_docs

from dapt.pipeline.errors import InputError
from dapt.tokenizer.encode import load_encoder
from dapt.tokenizer.extend import (
    extend_unigram,
    extend_wordpiece,
    extension_kind,
    pretoken_counts,
    save_extended,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def bert_dir(wordpiece_tokenizer_dir: Path) -> Path:
    return wordpiece_tokenizer_dir


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("t5")
    (d / "train.txt").write_text(
        "\n".join(make_docs("domain", 100) + make_docs("general", 100)), encoding="utf-8"
    )
    spm.SentencePieceTrainer.train(
        input=str(d / "train.txt"),
        model_prefix=str(d / "sp"),
        vocab_size=300,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    src = d / "src"
    src.mkdir()
    shutil.copy(d / "sp.model", src / "spiece.model")
    (src / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 100})
    )
    out = d / "hf"
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def _load(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _tj(tok: Any) -> dict[str, Any]:
    return json.loads(tok.backend_tokenizer.to_str())


def _ids(tok: Any, texts: list[str]) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def bert_ext(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    base = _load(bert_dir)
    counts = pretoken_counts(base.backend_tokenizer, make_docs("domain", 60, seed=1))
    ext = extend_wordpiece(_tj(base), counts, 30, 2)
    new = save_extended(base, ext, tmp_path_factory.mktemp("bert_ext") / "tok")
    return base, new, ext


def test_extension_kind(bert_dir: Path, t5_dir: Path) -> None:
    assert extension_kind(_tj(_load(bert_dir))) == "wordpiece"
    assert extension_kind(_tj(_load(t5_dir))) == "unigram"
    assert extension_kind({"model": {"type": "BPE"}}) == "bpe"
    with pytest.raises(InputError, match="WordLevel"):
        extension_kind({"model": {"type": "WordLevel"}})


def test_wordpiece_extend_keeps_ids_and_adds_domain_words(bert_ext, tmp_path) -> None:
    base, new, ext = bert_ext
    old_vocab = base.get_vocab()
    top = max(old_vocab.values())
    assert len(ext.added) == 30
    assert not any(a.get("continuation") for a in ext.added)  # a trainer-made vocab has every ##c it needs
    assert [a["id"] for a in ext.added] == list(range(top + 1, top + 31))
    new_vocab = new.get_vocab()
    assert all(new_vocab[k] == v for k, v in old_vocab.items())
    assert len(new) == top + 31
    for s in ("cls", "sep", "pad", "mask", "unk"):
        assert getattr(new, f"{s}_token_id") == getattr(base, f"{s}_token_id")
    for a in ext.added:
        assert (
            a["count"] >= 2 and not any(c.isdigit() for c in a["token"]) and not a["token"].startswith("##")
        )
        assert len(a["base_ids"]) >= 2
        assert new(a["token"], add_special_tokens=False)["input_ids"] == [a["id"]]

    docs = make_docs("domain", 20, seed=7) + make_docs("general", 20, seed=7)
    b_ids, n_ids = _ids(base, docs), _ids(new, docs)
    assert sum(map(len, n_ids[:20])) < 0.97 * sum(map(len, b_ids[:20]))
    assert sum(i > top for ids in n_ids[:20] for i in ids) > 0
    # decoding: the same text as the base's decode (lowercased by BERT's normaliser), not the raw text
    for b, n in zip(b_ids, n_ids, strict=True):
        assert new.decode(n) == base.decode(b)
    # [CLS] ... [SEP] still wraps the text
    full = new(docs[0])["input_ids"]
    assert full[0] == base.cls_token_id and full[-1] == base.sep_token_id

    new.save_pretrained(str(tmp_path / "again"))
    assert _ids(_load(tmp_path / "again"), docs) == n_ids
    assert load_encoder(tmp_path / "again").encode_batch(docs) == n_ids  # the path other stages encode with


def test_wordpiece_only_words_beginning_with_a_new_word_change(bert_ext) -> None:
    """WordPiece is greedy longest-match-first per word: a new whole word can change only the words it is
    a prefix of (itself, plurals, ...), never a word that merely contains it, never other words."""
    base, new, ext = bert_ext
    words = {a["token"]: a["id"] for a in ext.added}
    docs = make_docs("domain", 30, seed=3) + make_docs("general", 30, seed=3)
    counts = pretoken_counts(base.backend_tokenizer, docs)
    changed = 0
    for word in counts:
        b = [t.value for t in base.backend_tokenizer.model.tokenize(word)]
        n = [t.value for t in new.backend_tokenizer.model.tokenize(word)]
        starts = [w for w in words if word.startswith(w)]
        if not starts:
            assert n == b, word
        else:
            assert n[0] == max(starts, key=len), word
            changed += n != b
    assert changed >= len(words) // 2

    # text in which no word begins with a new word encodes exactly as before, specials included
    untouched = [
        d
        for d in docs
        if not any(p.startswith(tuple(words)) for p in pretoken_counts(base.backend_tokenizer, [d]))
    ]
    assert len(untouched) >= 20
    assert [new(d)["input_ids"] for d in untouched] == [base(d)["input_ids"] for d in untouched]

    # the claim "only that word changes" is too strong: a longer word it begins also changes
    w = max(words, key=len)
    assert new(w + "s", add_special_tokens=False)["input_ids"][0] == words[w]
    assert (
        new(w + "s", add_special_tokens=False)["input_ids"]
        != base(w + "s", add_special_tokens=False)["input_ids"]
    )
    assert (
        new("x" + w, add_special_tokens=False)["input_ids"]
        == base("x" + w, add_special_tokens=False)["input_ids"]
    )


def test_wordpiece_adds_continuation_pieces_the_base_lacks(bert_dir: Path) -> None:
    """A base that spells ``j`` inside a word only within a longer piece (here ``##<last piece>j``) and has
    no ``##j``: after a new whole word ``w``, ``w + "j"`` would be [UNK]; ``##j`` is added to prevent it."""
    from tokenizers import Tokenizer

    tj = _tj(_load(bert_dir))
    vocab = tj["model"]["vocab"]
    assert "##j" not in vocab and "j" in vocab
    model = Tokenizer.from_str(json.dumps(tj)).model
    w = "securitization"
    pieces = [t.value for t in model.tokenize(w)]
    assert len(pieces) >= 2 and pieces[-1].startswith("##")
    vocab[pieces[-1] + "j"] = max(vocab.values()) + 1
    base = Tokenizer.from_str(json.dumps(tj))
    unk = base.token_to_id("[UNK]")
    assert unk not in base.encode(w + "j", add_special_tokens=False).ids

    ext = extend_wordpiece(tj, Counter({w: 5}), 5, 2)
    assert [a["token"] for a in ext.added] == ["##j", w]
    new = Tokenizer.from_str(json.dumps(ext.tokenizer_json))
    assert new.encode(w + "j", add_special_tokens=False).ids == [a["id"] for a in ext.added][::-1]
    assert (
        new.encode("journal", add_special_tokens=False).ids
        == base.encode("journal", add_special_tokens=False).ids
    )

    without = json.loads(json.dumps(tj))
    without["model"]["vocab"][w] = ext.added[1]["id"]
    assert Tokenizer.from_str(json.dumps(without)).encode(w + "j", add_special_tokens=False).ids == [unk]

    # no room for the closure: nothing is added rather than words that could produce [UNK]
    assert extend_wordpiece(tj, Counter({w: 5}), 1, 2).added == []


def _check_rows(model: Any, old_in: Any, plan: dict[int, list[int]], expected: dict[int, list[int]]) -> None:
    import torch

    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb[: old_in.shape[0]], old_in)
    for i, base_ids in expected.items():
        assert plan[i] == base_ids
        assert torch.allclose(emb[i], old_in[base_ids].mean(0), atol=1e-6)


def test_wordpiece_embedding_rows_are_means_of_base_pieces(bert_ext) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from dapt.tokenizer.embeddings import plan_rows, resize_and_init

    base, new, ext = bert_ext
    torch.manual_seed(0)
    conf = BertConfig(
        vocab_size=len(base), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model = BertForMaskedLM(conf)
    old_in = model.get_input_embeddings().weight.detach().clone()
    ids = [a["id"] for a in ext.added]
    plan = plan_rows(new, base, ids)
    # the base split of the word's text, e.g. "securitization" -> s ##e ##c ##ur ...
    expected = {a["id"]: base(a["token"], add_special_tokens=False)["input_ids"] for a in ext.added}
    assert all(len(v) >= 2 for v in expected.values())
    init = resize_and_init(model, plan, len(new), "zero", replace=False)
    assert init["mean_of_all_fallback"] == 0 and init["tied"]
    _check_rows(model, old_in, plan, expected)
    x = torch.tensor([new(make_docs("domain", 1, seed=9)[0])["input_ids"][:64]])
    assert x.max() >= len(base)
    assert model(input_ids=x).logits.shape[-1] == len(new)


def test_wordpiece_continuation_piece_row(bert_dir: Path) -> None:
    """A ``##`` piece's row is the mean of the base's ``##`` pieces for that continuation (no space)."""
    from dapt.tokenizer.embeddings import BaseSegmenter

    base = _load(bert_dir)
    seg = BaseSegmenter(base)
    vocab = base.get_vocab()
    cont = [t for t in vocab if t.startswith("##") and len(t) >= 4][0]
    assert seg.ids(cont.encode()) == [vocab[cont]]
    single = sorted(t for t in vocab if t.startswith("##") and len(t) == 3)
    a, b = next((a, b) for a in single for b in single if a + b[2:] not in vocab)
    assert seg.ids((a + b[2:]).encode()) == [vocab[a], vocab[b]]
    # "##j" has no continuation piece in this base: it falls back to the word "j"
    assert seg.ids(b"##j") == [vocab["j"]]
    # plain text (replace mode on a BERT base) goes through the whole base pipeline
    assert seg.ids(b" Revenue rose") == base("Revenue rose", add_special_tokens=False)["input_ids"]


def _t5_sentinels(tok: Any) -> dict[str, int]:
    return {f"<extra_id_{i}>": tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)}


def _t5_extend(base: Any, tj: dict[str, Any], out: Path) -> tuple[Any, Any]:
    counts = pretoken_counts(base.backend_tokenizer, make_docs("domain", 60, seed=1))
    ext = extend_unigram(tj, sorted(counts.items()), 25, 2)
    return save_extended(base, ext, out), ext


@pytest.mark.parametrize("layout", ["in_vocab", "added_only"])
def test_t5_extend_keeps_sentinels(t5_dir: Path, tmp_path: Path, layout: str) -> None:
    """``in_vocab``: transformers' T5 layout (sentinels are also Unigram pieces). ``added_only``: a
    tokenizer.json whose Unigram vocabulary stops before the sentinels, which exist only as added tokens."""
    base = _load(t5_dir)
    sentinels = _t5_sentinels(base)
    assert len(base) == 400 and sentinels["<extra_id_0>"] == 399 and sentinels["<extra_id_99>"] == 300
    tj = _tj(base)
    if layout == "added_only":
        tj["model"]["vocab"] = tj["model"]["vocab"][:300]
        (tmp_path / "b").mkdir()
        base.save_pretrained(str(tmp_path / "b"))
        (tmp_path / "b" / "tokenizer.json").write_text(json.dumps(tj))
        base = _load(tmp_path / "b")
        assert _t5_sentinels(base) == sentinels
    new, ext = _t5_extend(base, tj, tmp_path / "ext")

    assert [a["id"] for a in ext.added] == list(range(400, 400 + len(ext.added))) and len(ext.added) == 25
    assert len(new) == 425
    assert _t5_sentinels(new) == sentinels
    old_vocab = base.get_vocab()
    assert all(new.get_vocab()[k] == v for k, v in old_vocab.items())
    assert new("<extra_id_0>", add_special_tokens=False)["input_ids"] == [399]
    assert new("Revenue <extra_id_7> rose.")["input_ids"][-1] == new.eos_token_id == base.eos_token_id
    assert sentinels["<extra_id_7>"] in new("Revenue <extra_id_7> rose.")["input_ids"]

    docs = make_docs("domain", 15, seed=7) + make_docs("general", 15, seed=7)
    b_ids, n_ids = _ids(base, docs), _ids(new, docs)
    assert sum(map(len, n_ids[:15])) < sum(map(len, b_ids[:15]))
    # a text whose extended encoding uses no new piece encodes exactly as before
    parts = [p for d in docs for p in d.split(". ")]
    same = [(b, n) for b, n in zip(_ids(base, parts), _ids(new, parts), strict=True) if max(n) < 400]
    assert len(same) >= 30 and all(b == n for b, n in same)
    assert all(new.decode(n) == base.decode(b) for b, n in zip(b_ids, n_ids, strict=True))
    assert _ids(_load(tmp_path / "ext"), docs) == n_ids
    assert load_encoder(tmp_path / "ext").encode_batch(docs) == n_ids


def test_t5_embedding_rows_are_means_of_base_pieces(t5_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from dapt.tokenizer.embeddings import plan_rows, resize_and_init

    base = _load(t5_dir)
    new, ext = _t5_extend(base, _tj(base), tmp_path / "ext")
    torch.manual_seed(0)
    conf = T5Config(
        vocab_size=len(base),
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(conf)
    old_in = model.get_input_embeddings().weight.detach().clone()
    plan = plan_rows(new, base, [a["id"] for a in ext.added])
    # a new piece "▁declared" is the mean of the base's pieces for " declared" (leading space kept)
    seg = base.backend_tokenizer.model.tokenize
    expected = {a["id"]: [t.id for t in seg(a["token"])] for a in ext.added}
    assert all(len(v) >= 2 for v in expected.values())
    resize_and_init(model, plan, len(new), "zero", replace=False)
    _check_rows(model, old_in, plan, expected)
    x = torch.tensor([new("Revenue <extra_id_0> the quarter.")["input_ids"]])
    assert model(input_ids=x, decoder_input_ids=x).logits.shape[-1] == len(new)


def test_unigram_extend_refuses_added_tokens_it_cannot_keep(t5_dir: Path) -> None:
    """Added tokens past the Unigram vocabulary are kept by becoming pieces only when they are special
    and have consecutive ids; anything else is refused rather than renumbered."""
    base = _load(t5_dir)
    counts = sorted(pretoken_counts(base.backend_tokenizer, make_docs("domain", 20, seed=1)).items())
    for change in ("not_special", "gap"):
        tj = _tj(base)
        tj["model"]["vocab"] = tj["model"]["vocab"][:300]
        if change == "not_special":
            tj["added_tokens"][-1]["special"] = False
        else:
            tj["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] != 350]
        with pytest.raises(InputError, match="renumbering"):
            extend_unigram(tj, counts, 5, 2)
