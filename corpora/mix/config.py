"""Config of the mix stage. (Owned by the mix component; imports pydantic only.)

The knobs, in the order a user thinks about them: which documents are held out (``split``), which
training documents are dropped because they overlap held-out text or evaluation data (``near_dedup``,
``decontamination``), and then the mix itself: the domain share in tokens, how many tokens in total, how
often a source may be repeated. See docs/mixing.md for the solver's exact rules.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dapt.pipeline.errors import ConfigError


class NearDedupConfig(BaseModel):
    """Removal of training documents that are (near-)copies of held-out documents."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threshold: float = Field(default=0.5, gt=0, le=1)
    """A training document whose word-5-gram Jaccard similarity with any held-out document reaches this is
    dropped from training. Lower than typical corpus dedup (0.7-0.8) on purpose: this guards the test
    set, where a false removal costs one training document and a miss inflates every reported number.
    The similarity is computed exactly against every held-out document (no LSH), see neardup.py."""
    ngram: int = Field(default=5, ge=1, le=64)
    """Words per shingle (5, the same as the clean stage's MinHash dedup)."""


class DecontaminationConfig(BaseModel):
    """Dropping training documents that share an n-gram with the evaluation tasks' data."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ngram: int = Field(default=13, ge=3, le=64)
    """Words per n-gram (13, as in the GPT-3 contamination analysis)."""
    min_words: int = Field(default=8, ge=1, le=64)
    """An evaluation text shorter than ``ngram`` words is matched as one whole n-gram of its own length
    if it has at least this many words; shorter ones are ignored (too common to mean contamination)."""
    tasks: list[str] | None = None
    """lm-eval tasks whose data training documents are checked against. None: the eval section's
    ``tasks`` (filled in when the run config is assembled, so this stage reads only its own section)."""
    task_dirs: list[str] | None = None
    """Folders of those tasks' YAMLs; None: the eval section's ``task_dirs``."""
    extra_files: list[str] = Field(default_factory=list)
    """More benchmark text to decontaminate against: ``.jsonl`` (field ``text``) or ``.txt`` (one item
    per line); reported under the file's name."""


class MixConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain_fraction: float | Literal["auto"] | None = Field(default=None, union_mode="left_to_right")
    """Target share of domain tokens in the training blocks (BloombergGPT: 0.51). Default 0.51 when
    neither this nor ``replay`` is set. ``auto``: the fraction ``dapt sweep`` recommends (its
    ``recommendation.yaml``), read when the config is loaded."""
    replay: float | None = Field(default=None, ge=0, lt=1)
    """The general share, for users who think in continual-pretraining "replay" terms:
    ``domain_fraction = 1 - replay``. Mutually exclusive with ``domain_fraction``."""
    seq_len: int = Field(default=512, ge=8, le=1 << 20)
    """Tokens per training sequence (the model's input row): the stage packs blocks of ``seq_len + 1``
    tokens for causal LM, ``seq_len`` minus the tokenizer's special frame for masked LM, and for span
    corruption the raw length whose corrupted input is ``seq_len`` tokens; it records ``seq_len`` and
    ``block_len`` in its manifest, where train and eval read them (config version 1 had
    ``train.seq_len``)."""
    span_noise_density: float = Field(default=0.15, gt=0, lt=1)
    """Span corruption (``model.objective: span``): the fraction of tokens in noise spans. With the mean
    span length it fixes how many raw tokens a block holds so that the corrupted input is ``seq_len``
    tokens (T5's packing), so it is a mix knob; train reads both from the manifest."""
    span_mean_length: float = Field(default=3.0, ge=1)
    """Span corruption: mean noise span length in tokens."""
    total_tokens: int | None = Field(default=None, gt=0)
    """Training tokens to produce (rounded to whole blocks of ``seq_len + 1``)."""
    domain_epochs: float | None = Field(default=None, gt=0)
    """Alternative to ``total_tokens``: use the domain data this many times; the total follows from the
    fraction. With neither set, the total is the largest mix that repeats no source."""
    max_epochs: float = Field(default=4.0, gt=0, le=1000)
    """Most passes over any one source (about 4 epochs of repeated data are nearly as good as new data,
    Muennighoff et al. 2023, "Scaling data-constrained language models")."""
    max_epochs_per_source: dict[str, float] = Field(default_factory=dict)
    """Per-source overrides of ``max_epochs``, by source name."""
    weights: dict[str, float] = Field(default_factory=dict)
    """Per-source weights overriding ``sources[].weight`` within each side of the mix (changing them here
    reruns only this stage, not cleaning)."""
    allow_shortfall: bool = False
    """When the request is infeasible, shrink the total to the largest feasible one at the target
    fraction instead of failing. The fraction is never silently changed."""
    seed: int | None = None
    """Seed of the document sampling and block shuffle; defaults to the run's ``seed``."""
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    encode_batch_size: int = Field(default=256, ge=1, le=1 << 16)
    """Documents per ``encode_batch`` call in the tokenisation pass."""
    docs_per_task: int = Field(default=2000, ge=1, le=1 << 22)
    """Documents per Ray task in the tokenisation pass (the unit of parallelism)."""

    @model_validator(mode="after")
    def _check(self) -> MixConfig:
        if isinstance(self.domain_fraction, float) and not 0 < self.domain_fraction <= 1:
            raise ValueError(f"mix.domain_fraction must be in (0, 1] or auto, got {self.domain_fraction}")
        if self.domain_fraction is not None and self.replay is not None:
            raise ValueError("set mix.domain_fraction or mix.replay, not both (replay = 1 - domain_fraction)")
        if self.total_tokens is not None and self.domain_epochs is not None:
            raise ValueError("set mix.total_tokens or mix.domain_epochs, not both")
        if self.domain_epochs is not None and self.domain_epochs > self.max_epochs:
            raise ValueError(
                f"mix.domain_epochs {self.domain_epochs} exceeds mix.max_epochs {self.max_epochs}"
            )
        for name, value in {**self.max_epochs_per_source, **self.weights}.items():
            if not value > 0:
                raise ValueError(f"per-source value for {name!r} must be > 0, got {value}")
        return self

    @property
    def target_domain_fraction(self) -> float:
        """The domain share the solver aims at."""
        if self.domain_fraction == "auto":
            raise ConfigError(
                "mix.domain_fraction: auto reads the sweep's recommendation, and there is none yet: "
                "run `dapt sweep --config ...` first (or `dapt run`, which runs it)"
            )
        if self.domain_fraction is not None:
            return self.domain_fraction
        if self.replay is not None:
            return 1.0 - self.replay
        return 0.51
