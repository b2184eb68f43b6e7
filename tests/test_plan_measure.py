"""The planner held to measurement on CPU.

* Model states, exactly: 2 gloo processes wrap a tiny Llama with FSDP2 ``fully_shard`` (per block and
  root), run one AdamW step, and sum the bytes of each rank's local parameter, gradient and optimizer
  tensors; the prediction from the real parameter shapes must equal it to the byte, for each rank
  (vocab 301 makes the embedding and head shard unevenly). Also ZeRO-2-style FSDP2, bf16 mixed
  precision, and DDP (a full copy per rank).
* Activations: the bytes autograd saves for backward (``saved_tensors_hooks``) against the per-layer
  formula.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

torch = pytest.importorskip("torch")

from conftest import make_tiny_llama  # noqa: E402

from dapt.train.plan import memory  # noqa: E402
from dapt.train.plan.measure import llama_config, local_state_bytes, saved_tensor_bytes  # noqa: E402

VOCAB = 301  # odd: dim 0 of the embedding and the LM head do not split evenly over 2 ranks
CASES = [
    ("zero3", "fp32"),
    ("zero3", "bf16"),
    ("zero2", "bf16"),
    ("ddp", "bf16"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        for sharding, precision in CASES:
            model = make_tiny_llama(VOCAB, seed=0)
            shapes = [list(p.shape) for p in model.parameters()]
            if sharding == "ddp":
                wrapped = DistributedDataParallel(model)
                autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            else:
                mp = (
                    MixedPrecisionPolicy(param_dtype=torch.bfloat16)
                    if precision == "bf16"
                    else MixedPrecisionPolicy()
                )
                for layer in model.model.layers:
                    fully_shard(layer, mp_policy=mp, reshard_after_forward=sharding == "zero3")
                fully_shard(model, mp_policy=mp, reshard_after_forward=sharding == "zero3")
                wrapped = model
                autocast = torch.autocast("cpu", enabled=False)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(rank))
            with autocast:
                loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            results[f"{sharding}-{precision}"] = {"measured": local_state_bytes(model, opt), "shapes": shapes}
            del wrapped, model, opt
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("plan_measure")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("sharding,precision", CASES)
def test_model_state_bytes_match_exactly(measured, sharding, precision):
    key = f"{sharding}-{precision}"
    per_rank = []
    for rank in range(2):
        got = measured[rank][key]["measured"]
        shapes = measured[rank][key]["shapes"]
        pred = memory.model_state_bytes(
            param_shapes=shapes,
            precision=precision,
            sharding=sharding,
            world_size=2,
            rank=rank,
            layout="torch",
        )
        assert got["params"] == pred["params"], (key, rank)
        assert got["grads"] == pred["grads"], (key, rank)
        assert got["optimizer"] == pred["optimizer"], (key, rank)
        # FSDP2 allocates each rank's shard padded to ceil(d0/N) rows: that is what occupies memory.
        assert got["params_storage"] == pred["params_padded"], (key, rank)
        per_rank.append(got["params"] + got["grads"] + got["optimizer"])
    if sharding == "ddp":
        assert per_rank[0] == per_rank[1]
    else:
        assert per_rank[0] > per_rank[1]  # rank 0 holds the longer chunk of the 301-row tensors


# --- activations ---------------------------------------------------------------------------------------

SHAPE = dict(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=352, vocab=1000)


def _saved(precision: str, attn: str, checkpointing: bool, seq: int = 64, batch: int = 2) -> int:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(llama_config(**SHAPE, use_cache=False), attn_implementation=attn)
    if precision == "bf16-pure":
        m.to(torch.bfloat16)
    if checkpointing:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    m.train()
    ids = torch.randint(0, SHAPE["vocab"], (batch, seq))
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with saved_tensor_bytes(m.parameters()) as r, ac:
        m(input_ids=ids, labels=ids)
    weights_cast = 0
    if precision == "bf16":  # autocast's 16-bit copies of the matmul weights (the plan's buffers)
        if checkpointing:  # inside checkpointed blocks nothing is kept; the LM head's copy is
            weights_cast = 2 * SHAPE["vocab"] * SHAPE["hidden"]
        else:
            weights_cast = 2 * sum(
                p.numel() for n, p in m.named_parameters() if p.dim() == 2 and "embed" not in n
            )
    return r["bytes"] - weights_cast


@pytest.mark.parametrize(
    "precision,checkpointing",
    [("fp32", False), ("bf16-pure", False), ("bf16", False), ("fp32", True), ("bf16", True)],
)
def test_saved_activations_match_formula(precision, checkpointing):
    seq, batch = 64, 2
    got = _saved(precision, "sdpa", checkpointing, seq, batch)
    a = memory.compute_dtype_bytes(precision)
    autocast = precision == "bf16"
    acts = memory.activation_bytes(
        SHAPE["layers"], SHAPE["hidden"], SHAPE["heads"], SHAPE["intermediate"], seq, batch, SHAPE["kv_heads"],
        a, checkpointing, True, autocast,
    )  # fmt: skip
    if checkpointing:  # at the end of the forward the recomputed block does not exist yet
        acts -= (
            seq
            * batch
            * memory.activation_bytes_per_token_layer(
                SHAPE["hidden"],
                SHAPE["heads"],
                SHAPE["intermediate"],
                SHAPE["kv_heads"],
                seq,
                a,
                True,
                autocast,
            )
        )
    log_softmax = 4 * SHAPE["vocab"] * seq * batch  # the fp32 log-probabilities the loss keeps
    pred = acts + log_softmax
    # What is left over: token ids, labels, RoPE cos/sin tables (independent of depth).
    assert pred == pytest.approx(got, rel=0.03), (got, pred)
    assert pred <= got


def test_eager_attention_keeps_the_score_matrix():
    flash = _saved("fp32", "sdpa", False)
    eager = _saved("fp32", "eager", False)
    assert eager > flash
    per_token_layer = (eager - flash) / (64 * 2 * SHAPE["layers"])
    heads_seq = SHAPE["heads"] * 64
    # the estimate's 5 bytes per score (fp32) is an upper bound here
    assert per_token_layer <= 5 * heads_seq + 2 * 4 * SHAPE["hidden"]


def test_selective_checkpointing_and_chunked_loss_match_the_formula():
    """4 blocks, every other one checkpointed, and the chunked loss in place of the full logits: what
    autograd saves is the planner's activations with ``checkpoint_every=2`` plus the chunked loss's
    two gradients carried from forward to backward (head weight, fp32; hidden states), no logits."""
    from transformers import AutoModelForCausalLM

    from dapt.train.loss import causal_lm_loss, install_chunked_head

    shape = dict(SHAPE, layers=4)
    seq, batch = 64, 2
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(llama_config(**shape, use_cache=False), attn_implementation="sdpa")
    m.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2
    )
    head = install_chunked_head(m, chunk_tokens=48)
    m.train()
    ids = torch.randint(0, shape["vocab"], (batch, seq))
    with saved_tensor_bytes(m.parameters()) as r:
        causal_lm_loss(m, ids, ids, head=head)
    h, v, f = shape["hidden"], shape["vocab"], shape["intermediate"]
    acts = memory.activation_bytes(
        4, h, shape["heads"], f, seq, batch, shape["kv_heads"], 4, True, True, False, checkpoint_every=2
    )
    per_layer = memory.activation_bytes_per_token_layer(h, shape["heads"], f, shape["kv_heads"], seq, 4, True)
    acts -= seq * batch * per_layer  # at the end of the forward the recomputed block does not exist yet
    chunked = memory.logits_bytes(v, seq, batch, 4, chunk_tokens=48, hidden=h)
    carried = chunked - 48 * v * (4 + 2 * 4)  # the chunk's own logits are gone by the end of the forward
    assert carried == 4 * v * h + seq * batch * h * 4
    pred = acts + carried
    assert pred == pytest.approx(r["bytes"], rel=0.03), (r["bytes"], pred)
