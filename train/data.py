"""The packed training blocks as a deterministic stream, and which blocks each micro-batch reads."""

from __future__ import annotations

import numpy as np
import torch

from dapt.corpora.mix.store import open_blocks


class BlockStream:
    """The packed blocks as an endless, deterministic stream: epoch 0 in file order (the mix stage
    already shuffled globally), later epochs in a permutation seeded by (seed, epoch).

    Position ``p`` in the stream is a pure function of the step, so resuming needs only the step.
    """

    def __init__(self, path: str, seed: int):
        self.path = path
        self.blocks = open_blocks(path)  # the mix's token store, or a v1 tokens.npy
        self.n = len(self.blocks)
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, p: int) -> int:
        epoch, i = divmod(p, self.n)
        if epoch == 0:
            return i
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][i])

    def rows(self, start: int, count: int) -> list[int]:
        """The block rows at stream positions ``[start, start + count)``."""
        return [self.index(p) for p in range(start, start + count)]

    def get(self, start: int, count: int) -> torch.Tensor:
        rows = [self.blocks.block(r).astype(np.int64) for r in self.rows(start, count)]
        return torch.from_numpy(np.stack(rows))


def micro_batch_start(step: int, accum_i: int, rank: int, world: int, accum: int, mb: int) -> int:
    """Stream position of the first block of (step, micro-step, rank).

    A step consumes ``world * accum * mb`` consecutive blocks; micro-step ``a`` of rank ``r`` takes
    slot ``a * world + r``. Any (world, accum) with the same product sees the same blocks per step,
    which is what makes a 2-worker run match a 1-worker run with twice the accumulation.
    """
    return (step * world * accum + accum_i * world + rank) * mb
