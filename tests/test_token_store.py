"""The token store against the packer it replaced, on a prep split into many shards.

Golden comparison: the same documents, budgets and seed through the real index build
(``dapt.corpora.mix.index.build_store``) and through the reference packer (``tests/reference_pack.py``,
the pre-store implementation) give the same rows, document starts and domain tokens, row by row; the
train loop's stream reads the same blocks from any position, across shard boundaries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_fixtures import index_prep, reference_pack_prep, store_from_docs, write_prep

from dapt.corpora.mix.index import permutation_on_disk
from dapt.corpora.mix.store import TokenStore, open_blocks
from dapt.train.data import BlockStream

EOS, VOCAB, BLOCK, SEED = 1, 300, 17, 11


def _docs(n: int, seed: int, max_len: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, size=int(rng.integers(1, max_len))).tolist() for _ in range(n)]


@pytest.mark.parametrize(
    "sizes",
    [{}, {"sort_rows": 3, "chunk": 4}],
    ids=["one-bucket-one-chunk", "many-buckets-many-chunks"],
)
def test_the_store_gives_the_reference_packers_rows_starts_and_domain_tokens(
    tmp_path: Path, sizes: dict[str, int]
) -> None:
    """With the default sizes every array is one bucket and one chunk; with tiny ones the sort runs over
    16 buckets and every epoch, truncation and the block inversion cross chunk boundaries."""
    sources = {"a": ("domain", _docs(30, 1)), "b": ("domain", _docs(7, 2)), "c": ("general", _docs(40, 3))}
    prep = tmp_path / "prep"
    parts = write_prep(prep, sources, EOS, VOCAB, docs_per_part=6)
    assert parts == 5 + 2 + 7  # several shards per source
    supply = {n: sum(len(d) + 1 for d in docs) for n, (_k, docs) in sources.items()}
    # a: 2.5 epochs, b: 3.3 epochs (truncated mid-epoch), c: the rest of whole blocks, under one epoch.
    budgets = {"a": int(2.5 * supply["a"]), "b": int(3.3 * supply["b"])}
    total = (budgets["a"] + budgets["b"] + int(0.7 * supply["c"])) // BLOCK * BLOCK
    budgets["c"] = total - budgets["a"] - budgets["b"]
    kinds = {n: (sources[n][0], b) for n, b in budgets.items()}
    result = index_prep(prep, tmp_path / "store", kinds, BLOCK, SEED, EOS, VOCAB, parts, **sizes)
    assert result.total_tokens == total and result.n_blocks == total // BLOCK
    assert result.domain_tokens == budgets["a"] + budgets["b"]
    assert {n: u["tokens"] for n, u in result.used.items()} == budgets

    ref = reference_pack_prep(
        prep, tmp_path / "ref", kinds, BLOCK, SEED, EOS, result.n_blocks, np.dtype("<u2")
    )
    store = TokenStore(tmp_path / "store")
    assert store.dtype == np.uint16 and len(store) == result.n_blocks
    ref_starts = np.split(ref["doc_starts"], ref["doc_offsets"][1:-1])
    for r in range(len(store)):
        assert np.array_equal(store.block(r), ref["tokens"][r]), r
        assert store.doc_starts(r).tolist() == ref_starts[r].tolist(), r
        assert store.domain_tokens(r) == int(ref["block_domain_tokens"][r]), r
    assert np.array_equal(np.asarray(store.arrays["block_stream"]), ref["block_stream_index"])
    assert not list((tmp_path / "store").glob(".*"))  # no scratch file left behind


def test_a_permutation_built_on_disk_is_numpys_with_the_same_draws(tmp_path: Path) -> None:
    for n, chunk in ((1, 1), (1000, 7), (4097, 1 << 20)):
        ours, theirs = np.random.default_rng([5, n]), np.random.default_rng([5, n])
        perm = permutation_on_disk(ours, n, tmp_path / f"p{n}", chunk)
        assert isinstance(perm, np.memmap) and np.array_equal(perm, theirs.permutation(n))
        assert ours.integers(1 << 62) == theirs.integers(1 << 62)  # the generator is left where numpy's is


def test_the_train_stream_reads_the_same_blocks_from_any_position(tmp_path: Path) -> None:
    """Resuming is starting the stream at a later position: every start, inside a shard or across a
    shard boundary, in the first epoch or a reshuffled later one, reads what a full pass reads there."""
    path = store_from_docs(tmp_path, {"s": ("domain", _docs(50, 4))}, BLOCK, EOS, VOCAB, docs_per_part=5)
    store = TokenStore(path.parent)
    assert len(store.info["parts"]) == 10
    stream = BlockStream(str(path), seed=3)
    n = stream.n
    full = stream.get(0, 3 * n)
    for start in (1, n // 2, n - 1, n, n + 7, 2 * n + 3):
        assert torch_equal(stream.get(start, 5), full[start : start + 5]), start
    assert torch_equal(full[:n], full[:n]) and not torch_equal(full[:n], full[n : 2 * n])
    # Every block of the first epoch is a row of the store, in row order.
    assert np.array_equal(full[:n].numpy(), store.blocks(range(n)).astype(np.int64))


def torch_equal(a, b) -> bool:
    return bool((a.shape == b.shape) and (a == b).all())


def test_a_damaged_store_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = store_from_docs(tmp_path, {"s": ("domain", _docs(20, 5))}, BLOCK, EOS, VOCAB)
    damaged = path.parent / "instance_start.bin"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"instance_start\.bin: \d+ entries, index\.json says \d+"):
        open_blocks(path)


def test_plain_store_reads_back_its_documents(tmp_path: Path) -> None:
    """``write_plain_store`` (benchmarks' store): rows are the concatenated documents, cut in blocks,
    and document starts are where each document begins."""
    from dapt.corpora.mix.store import write_plain_store

    docs = [np.array([5, 6, 7, 2]), np.array([8, 2]), np.array([9, 10, 11, 12, 13, 2]), np.array([4, 2])]
    store = write_plain_store(tmp_path / "s", docs, block_len=5, eos_id=2, vocab_size=100)
    flat = np.concatenate(docs)
    assert len(store) == 2
    assert store.blocks(range(2)).tolist() == [flat[:5].tolist(), flat[5:10].tolist()]
    assert store.doc_starts(0).tolist() == [0, 4] and store.doc_starts(1).tolist() == [1]
    assert store.domain_tokens(0) == 5
