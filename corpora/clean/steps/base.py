"""The step contract, in a module of its own so the step modules and the registry can share it.

A step is built from its validated params (``corpora.clean.config.STEP_PARAMS``) and called as
``step(text, pii) -> (text, reason)``: ``reason`` is ``None`` to keep the (possibly transformed)
text, or ``"<step>:<rule>"`` to reject. ``pii`` is a per-document counter the PII step fills. A step
may also carry a ``batch(texts) -> reasons`` method that the runner prefers (vectorised rules).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

StepFn = Callable[[str, Counter], tuple[str, str | None]]
