"""Masked LM (encoders) and span corruption (encoder-decoders) through the same train loop (issue 15):
the masking and the corruption themselves, then a tiny BERT and a tiny T5 trained by real gloo
processes under zero3, matching one worker, resuming exactly and exporting folders the matching
``transformers`` Auto class loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import build_train_data, losses, make_spec, run_world

from dapt.train.monitor import IGNORE
from dapt.train.objectives import (
    TokenRoles,
    block_tokens,
    corrupted_lengths,
    infer_objective,
    make_batch,
    mlm_mask,
    reconstruct,
    span_corrupt,
    span_lengths,
    token_roles,
)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    return build_train_data(tmp_path_factory.mktemp("train_data"), tiny_model_dir)


def _roles_span() -> TokenRoles:
    return TokenRoles(
        vocab_size=400, special_ids=(0, 1, 2), sentinel_ids=tuple(range(399, 299, -1)), eos_id=2
    )


# ----------------------------------------------------------------------------------------------------
# the objectives themselves
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [8, 32, 127, 512])
def test_span_corruption_reconstructs_the_text_and_has_fixed_lengths(length: int) -> None:
    roles = _roles_span()
    tokens = np.random.default_rng(length).integers(3, 290, length)
    want_in, want_out = corrupted_lengths(length)
    seen = set()
    for position in range(20):
        inputs, targets = span_corrupt(tokens, position, seed=7, roles=roles)
        assert (len(inputs), len(targets)) == (want_in, want_out)
        assert inputs[-1] == 2 and targets[-1] == 2
        assert reconstruct(inputs, targets, roles).tolist() == tokens.tolist()
        n_spans = int(np.isin(targets, roles.sentinel_ids).sum())
        assert targets[0] == roles.sentinel_ids[0] and n_spans == span_lengths(length)[1]
        seen.add(tuple(inputs.tolist()))
    # a new corruption per stream position (dynamic); one span of one token is always last, as in T5
    assert len(seen) > 1 or span_lengths(length) == (1, 1)
    again = span_corrupt(tokens, 3, seed=7, roles=roles)
    assert [a.tolist() for a in again] == [a.tolist() for a in span_corrupt(tokens, 3, seed=7, roles=roles)]
    # T5's counts: 15% noise in spans of mean length 3
    assert corrupted_lengths(512) == (512 - 77 + 26 + 1, 77 + 26 + 1)


def test_mlm_masks_15_percent_80_10_10_and_never_a_special_token() -> None:
    roles = TokenRoles(vocab_size=1000, special_ids=(0, 1, 2), mask_id=999)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 990, 200_000)
    tokens[::50] = 2  # separators
    inputs, labels = mlm_mask(tokens, position=5, seed=1, roles=roles)
    chosen = labels != IGNORE
    eligible = tokens != 2
    assert not chosen[~eligible].any() and (inputs[~eligible] == 2).all()
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.005)
    assert (labels[chosen] == tokens[chosen]).all()
    masked = (inputs == 999) & chosen
    kept = (inputs == tokens) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.01)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1, abs=0.01)
    assert (inputs[~chosen] == tokens[~chosen]).all()
    # a pure function of (seed, stream position): same block, same mask; next epoch, another mask
    assert np.array_equal(mlm_mask(tokens, 5, 1, roles)[0], inputs)
    assert not np.array_equal(mlm_mask(tokens, 6, 1, roles)[0], inputs)


def test_whole_word_masking_chooses_every_piece_of_a_word_together() -> None:
    """Ids 3..499 begin words, 500..989 continue them (``##`` pieces): a chosen word has all its pieces
    predicted, an unchosen one none; about 15% of words are chosen; specials never; a block that starts
    mid-word treats its first pieces as a word of their own."""
    starts = np.zeros(1000, dtype=np.uint8)
    starts[:500] = 1
    roles = TokenRoles(vocab_size=1000, special_ids=(0, 1, 2), mask_id=999, word_starts=starts.tobytes())
    rng = np.random.default_rng(0)
    words = [
        [int(rng.integers(3, 500))] + list(rng.integers(500, 990, rng.integers(0, 4))) for _ in range(40_000)
    ]
    tokens = np.array([600, 601] + [t for w in words for t in w] + [2])
    inputs, labels = mlm_mask(tokens, position=3, seed=1, roles=roles)
    chosen = labels != IGNORE
    word_id = np.cumsum(np.r_[True, starts[tokens[1:]].astype(bool)]) - 1
    for w in np.unique(word_id[chosen]):
        members = (word_id == w) & (tokens != 2)
        assert chosen[members].all()  # never half a word
    n_words = len(words) + 1
    assert len(np.unique(word_id[chosen])) / n_words == pytest.approx(0.15, abs=0.01)
    assert not chosen[-1] and (inputs[~chosen] == tokens[~chosen]).all()
    assert ((inputs == 999) & chosen).sum() / chosen.sum() == pytest.approx(0.8, abs=0.01)


def test_word_starts_come_from_the_tokenizer(sp_tokenizer_dir: Path) -> None:
    """Sentencepiece marks word starts with ▁, WordPiece marks continuations with ##."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from dapt.train.objectives import word_start_table

    sp = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    table = np.frombuffer(word_start_table(sp, len(sp)), dtype=np.uint8)
    for piece, tid in sp.get_vocab().items():
        if tid not in sp.all_special_ids:
            assert bool(table[tid]) == piece.startswith("▁")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "bond": 3, "##s": 4, "yield": 5, "##ed": 6}
    wp = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
    )
    table = np.frombuffer(word_start_table(tok, 7), dtype=np.uint8)
    assert table.tolist() == [1, 1, 1, 1, 0, 1, 0]
    roles = token_roles(tok, "mlm", 7, whole_word=True)
    assert roles.word_starts == table.tobytes()


