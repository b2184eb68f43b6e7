"""Config of the clean stage. (Owned by the clean component; imports pydantic only.)

Two kinds of models live here:

- :class:`CleanConfig`, the ``clean:`` section of the run config (dedup, sharding, profiles);
- one params model per cleaning step (``STEP_PARAMS``), used to validate each source's
  ``steps: [{name, params}]`` list. Every threshold has the published default (Gopher: Rae et al.
  2021, table A1; C4: Raffel et al. 2020; FineWeb: Penedo et al. 2024) and a range check, so a
  typo or an impossible value is a ConfigError naming ``sources.N.steps.M.params.KEY``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dapt.pipeline.knobs import NOT_FINGERPRINTED


class StepSpec(BaseModel):
    """One cleaning step in a source's step list: its registered name and its parameters."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormalizeParams(_Params):
    """Unicode normalisation. A transform: it never drops a document."""

    form: Literal["NFC", "NFKC", "none"] = "NFC"
    fix_mojibake: bool = False
    """Repair mis-decoded text (``Ã©`` -> ``é``) with ftfy. Off by default: it is slow and can alter
    legitimate text; turn it on for scraped sources known to be double-decoded."""
    strip_control: bool = True
    """Remove C0/C1 control characters other than tab and newline (they break tokenizers)."""
    collapse_spaces: bool = True
    """Runs of spaces/tabs inside a line become one space; trailing spaces are removed."""
    max_blank_lines: int = Field(default=2, ge=1, le=100)
    """Longer runs of blank lines are cut to this many (tables and paragraphs survive)."""


class LengthParams(_Params):
    """Bounds on size. A 5 MB document is legal input; documents above ``max_chars`` are rejected."""

    min_chars: int = Field(default=1, ge=0)
    max_chars: int = Field(default=10_000_000, ge=1)
    min_words: int = Field(default=0, ge=0)


class GopherQualityParams(_Params):
    """Gopher quality rules (MassiveText, table A1). ``null`` disables a rule."""

    min_words: int | None = Field(default=50, ge=0)
    max_words: int | None = Field(default=100_000, ge=1)
    min_avg_word_length: float | None = Field(default=3.0, ge=0)
    max_avg_word_length: float | None = Field(default=10.0, ge=0)
    max_symbol_word_ratio: float | None = Field(default=0.1, ge=0)
    """Ratio of ``#`` and ``...`` occurrences to words."""
    max_bullet_lines_ratio: float | None = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(default=0.3, ge=0, le=1)
    min_alpha_words_ratio: float | None = Field(default=0.8, ge=0, le=1)
    """Fraction of whitespace-separated words containing a letter. Numeric tables fail this: the
    domain profile disables it."""
    min_stop_words: int | None = Field(default=2, ge=0)
    """Documents must contain at least this many of: the, be, to, of, and, that, have, with."""


class GopherRepetitionParams(_Params):
    """Gopher repetition rules (table A1): duplicate lines/paragraphs and repeated n-grams."""

    dup_line_frac: float | None = Field(default=0.30, ge=0, le=1)
    dup_para_frac: float | None = Field(default=0.30, ge=0, le=1)
    dup_line_char_frac: float | None = Field(default=0.20, ge=0, le=1)
    dup_para_char_frac: float | None = Field(default=0.20, ge=0, le=1)
    top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """n -> maximum fraction of word characters covered by the most frequent n-gram."""
    dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    """n -> maximum fraction of word characters covered by repeated occurrences of n-grams."""


class C4Params(_Params):
    """C4 line and document rules (Raffel et al.). Line rules remove lines; document rules drop."""

    drop_lines_without_terminal_punct: bool = True
    min_words_per_line: int = Field(default=3, ge=0)
    min_sentences: int = Field(default=5, ge=0)
    """Documents with fewer sentences (after line removal) are dropped."""
    max_word_length: int = Field(default=1000, ge=1)
    """Lines with a word longer than this are removed."""
    drop_javascript_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True
    """Drop documents containing ``{`` (a code filter; kills JSON, LaTeX and XBRL snippets)."""
    drop_policy_lines: bool = True
    """Remove lines mentioning terms of use, privacy policy, cookies."""


