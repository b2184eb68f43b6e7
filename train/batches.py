"""A step's micro-batches (inputs, targets, document position ids), read one step ahead.

Which blocks a micro-batch holds is a pure function of (step, micro-step, rank) (``train.data``), so
reading ahead changes nothing about the resume position: a restarted run asks for its first step and
gets exactly the blocks an uninterrupted run would have read there. One background thread prepares the
next step's batches (memmap reads, ``int64`` conversion, position ids, pinned memory on GPU) while the
current step computes; the copies to the device are non-blocking.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dapt.train.data import BlockStream, micro_batch_start
from dapt.train.flops import causal_context
from dapt.train.objectives import TokenRoles, make_batch


@dataclass(frozen=True)
class MicroBatch:
    x: torch.Tensor
    """Inputs, ``[micro_batch, seq_len]`` (span corruption: the corrupted input's length)."""
    y: torch.Tensor
    """Targets: the inputs shifted by one (clm), the original tokens at masked positions and
    ``IGNORE`` elsewhere (mlm), the sentinels and spans (span)."""
    position_ids: torch.Tensor | None
    """Positions restarting at every document start (document masking), else None (0..seq_len-1)."""


def document_positions(starts: np.ndarray) -> np.ndarray:
    """``[rows, S]`` position ids from a boolean ``[rows, S]`` of document starts: each position counts
    from the latest start at or before it, and from the row's first token when none is (a document that
    began in an earlier block)."""
    s = starts.shape[1]
    last = np.maximum.accumulate(np.where(starts, np.arange(s), 0), axis=1)
    return np.arange(s, dtype=np.int64) - last


class StepBatches:
    """The micro-batches of each step for this rank, the next step's prepared in the background."""

    def __init__(
        self,
        stream: BlockStream,
        micro_batch: int,
        accum: int,
        rank: int,
        world: int,
        device: torch.device,
        document_masking: bool = False,
        objective: str = "clm",
        seed: int = 0,
        roles: TokenRoles | None = None,
        objective_options: dict[str, float] | None = None,
    ) -> None:
        self.stream, self.mb, self.accum = stream, micro_batch, accum
        self.rank, self.world, self.device = rank, world, device
        self.document_masking = document_masking
        self.objective, self.seed, self.roles = objective, seed, roles
        self.objective_options = dict(objective_options or {})
        if document_masking and not hasattr(stream.blocks, "doc_starts"):
            raise ValueError(
                f"train.attention: document needs the mix stage's token store (document starts); "
                f"{stream.path} is an old packed-blocks file: rerun `dapt mix`"
            )
        self._context = [0.0, 0]  # sum over queries of the keys they attend to, queries (document masking)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dapt-batches")
        self._ahead: tuple[int, Future] | None = None

    def _read(self, step: int) -> list[tuple[torch.Tensor, ...]]:
        out: list[tuple[torch.Tensor, ...]] = []
        for a in range(self.accum):
            start = micro_batch_start(step, a, self.rank, self.world, self.accum, self.mb)
            block = self.stream.get(start, self.mb)
            if self.objective != "clm":  # masked or corrupted: inputs and targets are two arrays
                x, y = make_batch(
                    self.objective,
                    block.numpy(),
                    list(range(start, start + self.mb)),
                    self.seed,
                    self.roles,
                    self.objective_options,
                )
                pair = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))
                out.append(tuple(t.pin_memory() for t in pair) if self.device.type == "cuda" else pair)
                continue
            pos = None
            if self.document_masking:
                starts = np.zeros(tuple(block.shape), dtype=bool)
                for i, row in enumerate(self.stream.rows(start, self.mb)):
                    starts[i, self.stream.blocks.doc_starts(row)] = True
                positions = document_positions(starts[:, :-1])
                self._context[0] += float(positions.sum() + positions.size)
                self._context[1] += positions.size
                pos = torch.from_numpy(positions)
            if self.device.type == "cuda":
                block = block.pin_memory()
                pos = pos.pin_memory() if pos is not None else None
            out.append((block, pos))
        return out

    def mean_context(self, seq_len: int) -> float:
        """Mean keys per query of the attention mask in use: measured on the blocks read so far with
        document masking, ``(seq_len + 1) / 2`` for causal attention."""
        if self.objective != "clm":  # bidirectional encoder attention: every key (span: approximate)
            return float(seq_len)
        if self.document_masking and self._context[1]:
            return self._context[0] / self._context[1]
        return causal_context(seq_len)

    def get(self, step: int) -> list[MicroBatch]:
        """Step ``step``'s micro-batches on the device; starts reading step ``step + 1``."""
        if self._ahead is not None and self._ahead[0] == step:
            host = self._ahead[1].result()
        else:
            host = self._read(step)
        self._ahead = (step + 1, self._pool.submit(self._read, step + 1))
        batches = []
        for item in host:
            if len(item) == 2 and self.objective != "clm":
                x, y = (t.to(self.device, non_blocking=True) for t in item)
                batches.append(MicroBatch(x=x, y=y, position_ids=None))
                continue
            block, pos = item
            block = block.to(self.device, non_blocking=True)
            batches.append(
                MicroBatch(
                    x=block[:, :-1],
                    y=block[:, 1:],
                    position_ids=pos.to(self.device, non_blocking=True) if pos is not None else None,
                )
            )
        return batches

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