def test_batches_per_objective_and_the_objective_inferred_from_the_model() -> None:
    from transformers import BertConfig, LlamaConfig, T5Config

    assert infer_objective(BertConfig()) == "mlm"
    assert infer_objective(T5Config()) == "span"
    assert infer_objective(LlamaConfig()) == "clm"
    blocks = np.arange(2 * 33).reshape(2, 33) % 300 + 3
    x, y = make_batch("clm", blocks, [0, 1], 0, None)
    assert np.array_equal(x, blocks[:, :-1]) and np.array_equal(y, blocks[:, 1:])
    x, y = make_batch("span", blocks, [0, 1], 0, _roles_span())  # the whole block is raw text
    assert x.shape == (2, corrupted_lengths(33)[0]) and y.shape == (2, corrupted_lengths(33)[1])
    framed = TokenRoles(vocab_size=400, special_ids=(0, 1, 2), mask_id=3, head=(1,), tail=(2,))
    x, y = make_batch("mlm", blocks, [0, 1], 0, framed)  # the tokenizer's frame around every block
    assert x.shape == (2, 35) and (x[:, 0] == 1).all() and (x[:, -1] == 2).all()
    assert (y[:, 0] == IGNORE).all() and (y[:, -1] == IGNORE).all()


@pytest.mark.parametrize("seq_len", [16, 128, 512, 2048])
def test_block_lengths_fill_the_model_input_row(seq_len: int) -> None:
    assert block_tokens("clm", seq_len) == seq_len + 1
    assert block_tokens("mlm", seq_len, frame_len=2) == seq_len - 2
    raw = block_tokens("span", seq_len)
    assert corrupted_lengths(raw)[0] <= seq_len < corrupted_lengths(raw + 1)[0]
    assert raw > seq_len  # T5's packing: more raw text than input positions


