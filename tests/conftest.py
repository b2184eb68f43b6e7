"""Shared hermetic fixtures: 50 documents, a 300-piece sentencepiece tokenizer, a 2-layer Llama, one Ray.

Everything is built here from code, offline, in seconds. Ray starts once per test session (it costs
5-10 s) bound to 127.0.0.1 with a small object store.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from dapt.pipeline.ray_runtime import ray_env  # noqa: E402

ray_env()

_FIN = [
    "The company reported net income of ${a},{b:03d} million for the quarter ended March 31.",
    "Revenue rose {c}% year over year to ${a}.{c} billion, driven by higher interest income.",
    "The board declared a quarterly dividend of ${c}.{b:02d} per share, payable to holders of record.",
    "Total assets were ${a},{b:03d} million and shareholders' equity was ${c},{a:03d} million.",
    "Debit the accounts receivable ledger and credit revenue when the invoice is issued.",
    "The bond's yield to maturity fell {c} basis points as the central bank held rates steady.",
]
_GEN = [
    "The river wound slowly through the green valley under a pale autumn sky.",
    "She opened the old book and read aloud the story of the lighthouse keeper.",
    "In the morning the village market filled with bread, cheese and fresh apples.",
    "The children ran across the field chasing the small brown dog toward the barn.",
    "Music drifted from the open window while the rain fell on the quiet street.",
    "He planted tomatoes along the fence and watered them every evening at dusk.",
]


_FIN_WORDS = (
    "asset liability equity revenue expense accrual amortization depreciation dividend coupon yield "
    "maturity principal interest ledger journal debit credit invoice receivable payable inventory "
    "goodwill impairment hedge derivative option swap futures collateral margin leverage liquidity "
    "solvency audit fiscal quarter annual filing disclosure covenant tranche securitization portfolio "
    "benchmark index volatility arbitrage custody settlement clearing broker underwriter prospectus"
).split()
_GEN_WORDS = (
    "river mountain forest garden window kitchen morning evening winter summer village castle bridge "
    "harbor meadow orchard candle lantern blanket kettle pebble feather thunder whisper journey "
    "stranger neighbor grandmother sailor shepherd baker painter poet dragon knight princess wizard "
    "sparrow rabbit horse cattle wheat barley honey bread cheese apple cherry violet silver golden"
).split()


def make_docs(kind: str, n: int, seed: int = 0, sentences: int = 8) -> list[str]:
    """``n`` distinct small documents of finance-like or general-like English."""
    rng = random.Random(f"{kind}-{seed}")
    pool = _FIN if kind == "domain" else _GEN
    words = _FIN_WORDS if kind == "domain" else _GEN_WORDS
    docs = []
    for i in range(n):
        parts = [
            rng.choice(pool).format(a=rng.randint(1, 999), b=rng.randint(0, 999), c=rng.randint(1, 99))
            for _ in range(sentences)
        ]
        parts.append(" ".join(rng.choice(words) for _ in range(12)).capitalize() + ".")
        docs.append(f"Document {i} ({kind}). " + " ".join(parts))
    return docs


@pytest.fixture(scope="session")
def tiny_docs() -> dict[str, list[str]]:
    """50 documents: 25 domain (finance-like), 25 general."""
    return {"domain": make_docs("domain", 25), "general": make_docs("general", 25)}


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-piece sentencepiece Unigram model (digits split) trained on the fixtures.

    No byte fallback: its 256 byte pieces alone would not fit in 300. Unseen characters map to <unk>.
    """
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    text = d / "train.txt"
    text.write_text("\n".join(make_docs("domain", 200) + make_docs("general", 200)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(d / "sp"),
        vocab_size=300,
        model_type="unigram",
        byte_fallback=False,
        split_digits=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    return d / "sp.model"


@pytest.fixture(scope="session")
def sp_tokenizer_dir(sp_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model as an HF tokenizer folder (tokenizer.model loaded by AutoTokenizer, then saved)."""
    from transformers import AutoTokenizer

    src = tmp_path_factory.mktemp("sp_hf_src")
    shutil.copy(sp_model_path, src / "tokenizer.model")
    tok = AutoTokenizer.from_pretrained(src)
    out = tmp_path_factory.mktemp("sp_hf")
    tok.save_pretrained(out)
    return out


def make_tiny_llama(vocab_size: int, seed: int = 0, tie: bool = False):
    """A 2-layer Llama (hidden 64) with random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(sp_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama saved with the 300-piece tokenizer: a complete local HF model folder."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    model = make_tiny_llama(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _tokenizer_with(src: Path, out: Path, **special):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens(special)
    tok.save_pretrained(out)
    return tok


@pytest.fixture(scope="session")
def tiny_bert_dir(sp_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BertForMaskedLM with the test tokenizer plus a mask token."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = _tokenizer_with(sp_tokenizer_dir, out, mask_token="<mask>")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=0,
        hidden_dropout_prob=0.0,  # 1 worker vs 2 compares numerics, not per-rank dropout draws
        attention_probs_dropout_prob=0.0,
    )
    BertForMaskedLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uncased BERT-style WordPiece tokenizer (400 pieces) trained on the fixture documents."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(make_docs("domain", 100) + make_docs("general", 100), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    out = tmp_path_factory.mktemp("bert")
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(sp_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2+2-layer T5ForConditionalGeneration with the test tokenizer plus sentinels <extra_id_i>."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny_t5")
    tok = _tokenizer_with(
        sp_tokenizer_dir, out, additional_special_tokens=[f"<extra_id_{i}>" for i in range(16)]
    )
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray per test session, on 127.0.0.1, 2 CPUs, 1 GB object store."""
    import ray

    from dapt.pipeline.config import RayConfig
    from dapt.pipeline.ray_runtime import init_ray, shutdown_ray

    os.environ.pop("RAY_ADDRESS", None)
    info = init_ray(RayConfig(num_cpus=2, object_store_memory_gb=1.0))
    yield info
    shutdown_ray()
    if ray.is_initialized():  # a test re-initialised Ray after a stage shut its own down
        ray.shutdown()
