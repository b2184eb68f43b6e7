"""Build the project's local lm-eval tasks from installed Debian data: ``python -m dapt.eval.build_tasks --out DIR``.

Why local tasks: the public financial benchmarks live on the Hugging Face hub and cannot be reached on an
offline machine, yet a run must still answer "did the domain get better, did general ability drop?". WordNet
(Debian ``dict-wn``, WordNet 3.0 licence, redistributable) gives both a domain and a general test of the
same form, so the two scores are directly comparable:

- ``dapt_wn_finance``: given the WordNet gloss of a finance term (``dividend``: "that part of the earnings
  of a corporation that is distributed to its shareholders"), pick the term among 4 finance terms;
- ``dapt_wn_general``: the same over nouns whose glosses have nothing to do with finance.

A noun sense is *finance* when its gloss contains a strong finance word (``financial``, ``securities``,
``stock exchange``, ...) or at least two distinct weaker ones (``money``, ``payment``, ``interest``, ...); it
is *general* when it contains none of either. Senses whose gloss names the headword are dropped (the answer
would be in the question), as are proper nouns and headwords with digits or odd characters. Distractors
come from the same pool, so the finance task needs finance vocabulary, not topic spotting.

Layout written under ``--out`` (default ``data/eval_tasks``, gitignored): one folder per task holding the
task YAML, ``validation.jsonl`` (few-shot pool), ``test.jsonl`` and ``provenance.json`` (source files with
sha256, package version, licence, selection rule, counts, seed). The YAML's ``data_files`` are relative to
the YAML itself; ``eval.tasks_registry`` resolves them when it loads the folder as an include path.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dapt.pipeline.fsutil import sha256_file

DICTD_DIR = Path("/usr/share/dictd")
BUILDER_VERSION = 1
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

STRONG = (
    "financial finance securities stock stocks shares shareholder shareholders stockholder "
    "stockholders dividend dividends bond bonds investor investors investment investments accounting "
    "accountant bank banks banking loan loans mortgage debt debts creditor creditors debtor tax taxes "
    "taxation currency monetary interest-bearing insurance premium premiums brokerage broker "
    "exchange-traded bankruptcy"
).split()
STRONG_PHRASES = ("stock exchange", "stock market", "rate of interest", "interest rate", "balance sheet")
WEAK = (
    "money payment payments paid pay price prices cost costs credit fund funds funding income profit "
    "profits revenue earnings asset assets liability liabilities account accounts market trade trading "
    "sale sales purchase buy sell owed owe value cash wealth economic economy business corporation "
    "company firm commercial contract interest rate fee charge capital security"
).split()
_WORD = re.compile(r"[a-z][a-z\-]*")
_SENSE = re.compile(r"^\s+(?:(n|v|adj|adv)\s+)?(\d+):\s?(.*)$")


@dataclass(frozen=True)
class Sense:
    word: str
    gloss: str


def _b64(s: str) -> int:
    v = 0
    for c in s:
        v = v * 64 + _B64.index(c)
    return v


def read_dictd(index: Path, data: Path) -> list[tuple[str, str]]:
    """(headword, entry text) pairs of a dictd database: ``.index`` lines are ``word<TAB>offset<TAB>length``
    in base-64 digits into the gzip-readable ``.dict.dz``."""
    with gzip.open(data) as f:
        raw = f.read()
    out = []
    for line in index.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-database"):
            continue
        off, n = _b64(parts[1]), _b64(parts[2])
        out.append((parts[0], raw[off : off + n].decode("utf-8", errors="replace")))
    return out


def clean_gloss(text: str) -> str:
    """The definition part of a WordNet sense: no [syn: ...] lists, no braces, no quoted examples."""
    text = re.sub(r"\[(syn|ant|also):[^\]]*\]", " ", text, flags=re.S)
    text = text.replace("{", "").replace("}", "")
    text = " ".join(text.split())
    text = text.split('; "')[0]  # examples follow the definition after '; "'
    return text.strip(" ;")


_PROPER_HINT = re.compile(r"\(\d{3,4}-\d{2,4}\)|\(born \d|\bcapital of\b|\bcity\b|\bbrand name\b")


def is_proper(word: str, raw_sense: str) -> bool:
    """WordNet's dictd index lowercases headwords; the ``[syn: {...}]`` list keeps the real casing
    (``{Bond}``, ``{Julian Bond}``). Biographies and places are also caught by their gloss."""
    syns = re.findall(r"\{([^}]*)\}", raw_sense.replace("\n", " "))
    syns = [" ".join(x.split()) for x in syns]
    if any(x.lower() == word and x != x.lower() for x in syns):
        return True
    return bool(_PROPER_HINT.search(raw_sense))


def noun_senses(entry: str) -> list[str]:
    """Cleaned glosses of the noun senses of one dictd WordNet entry (proper nouns dropped)."""
    word = entry.splitlines()[0].strip().lower() if entry else ""
    lines = entry.splitlines()[1:]
    senses: list[tuple[str, list[str]]] = []
    pos = None
    for line in lines:
        m = _SENSE.match(line)
        if m:
            pos = m.group(1) or pos
            senses.append((pos or "", [m.group(3)]))
        elif senses:
            senses[-1][1].append(line.strip())
    return [
        clean_gloss(" ".join(parts))
        for p, parts in senses
        if p == "n" and not is_proper(word, " ".join(parts))
    ]


def classify(gloss: str) -> str:
    """``finance``, ``general`` or ``mixed`` (neither: dropped), by the rule in the module docstring."""
    low = gloss.lower()
    words = set(_WORD.findall(low))
    strong = bool(words & set(STRONG)) or any(p in low for p in STRONG_PHRASES)
    weak = len(words & set(WEAK))
    if strong or weak >= 2:
        return "finance"
    return "general" if weak == 0 else "mixed"


def collect(entries: list[tuple[str, str]]) -> dict[str, list[Sense]]:
    """Finance and general noun senses, one headword per distinct gloss (synonyms share glosses)."""
    seen: set[str] = set()
    pools: dict[str, list[Sense]] = {"finance": [], "general": []}
    for word, entry in entries:
        if not re.fullmatch(r"[a-z][a-z \-]{2,24}", word):  # no proper nouns, digits, odd characters
            continue
        for gloss in noun_senses(entry):
            if len(gloss) < 20 or gloss in seen:
                continue
            if re.search(rf"\b{re.escape(word)}", gloss.lower()) or any(
                len(w) > 3 and w in gloss.lower() for w in word.split()
            ):
                continue  # the gloss gives the answer away
            kind = classify(gloss)
            if kind in pools:
                seen.add(gloss)
                pools[kind].append(Sense(word, gloss))
    return pools


def make_items(senses: list[Sense], n: int, n_choices: int, rng: random.Random) -> list[dict]:
    """``n`` multiple-choice items: the gloss, the right headword and distractor headwords from the pool."""
    chosen = rng.sample(senses, min(n, len(senses)))
    words = sorted({s.word for s in senses})
    items = []
    for i, s in enumerate(chosen):
        distract = set()
        while len(distract) < n_choices - 1:
            w = rng.choice(words)
            if w != s.word:
                distract.add(w)
        choices = [s.word, *sorted(distract)]
        rng.shuffle(choices)
        items.append(
            {"id": i, "gloss": s.gloss, "word": s.word, "choices": choices, "label": choices.index(s.word)}
        )
    return items


TASK_YAML = """\
# Built by `python -m dapt.eval.build_tasks` (builder v{version}); see provenance.json next to this file.
task: {name}
tag: [dapt_local]
dataset_path: json
dataset_kwargs:
  data_files:
    validation: validation.jsonl
    test: test.jsonl