class FineWebParams(_Params):
    """FineWeb quality rules (Penedo et al. 2024)."""

    min_line_punct_ratio: float | None = Field(default=0.12, ge=0, le=1)
    """Fraction of lines that must end in terminal punctuation."""
    max_short_line_ratio: float | None = Field(default=0.67, ge=0, le=1)
    short_line_chars: int = Field(default=30, ge=1)
    max_dup_line_char_ratio: float | None = Field(default=0.1, ge=0, le=1)
    max_newline_word_ratio: float | None = Field(default=0.3, ge=0)
    """Newlines per word above this (lists, lone-word lines) drop the document."""


class LanguageParams(_Params):
    """Language identification with py3langid (offline)."""

    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    min_score: float = Field(default=0.65, ge=0, le=1)
    """Minimum normalised probability of the detected language."""
    max_chars: int = Field(default=1000, ge=100)
    """Only the first ``max_chars`` characters are classified: py3langid walks its byte automaton
    in Python (~1 MB/s), and a thousand characters identify a language reliably."""
    letters_only: bool = True
    """Classify the text with digits and punctuation removed: a numeric table's figures say nothing
    about its language and otherwise push it towards random labels."""
    min_letters: int = Field(default=0, ge=0)
    """Documents with fewer letters than this are kept unclassified (too little evidence)."""


class PIIParams(_Params):
    """PII redaction: matches are replaced by typed placeholders and counted per type."""

    types: list[Literal["email", "phone", "ipv4", "ipv6", "card", "ssn", "iban"]] = Field(
        default_factory=lambda: ["email", "phone", "ipv4", "ipv6", "card", "ssn", "iban"]
    )
    placeholder: str = Field(default="<{TYPE}>", min_length=1)
    """Replacement text; ``{TYPE}`` becomes the upper-case type name (``<EMAIL>``)."""


STEP_PARAMS: dict[str, type[_Params]] = {
    "normalize": NormalizeParams,
    "length": LengthParams,
    "gopher_quality": GopherQualityParams,
    "gopher_repetition": GopherRepetitionParams,
    "c4": C4Params,
    "fineweb": FineWebParams,
    "language": LanguageParams,
    "pii": PIIParams,
}


def _spec(name: str, **params: Any) -> StepSpec:
    return StepSpec(name=name, params=params)


def default_profile(kind: str) -> list[StepSpec]:
    """The default step list of a source kind (justified in docs/cleaning.md).

    ``general``: the web recipe (Gopher + C4 + FineWeb) with published thresholds.
    ``domain``: keeps numeric and tabular text: no alpha-word or stop-word rule, no C4 punctuation /
    curly-bracket / sentence rules, no FineWeb line-punctuation or short-line rules; repetition rules
    stay (boilerplate is repetitive in every domain) with the line rules loosened for tables.
    """
    if kind == "general":
        return [
            _spec("normalize"),
            _spec("length", min_chars=1),
            _spec("language"),
            _spec("gopher_repetition"),
            _spec("gopher_quality"),
            _spec("c4"),
            _spec("fineweb"),
            _spec("pii"),
        ]
    if kind == "domain":
        return [
            _spec("normalize"),
            _spec("length", min_chars=1),
            _spec("language", min_score=0.5),
            _spec(
                "gopher_repetition",
                dup_line_frac=0.5,
                dup_line_char_frac=0.4,
                top_ngram_char_frac={2: 0.30, 3: 0.28, 4: 0.26},
            ),
            _spec(
                "gopher_quality",
                min_words=20,
                min_alpha_words_ratio=None,
                min_stop_words=None,
                max_symbol_word_ratio=0.5,
                max_avg_word_length=15.0,
                min_avg_word_length=1.5,
            ),
            _spec("pii"),
        ]
    raise ValueError(f"no default profile for kind {kind!r}")


def validate_steps(specs: list[StepSpec], where: str) -> list[tuple[str, _Params]]:
    """Validate a step list into typed params. Raises ValueError with ``where.M.params.KEY: msg``.

    (The stage turns it into a ConfigError; this module must not import the pipeline.)
    """
    out: list[tuple[str, _Params]] = []
    for i, spec in enumerate(specs):
        model = STEP_PARAMS.get(spec.name)
        if model is None:
            raise ValueError(
                f"{where}.{i}.name: unknown step {spec.name!r} (known: {', '.join(STEP_PARAMS)})"
            )
        try:
            out.append((spec.name, model.model_validate(spec.params)))
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ValueError(f"{where}.{i}.params.{key}: {msg}") from None
    return out


