"""Local classification sets for the downstream probe (``eval/probe.py``): ``python -m dapt.eval.probe_data``.

Why these sets: "Don't Stop Pretraining" (Gururangan et al. 2020) judges domain-adaptive MLM pretraining
by fine-tuning a classifier on an in-domain task and on a general one. The public finance sets (Financial
PhraseBank and the like) live on the Hugging Face hub, which an offline machine cannot reach, and no
sentiment labels for finance text exist offline. What does exist is an objective topic label on
dictionary text: GCIDE (Debian ``dict-gcide``) marks senses with subject labels such as ``(Com.)``,
``(Finance)``, ``(Stock Exchange)``, ``(Law)``, ``(Bot.)``, ``(Naut.)``. A sense's definition, with the
label cut out, becomes the text, and the label's group becomes the class:

- **domain** (``finance``, ``commerce``, ``law``): definitions from the business register. Telling a
  stock-exchange sense from a trade-goods sense from a legal one needs the vocabulary that finance
  pretraining should sharpen. The finance/commerce split follows the labels of
  ``corpora.recipes.parsers.dictd.FINANCE_LABEL_RE`` (the demo's domain selection): ``Com.``, ``Commerce``,
  ``Mercantile``, ``Trade``, ``Exchange`` are commerce, the rest (finance, stock exchange, banking,
  bookkeeping, political economy, insurance) finance; law is every other label ending in "Law".
- **general** (``botany``, ``zoology``, ``nautical``, ``music``, ``medicine``): the same kind of text and
  task, far from finance. A drop here is the forgetting side of the question.

Both sets are balanced per class. Senses of one dictionary entry never straddle train and test (the
split is by entry), identical definitions are kept once, and definitions are cut to ``MAX_WORDS`` words.

**Overlap with training text.** The demo's ``gcide_finance`` source is *all* finance-labelled GCIDE
senses, subject labels included, and its ``gcide`` source a 0.5 MB sample of the rest: an adapted model
has likely read the domain set's finance/commerce definitions next to their labels during continued
pretraining (the setting Gururangan et al. call task-adaptive pretraining, on unlabelled task text). The
probe then measures whether the representations separate the subjects, not unseen-text generalisation;
state this next to the numbers. The law and general classes are mostly unseen.

Schema: the fields of the shipped ``fin_fpb`` task (FinBen "flare" releases: ``id``, ``query``, ``answer``,
``text``, ``choices``, ``gold``) plus ``label`` (the class name, what :func:`dapt.eval.probe.probe` reads)
and ``where`` (byte offset of the entry). A set can therefore also run through the shipped FPB YAML with
``dataset_path`` pointed at it. Layout under ``out_dir``: ``{domain,general}/{train,test}.jsonl`` and
``probe.json`` (labels, counts, rules, source hashes, package version, licence, seed).

Licence: GCIDE is GPL-2.0-or-later (``/usr/share/doc/dict-gcide/copyright``); sets built from it carry
that licence. The tiny sets in ``corpora/tiny/probe/`` (:func:`build_tiny_probe_sets`) are the dapt
authors' own template sentences (Apache-2.0), for tests and the tiny configs.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dapt.corpora.recipes import parsers
from dapt.corpora.recipes.parsers.dictd import SENSE_START, SUBJECT_LABEL
from dapt.pipeline.fsutil import sha256_file

DICTD_DIR = Path("/usr/share/dictd")
BUILDER_VERSION = 1
MIN_WORDS = 4
MAX_WORDS = 50
SETS = ("domain", "general")
_XREF = re.compile(r"^(?:see|same as|cf\.|one of|pl\.|plural of)\b", re.I)  # a pointer, not a definition

DOMAIN_LABELS = ["finance", "commerce", "law"]
GENERAL_LABELS = ["botany", "zoology", "nautical", "music", "medicine"]
_PREFIX = r"^(?:u\. ?s\. |eng\. |new york |london |railroad )?"
COMMERCE_RE = re.compile(
    _PREFIX + r"(?:com\.|commerce|commercial law|com\. law|mercantile(?: law)?|trade|exchanges?)$"
)
LAW_RE = re.compile(r"(?:^|[ .])law$")
GENERAL_RES = {
    "botany": re.compile(r"^(?:bot\.|botany)$"),
    "zoology": re.compile(r"^(?:zool\.?|zoology)$"),
    "nautical": re.compile(r"^(?:naut\.|nautical)$"),
    "music": re.compile(r"^(?:mus\.|music)$"),
    "medicine": re.compile(r"^(?:med\.?|medicine)$"),
}


def _norm(label: str) -> str:
    return " ".join(label.lower().split())


def label_class(label: str, which: str) -> str | None:
    """The class of one GCIDE subject label in set ``which`` (``domain``/``general``), or None."""
    n = _norm(label)
    if which == "domain":
        if parsers.is_finance_label(label):
            return "commerce" if COMMERCE_RE.match(n) else "finance"
        return "law" if LAW_RE.search(n) else None
    return next((c for c, rx in GENERAL_RES.items() if rx.match(n)), None)


def sense_units(entry: str) -> list[str]:
    """An entry cut into its head and its numbered senses / ``{phrase}`` senses (the split the demo's
    ``gcide_finance_part`` uses), so a label applies to the sense it stands in."""
    units: list[list[str]] = [[]]
    for ln in entry.split("\n"):
        if SENSE_START.match(ln):
            units.append([])
        units[-1].append(ln)
    return ["\n".join(u) for u in units if u]


def definition(unit: str, label: str) -> str:
    """The definition that follows ``(label)`` in a sense: first line after the label, usage marks
    (``[Obs.]``, ``[U. S.]``), other subject labels and ``--Author`` citations removed, at most
    ``MAX_WORDS`` words; ``""`` when nothing usable is left. The label itself is the answer and is cut."""
    text = parsers.gcide_to_text(unit)
    i = text.find(f"({label})")
    if i < 0:
        return ""
    d = text[i + len(label) + 2 :].strip().split("\n")[0]
    d = re.sub(r"\[[^\]]*(?:\]|$)", " ", d)  # a usage mark may run past the line: cut to its end
    d = SUBJECT_LABEL.sub(" ", d)
    d = re.sub(r"\s--\s?[A-Z][^;]*$", "", d)  # "--Ayliffe." citation
    d = re.sub(
        r"\s--\s(?:a|n|v|adv|v\. ?[ti])\.\s.*$", "", d
    )  # "-- a. Pertaining to ...": another part of speech
    d = re.sub(r"\s+([,.;:])", r"\1", " ".join(d.split())).strip(" ,;:-.")
    d = re.sub(r"^\([a-z]\)\s*", "", d)
    kept: list[str] = []
    for sentence in re.split(r"(?<=\.)\s+(?=[A-Z])", d):
        if kept and len(" ".join(kept + [sentence]).split()) > MAX_WORDS:
            break
        kept.append(sentence)
    d = " ".join(" ".join(kept).split()[:MAX_WORDS])
    if len(d.split()) < MIN_WORDS or not re.search(r"[a-z]", d) or _XREF.match(d):
        return ""
    return d[0].upper() + d[1:]


def collect(entries: Iterable[tuple[Any, str]], which: str) -> dict[str, list[tuple[int, str]]]:
    """``{class: [(entry offset, definition), ...]}`` over all senses whose subject labels all fall in one
    class of set ``which``. Definitions seen before (in any class) are skipped."""
    labels = DOMAIN_LABELS if which == "domain" else GENERAL_LABELS
    pools: dict[str, list[tuple[int, str]]] = {c: [] for c in labels}
    seen: set[str] = set()
    for e, text in entries:
        for unit in sense_units(text):
            found = [(lb, label_class(lb, which)) for lb in parsers.gcide_labels(unit)]
            classes = {c for _, c in found if c}
            if len(classes) != 1:
                continue
            cls = classes.pop()
            lb = next(lb for lb, c in found if c == cls)
            d = definition(unit, lb)
            key = d.lower()
            if d and key not in seen:
                seen.add(key)
                pools[cls].append((e.offset, d))
    return pools


def split_pool(
    pool: list[tuple[int, str]],
    n_train: int,
    n_test: int,
    rng: random.Random,
    sides: dict[int, str] | None = None,
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Test first, then train, drawn by entry (all senses of an entry on one side) in a seeded order.
    ``sides`` (entry offset -> "train"/"test", updated) keeps an entry whose senses fall in several
    classes on the side an earlier class put it. A short pool fills test and gives train what is left."""
    sides = {} if sides is None else sides
    by_entry: dict[int, list[tuple[int, str]]] = {}
    for off, d in pool:
        by_entry.setdefault(off, []).append((off, d))
    keys = sorted(by_entry)
    rng.shuffle(keys)
    out: dict[str, list[tuple[int, str]]] = {"test": [], "train": []}
    room = {"test": n_test, "train": n_train}
    for k in keys:
        fits = [s for s in ("test", "train") if len(out[s]) + len(by_entry[k]) <= room[s]]
        side = sides.get(k, fits[0] if fits else None)
        if side in fits:
            out[side].extend(by_entry[k])
            sides[k] = side
    return out["train"], out["test"]