validation_split: validation
test_split: test
fewshot_split: validation
output_type: multiple_choice
description: "{description}\\n\\n"
doc_to_text: "Definition: {{{{gloss}}}}\\nTerm:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
should_decontaminate: true
doc_to_decontamination_query: "{{{{gloss}}}} {{{{word}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}.0
"""

DESCRIPTIONS = {
    "finance": "Choose the finance term that matches the definition.",
    "general": "Choose the word that matches the definition.",
}


def _pkg_version(pkg: str) -> str | None:
    try:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, timeout=10
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_task(out: Path, name: str, kind: str, items: list[dict], n_val: int, provenance: dict) -> Path:
    """One task folder: YAML + validation/test jsonl + provenance.json. Returns the folder."""
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    val, test = items[:n_val], items[n_val:]
    for split, rows in (("validation", val), ("test", test)):
        with open(d / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (d / f"{name}.yaml").write_text(
        TASK_YAML.format(name=name, version=BUILDER_VERSION, description=DESCRIPTIONS[kind]), encoding="utf-8"
    )
    prov = dict(provenance, task=name, kind=kind, counts={"validation": len(val), "test": len(test)})
    (d / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n", encoding="utf-8")
    return d


def build(
    out: Path,
    dictd_dir: Path = DICTD_DIR,
    n_test: int = 500,
    n_validation: int = 50,
    n_choices: int = 4,
    seed: int = 1234,
) -> dict[str, Path]:
    """Build ``dapt_wn_finance`` and ``dapt_wn_general`` under ``out``; returns task name -> folder."""
    index, data = dictd_dir / "wn.index", dictd_dir / "wn.dict.dz"
    if not index.exists() or not data.exists():
        raise FileNotFoundError(
            f"WordNet dictd files not found in {dictd_dir}: install them with "
            "`apt-get update && apt-get install -y dict-wn`"
        )
    pools = collect(read_dictd(index, data))
    provenance = {
        "builder": "dapt.eval.build_tasks",
        "builder_version": BUILDER_VERSION,
        "source": {
            "name": "WordNet 3.0 (Debian package dict-wn)",
            "package_version": _pkg_version("dict-wn"),
            "files": {str(p): sha256_file(p) for p in (index, data)},
            "license": "WordNet 3.0 license (see /usr/share/doc/dict-wn/copyright)",
        },
        "selection": {
            "rule": "noun senses; finance = gloss has a strong finance word/phrase or >= 2 weaker ones; "
            "general = gloss has none; gloss must not contain the headword; one headword per gloss",
            "strong_words": STRONG,
            "strong_phrases": list(STRONG_PHRASES),
            "weak_words": WEAK,
            "pool_sizes": {k: len(v) for k, v in pools.items()},
        },
        "seed": seed,
        "n_choices": n_choices,
    }
    built = {}
    for kind in ("finance", "general"):
        rng = random.Random(f"{seed}-{kind}")
        items = make_items(pools[kind], n_test + n_validation, n_choices, rng)
        name = f"dapt_wn_{kind}"
        built[name] = write_task(out, name, kind, items, n_validation, provenance)
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dapt.eval.build_tasks", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default="data/eval_tasks", help="folder for the built tasks (default %(default)s)"
    )
    ap.add_argument("--dictd-dir", default=str(DICTD_DIR))
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--n-validation", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args(argv)
    try:
        built = build(Path(a.out), Path(a.dictd_dir), a.n_test, a.n_validation, seed=a.seed)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, d in built.items():
        counts = json.loads((d / "provenance.json").read_text())["counts"]
        print(f"{name}: {d} ({counts['test']} test, {counts['validation']} validation)")
    print(f"use them with eval.task_dirs: [{a.out}] and eval.tasks: [{', '.join(built)}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