def test_token_roles_need_the_objectives_tokens(sp_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    with pytest.raises(ValueError, match="model.objective: mlm needs a mask token"):
        token_roles(tok, "mlm", 300)
    with pytest.raises(ValueError, match="model.objective: span needs T5's sentinel tokens"):
        token_roles(tok, "span", 300)


# ----------------------------------------------------------------------------------------------------
# training: 2 gloo workers vs 1, resume, export
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["mlm", "span"])
def test_two_workers_match_one_resume_exactly_and_export(
    objective: str, train_data, tiny_bert_dir: Path, tiny_t5_dir: Path, tmp_path: Path
) -> None:
    import torch.multiprocessing as mp
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from dapt.train.loop import train_loop
    from dapt.train.loss import objective_loss
    from dapt.train.objectives import token_roles

    model_dir = tiny_bert_dir if objective == "mlm" else tiny_t5_dir
    kw = dict(
        model_path=str(model_dir),
        tokenizer_path=str(model_dir),
        objective=objective,
        monitor_path=None,
        checkpoint_every=2,
        lr=3e-3,
    )
    one = make_spec(train_data, tmp_path / "one", grad_accum=2, export_dir=str(tmp_path / "x1"), **kw)
    train_loop(one)
    zero3 = make_spec(train_data, tmp_path / "zero3", sharding="zero3", export_dir=str(tmp_path / "x2"), **kw)
    crash = make_spec(train_data, tmp_path / "crash", sharding="zero3", fail_at_step=3, **kw)
    (s2,) = run_world(2, [zero3])
    assert s2["num_workers"] == 2
    ref = losses(one)
    assert all(np.isfinite(ref)) and ref[-1] < ref[0]
    np.testing.assert_allclose(losses(zero3), ref, rtol=0, atol=1e-4)
    with pytest.raises(mp.ProcessRaisedException, match="injected failure"):
        run_world(2, [crash])
    (resumed,) = run_world(2, [crash.replace(fail_at_step=None)])
    assert resumed["resumed_from_step"] == 2
    assert losses(crash.replace(fail_at_step=None)) == losses(zero3)  # masks / spans included

    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForSeq2SeqLM
    m1, m2 = auto.from_pretrained(tmp_path / "x1"), auto.from_pretrained(tmp_path / "x2")
    assert type(m1).__name__ == ("BertForMaskedLM" if objective == "mlm" else "T5ForConditionalGeneration")
    roles = token_roles(AutoTokenizer.from_pretrained(tmp_path / "x2"), objective, m2.config.vocab_size)
    blocks = np.random.default_rng(0).integers(3, 290, (2, 33))
    x, y = (torch.from_numpy(a) for a in make_batch(objective, blocks, [0, 1], 0, roles))
    with torch.no_grad():
        l1, l2 = (objective_loss(objective, m.eval(), x, y).item() for m in (m1, m2))
    assert l1 == pytest.approx(l2, abs=1e-4)  # the sharded run exported the same model as one worker


def _killed_and_resumed_equals_uninterrupted(train_data, model_dir: Path, tmp_path: Path):
    """A 6-step mlm run killed at step 5 and resumed from its step-3 checkpoint has the uninterrupted
    run's losses bit for bit; returns the uninterrupted run's spec."""
    from dapt.train.loop import train_loop

    kw = dict(
        model_path=str(model_dir), tokenizer_path=str(model_dir), objective="mlm", monitor_path=None, steps=6
    )
    full = make_spec(train_data, tmp_path / "full", checkpoint_every=3, **kw)
    train_loop(full)
    part = make_spec(train_data, tmp_path / "part", checkpoint_every=3, **kw)
    with pytest.raises(RuntimeError, match="injected failure"):
        train_loop(part.replace(fail_at_step=5))
    assert train_loop(part)["resumed_from_step"] == 3
    assert losses(part) == losses(full)
    return full


def test_dropout_resumes_exactly(train_data, tiny_bert_dir: Path, tmp_path: Path) -> None:
    """BERT's 10% dropout on: its random numbers are seeded per (seed, step, rank), so a run killed at
    step 5 and resumed from step 3 has the uninterrupted run's losses bit for bit."""
    import shutil

    from transformers import BertForMaskedLM

    from dapt.train.loop import train_loop

    model_dir = tmp_path / "bert_dropout"
    shutil.copytree(tiny_bert_dir, model_dir)
    m = BertForMaskedLM.from_pretrained(
        tiny_bert_dir, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    m.save_pretrained(model_dir)
    full = _killed_and_resumed_equals_uninterrupted(train_data, model_dir, tmp_path)
    nodrop = make_spec(
        train_data,
        tmp_path / "nodrop",
        model_path=str(tiny_bert_dir),
        tokenizer_path=str(tiny_bert_dir),
        objective="mlm",
        monitor_path=None,
        steps=6,
    )
    train_loop(nodrop)
    assert losses(nodrop) != losses(full)  # dropout was really on


def test_a_parameter_without_gradients_resumes(train_data, tiny_bert_dir: Path, tmp_path: Path) -> None:
    """An untied BERT (``tie_word_embeddings: false``) has ``cls.predictions.bias``, a parameter its
    forward never uses: it gets no gradient and no optimizer state, so the checkpoint has none for it,
    and the resume must accept that (it failed with "Missing key in checkpoint state_dict") and go on
    with the uninterrupted run's losses."""
    from transformers import BertForMaskedLM

    model_dir = tmp_path / "bert_untied"
    m = BertForMaskedLM.from_pretrained(tiny_bert_dir, tie_word_embeddings=False)
    assert m.cls.predictions.bias is not m.cls.predictions.decoder.bias  # really unused in forward
    m.save_pretrained(model_dir)
    for f in tiny_bert_dir.glob("tokenizer*"):
        (model_dir / f.name).write_bytes(f.read_bytes())
    _killed_and_resumed_equals_uninterrupted(train_data, model_dir, tmp_path)
