"""Silence the known import-time messages of libraries dapt does not use, message by message.

In the frame because every process needs it: the CLI's driver (stages import ``transformers``) and
every training worker (``dapt.train.loop`` installs it first thing). Every such process imports ``transformers``, whose quantizer registry imports ``torchao`` (a
dependency of the eval stage's int8 variant). That import logs, in every worker:

* torch's ``<enum 'KernelPreference'> is an Enum subclass and is now natively supported by
  torch.compile ...`` (and the same for ``ScaleCalculationMode``): torchao calls a torch API that torch
  has deprecated for enums; nothing a user can act on;
* on a CPU-only machine, ``Failed to load .../torchao/_C_*.so`` for torchao's CUDA kernels and
  ``Detected no triton``: training never calls them.

:func:`install` adds a :class:`logging.Filter` to exactly those loggers that drops exactly those
messages (matched on the message text), before anything imports torchao. Other messages of the same
loggers, and every other warning, still show; no logger's level is changed.
"""

from __future__ import annotations

import logging

_NOISE: dict[str, tuple[tuple[str, str], ...]] = {
    # logger name: (message prefix, text the message must also contain)
    "torch.utils._pytree": (("%s is an Enum subclass and is now natively supported by torch.compile", ""),),
    "torchao": (("Failed to load ", "/torchao/_C"),),
    "torchao.kernel.intmm": (("Warning: Detected no triton", ""),),
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, patterns: tuple[tuple[str, str], ...]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not any(msg.startswith(prefix) and needle in msg for prefix, needle in self.patterns)


def install() -> None:
    """Idempotent: each logger gets the filter once."""
    for name, patterns in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(patterns))