class NearDedupConfig(BaseModel):
    """MinHash LSH near-duplicate removal."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ngram: int = Field(default=5, ge=1, le=64)
    """Shingle size in words."""
    num_perm: int = Field(default=112, ge=1, le=1024)
    bands: int = Field(default=16, ge=1, le=1024)
    rows: int = Field(default=7, ge=1, le=1024)
    """bands x rows <= num_perm. 16 x 7 makes a pair with Jaccard 0.8 a candidate with p = 0.977
    (14 x 8, datatrove's default, only 0.92)."""
    threshold: float = Field(default=0.8, ge=0, le=1)
    """With ``verify``, candidate pairs are duplicates when their true shingle Jaccard is at least this."""
    verify: bool = True
    """Compute the true shingle Jaccard of each candidate pair (else every LSH candidate pair counts)."""
    scope: Literal["global", "source"] = "global"
    """``global`` finds near-duplicates across sources (domain text also in the general corpus);
    ``source`` only within each source. Exact dedup is always global."""
    max_bucket_pairs: int = Field(default=16, ge=2, le=10_000)
    """Buckets up to this size are verified pairwise; larger ones as a star around their lowest rank
    (the copy dedup would keep), so each member is compared with the canonical one."""


class CleanConfig(BaseModel):
    """The ``clean:`` section."""

    model_config = ConfigDict(extra="forbid")
    profiles: dict[Literal["domain", "general"], list[StepSpec]] = Field(default_factory=dict)
    """Replace the built-in default step list of a kind (a source's own ``steps`` still win)."""
    exact_dedup: bool = True
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    shard_mb: float = Field(default=64, gt=0, le=4096)
    """Uncompressed JSONL/txt files larger than this are split into byte ranges read in parallel."""
    batch_docs: int = Field(default=1000, ge=1, le=1_000_000)
    """Documents per processing batch inside a shard (bounds memory together with shard_mb)."""
    shuffle_partitions: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = Field(
        default="auto", json_schema_extra=NOT_FINGERPRINTED
    )
    """Partitions of the dedup shuffles. ``auto``: each shuffle sized from its own rows and the cluster's
    CPUs (at least two per CPU, about 2 million shuffle rows each; ``dedup.shuffle_sizing`` and
    ``partitions_for``), recorded in the manifest under ``dedup.shuffle``. The decisions do not depend
    on it (tested), so it is not fingerprinted."""
    buckets: Annotated[int, Field(ge=1, le=1 << 20)] | Literal["auto"] = Field(
        default="auto", json_schema_extra=NOT_FINGERPRINTED
    )
    """Hash buckets per shuffle: groups are buckets, not single keys (per-group overhead). ``auto``: at
    least 64 and the partition count, about 250,000 shuffle rows per bucket (one group's memory)."""
    rejected_text_chars: int = Field(default=100_000, ge=0)
    """Rejected documents keep at most this many characters of text (0: none)."""
    max_cc_rounds: int = Field(default=40, ge=1, le=1000)
    """Upper bound on connected-components rounds (each is one shuffle)."""
    on_bad_file: Literal["fail", "skip"] = "fail"
    """A file that cannot be read as a whole (truncated or corrupt gzip/zstd, a broken Parquet footer or
    page, unopenable): ``fail`` ends the stage with one line naming the file and how far reading got,
    publishing nothing; ``skip`` leaves the whole file out and lists it with its reason under
    ``skipped_files`` in the manifest (its documents count nowhere, so in = kept + rejected still holds
    for what was read). Fail is the default: a silently smaller corpus is worse than a stopped run."""
    dedup_prefer: Literal["domain", "general", "first"] = "domain"
    """Which copy of a duplicate cluster is kept. ``domain``: a copy in a domain source wins over one in
    a general source (a document in both is domain text that leaked into the general crawl, and the
    domain side is what the run adapts to); ``general`` the reverse; ``first``: the first in config
    order. Within a side, the first copy in config and file order wins."""