def fpb_row(i: str, text: str, label: str, labels: list[str], where: str, what: str) -> dict[str, Any]:
    """One item in the shipped ``fin_fpb`` task's fields, plus ``label`` and ``where``; the ``query``
    asks for the subject of ``what`` ("dictionary definition") among the labels."""
    question = f"What is the subject of this {what}: {', '.join(labels[:-1])} or {labels[-1]}?"
    return {
        "id": i,
        "query": f"{question}\nText: {text}\nAnswer:",
        "answer": label,
        "text": text,
        "choices": list(labels),
        "gold": labels.index(label),
        "label": label,
        "where": where,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _counts(rows: list[dict], labels: list[str]) -> dict[str, int]:
    return {lb: sum(r["label"] == lb for r in rows) for lb in labels}


def build_probe_sets(
    out_dir: str | Path,
    dictd_dir: str | Path = DICTD_DIR,
    n_train: dict[str, int] | None = None,
    n_test: dict[str, int] | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """Write the domain and general probe sets from GCIDE under ``out_dir`` (see the module docstring);
    returns what ``probe.json`` holds. ``n_train``/``n_test``: items per set (default domain 300/150,
    general 400/200), split evenly over the classes; deterministic for a given seed and GCIDE file."""
    out, dd = Path(out_dir), Path(dictd_dir)
    index, data = dd / "gcide.index", dd / "gcide.dict.dz"
    if not index.exists() or not data.exists():
        raise FileNotFoundError(
            f"GCIDE dictd files not found in {dd}: install them with `apt-get install -y dict-gcide`"
        )
    n_train = {"domain": 300, "general": 400, **(n_train or {})}
    n_test = {"domain": 150, "general": 200, **(n_test or {})}
    entries = parsers.read_dictd(index, data)
    meta: dict[str, Any] = {
        "builder": "dapt.eval.probe_data",
        "builder_version": BUILDER_VERSION,
        "schema": "fin_fpb fields (id, query, answer, text, choices, gold) + label, where",
        "source": {
            "name": "GCIDE (Debian package dict-gcide)",
            "package_version": _pkg_version("dict-gcide"),
            "files": {str(p): sha256_file(p) for p in (index, data)},
            "license": "GPL-2.0-or-later (see /usr/share/doc/dict-gcide/copyright)",
        },
        "seed": seed,
        "sets": {},
    }
    for which in SETS:
        labels = DOMAIN_LABELS if which == "domain" else GENERAL_LABELS
        pools = collect(entries, which)
        train, test = [], []
        sides: dict[int, str] = {}
        for lb in labels:
            rng = random.Random(f"{seed}-{which}-{lb}")
            n_tr, n_te = n_train[which] // len(labels), n_test[which] // len(labels)
            tr, te = split_pool(pools[lb], n_tr, n_te, rng, sides)
            train += [(lb, o, d) for o, d in tr]
            test += [(lb, o, d) for o, d in te]
        random.Random(f"{seed}-{which}-order").shuffle(train)
        random.Random(f"{seed}-{which}-order-test").shuffle(test)
        for split, rows in (("train", train), ("test", test)):
            items = [
                fpb_row(
                    f"{which}-{split}-{i:04d}", d, lb, labels, f"gcide.dict.dz@{o}", "dictionary definition"
                )
                for i, (lb, o, d) in enumerate(rows)
            ]
            _write_jsonl(out / which / f"{split}.jsonl", items)
            meta["sets"].setdefault(which, {"labels": labels, "counts": {}})["counts"][split] = _counts(
                items, labels
            )
        meta["sets"][which]["pool_sizes"] = {lb: len(pools[lb]) for lb in labels}
    meta["sets"]["domain"]["rule"] = (
        "GCIDE senses whose subject labels all fall in one class: finance = FINANCE_LABEL_RE minus "
        "commerce; commerce = Com./Commerce/Mercantile/Trade/Exchange; law = other labels ending in 'Law'"
    )
    meta["sets"]["general"]["rule"] = "GCIDE senses labelled " + "; ".join(
        f"{c}: {rx.pattern}" for c, rx in GENERAL_RES.items()
    )
    (out / "probe.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def load_probe_set(set_dir: str | Path) -> tuple[list[dict], list[dict], list[str]]:
    """``(train, test, labels)`` of one set folder (``.../domain``): labels from the parent's
    ``probe.json``, else the ``choices`` of the first item."""
    d = Path(set_dir)

    def read(split: str) -> list[dict]:
        with open(d / f"{split}.jsonl", encoding="utf-8") as f:
            return [json.loads(ln) for ln in f if ln.strip()]

    train, test = read("train"), read("test")
    meta = d.parent / "probe.json"
    labels = None
    if meta.exists():
        labels = json.loads(meta.read_text(encoding="utf-8")).get("sets", {}).get(d.name, {}).get("labels")
    return train, test, list(labels or (train or test)[0]["choices"])


# ---------------------------------------------------------------------------------------------------------
# The tiny committed sets (corpora/tiny/probe/): our own template sentences, one vocabulary per class.

_TINY_FRAMES = [
    "The {a} and the {b} were noted in the report.",
    "A note on the {a} came with the {b}.",
    "They discussed the {a}, then the {b}, before noon.",
    "Every {a} needs a {b} of its own.",
    "The {a} was checked against the {b} again.",
    "Nobody expected the {a} to change the {b}.",
]
_TINY_WORDS = {
    "domain": {
        "finance": "dividend bond yield equity coupon portfolio hedge liquidity".split(),
        "commerce": "invoice cargo merchant shipment wholesale retail customer inventory".split(),
        "law": "court statute contract plaintiff verdict judge appeal covenant".split(),
    },
    "general": {
        "botany": "leaf root petal seed blossom stem orchard meadow".split(),
        "zoology": "sparrow rabbit horse cattle feather dragon hound beetle".split(),
        "nautical": "harbor sailor anchor mast deck hull rudder keel".split(),
    },
}
TINY_SIZES = {"train": 36, "test": 24}


def build_tiny_probe_sets(out_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """The tiny probe sets (a few KB): trivially separable by construction, each class with its own
    nouns in shared sentence frames. For tests and the tiny configs; numbers on them mean nothing."""
    out = Path(out_dir)
    meta: dict[str, Any] = {
        "builder": "dapt.eval.probe_data.build_tiny_probe_sets",
        "builder_version": BUILDER_VERSION,
        "schema": "fin_fpb fields (id, query, answer, text, choices, gold) + label, where",
        "source": {"name": "template sentences written by the dapt authors", "license": "Apache-2.0"},
        "seed": seed,
        "sets": {},
    }
    for which, classes in _TINY_WORDS.items():
        labels = list(classes)
        rng = random.Random(f"{seed}-{which}")
        for split, n in TINY_SIZES.items():
            items = []
            for i in range(n):
                lb = labels[i % len(labels)]
                a, b = rng.sample(classes[lb], 2)
                text = rng.choice(_TINY_FRAMES).format(a=a, b=b)
                text = text[0].upper() + text[1:]
                items.append(fpb_row(f"{which}-{split}-{i:04d}", text, lb, labels, "template", "sentence"))
            _write_jsonl(out / which / f"{split}.jsonl", items)
            meta["sets"].setdefault(which, {"labels": labels, "counts": {}})["counts"][split] = _counts(
                items, labels
            )
    (out / "probe.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _pkg_version(pkg: str) -> str | None:
    from dapt.eval.build_tasks import _pkg_version as version

    return version(pkg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dapt.eval.probe_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/probe", help="folder for the sets (default %(default)s)")
    ap.add_argument("--dictd-dir", default=str(DICTD_DIR))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tiny", action="store_true", help="write the tiny template sets instead")
    a = ap.parse_args(argv)
    try:
        meta = build_tiny_probe_sets(a.out) if a.tiny else build_probe_sets(a.out, a.dictd_dir, seed=a.seed)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for which, s in meta["sets"].items():
        print(f"{which}: {s['labels']} train {s['counts']['train']} test {s['counts']['test']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
