"""Tiny generated corpora for `configs/tiny.yaml` and tests: finance-like and general-like English.

Generated from templates (our own writing), deterministic under a seed, with a few planted exact and near
duplicates so the clean stage has something real to do. Not meant to teach a model anything.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

_FIN_TEMPLATES = [
    "{company} reported net income of ${m},{k:03d} million for the quarter ended {month} {day}, compared with "
    "${m2},{k2:03d} million a year earlier.",
    "Revenue rose {p}.{d}% year over year to ${m}.{d} billion, driven by higher net interest income and {noun}.",
    "The board of {company} declared a quarterly dividend of ${d}.{k:02d} per share, payable on {month} {day}.",
    "Total assets were ${m},{k:03d} million and shareholders' equity was ${m2},{k2:03d} million at quarter end.",
    "Debit accounts receivable and credit revenue when the invoice for {noun} is issued to the customer.",
    "The yield on the ten-year note fell {p} basis points as the central bank left its policy rate at {d}.{p}%.",
    "{company} recorded an impairment of goodwill of ${m} million related to its {noun} segment.",
    "Operating cash flow of ${m} million covered capital expenditures of ${m2} million and {noun} investment.",
    "The auditor issued an unqualified opinion on the consolidated financial statements of {company}.",
    "Under the credit agreement, {company} must keep its leverage ratio below {d}.{p} times EBITDA.",
]
_FIN_WORDS = {
    "company": ["Northwind Bancorp", "Harbor Capital", "Alder Trust", "Summit Holdings", "Granite Financial"],
    "noun": [
        "fee income",
        "trading revenue",
        "loan growth",
        "deposit costs",
        "asset management",
        "mortgage banking",
        "hedging",
        "card fees",
        "wealth management",
        "bond portfolio",
    ],
}
_GEN_TEMPLATES = [
    "The {animal} walked slowly along the {place} while the {weather} settled over the hills.",
    "In the {season} the children of the village gathered {thing} and carried them home in baskets.",
    "She opened the old {thing2} and read aloud the story of the {person} who lived by the {place}.",
    "A {weather} came in from the sea, and the {person} lit a lamp in the window of the cottage.",
    "They planted {thing} along the fence and watered them every evening before supper.",
    "Music drifted from the {place} as the {person} told the tale of the lost {animal}.",
    "The old {person} remembered the {season} when the river froze and the {animal} crossed the ice.",
    "On market day the square filled with {thing}, bread, cheese and the voices of traders.",
]
_GEN_WORDS = {
    "animal": ["fox", "heron", "brown horse", "old dog", "grey cat", "young deer"],
    "place": ["river bank", "meadow", "harbor wall", "orchard", "mill pond", "forest path"],
    "weather": ["mist", "light rain", "cold wind", "summer storm", "evening fog"],
    "season": ["spring", "summer", "autumn", "winter"],
    "thing": ["apples", "chestnuts", "wild flowers", "berries", "pumpkins", "onions"],
    "thing2": ["book", "letter", "chest", "diary", "map"],
    "person": ["shepherd", "baker", "sailor", "lighthouse keeper", "painter", "miller"],
}
_MONTHS = ["March", "June", "September", "December"]


def _fill(rng: random.Random, template: str, words: dict[str, list[str]]) -> str:
    values = {k: rng.choice(v) for k, v in words.items()}
    values.update(
        m=rng.randint(1, 999),
        k=rng.randint(0, 999),
        m2=rng.randint(1, 999),
        k2=rng.randint(0, 999),
        p=rng.randint(1, 99),
        d=rng.randint(1, 9),
        day=rng.randint(1, 28),
        month=rng.choice(_MONTHS),
    )
    return template.format(**values)


def _table(rng: random.Random) -> str:
    """A numeric statement table, the kind of text web filters wrongly drop."""
    rows = ["Item | 2025 | 2024", "--- | --- | ---"]
    for item in ["Net interest income", "Noninterest income", "Provision for losses", "Net income"]:
        rows.append(f"{item} | {rng.randint(100, 9999):,} | {rng.randint(100, 9999):,}")
    return "\n".join(rows)


def make_corpus(kind: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` documents (plus 2 exact and 2 near duplicates planted at the end)."""
    rng = random.Random(f"{kind}:{seed}")
    templates, words = (_FIN_TEMPLATES, _FIN_WORDS) if kind == "domain" else (_GEN_TEMPLATES, _GEN_WORDS)
    docs = []
    for i in range(n):
        paras = []
        for _ in range(rng.randint(2, 4)):
            paras.append(" ".join(_fill(rng, rng.choice(templates), words) for _ in range(rng.randint(3, 6))))
        if kind == "domain" and i % 5 == 0:
            paras.append(_table(rng))
        docs.append(
            {"id": f"{kind}-{i:05d}", "text": "\n\n".join(paras), "date": f"2025-{1 + i % 12:02d}-15"}
        )
    for j in range(2):
        docs.append({**docs[j], "id": f"{kind}-dup-{j}"})
        words_ = docs[j + 2]["text"].split(" ")
        words_[len(words_) // 2] = "edited"
        docs.append({**docs[j + 2], "id": f"{kind}-near-{j}", "text": " ".join(words_)})
    return docs


def write_corpus(out: Path, n: int = 120, seed: int = 0) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in ("domain", "general"):
        p = out / f"{kind}.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for doc in make_corpus(kind, n, seed):
                f.write(json.dumps(doc) + "\n")
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("-n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=Path, help="also write the tiny eval tasks here")
    args = ap.parse_args()
    for p in write_corpus(args.out, args.n, args.seed):
        print(p)
    if args.tasks:
        for p in write_tasks(args.tasks, args.seed).values():
            print(p)


# Our own short definitions, for the tiny multiple-choice tasks of configs/tiny.yaml.
FIN_TERMS = {
    "dividend": "a payment a company makes to its shareholders out of its profits",
    "bond": "a debt security that pays interest and returns its principal at maturity",
    "equity": "the owners' share of a company after all liabilities are paid",
    "liability": "an amount a business owes to others",
    "invoice": "a document asking a customer to pay for goods or services delivered",
    "ledger": "the book in which a business records all of its accounts",
    "audit": "an independent examination of a company's financial statements",
    "collateral": "an asset pledged to a lender as security for a loan",
    "yield": "the income an investment returns, stated as a percentage of its price",
    "depreciation": "the spreading of an asset's cost over its useful life",
    "goodwill": "the part of a purchase price paid above the fair value of the net assets bought",
    "revenue": "the income a business earns from selling its goods and services",
    "leverage": "the use of borrowed money to increase the return on an investment",
    "liquidity": "how easily an asset can be turned into cash without loss",
    "receivable": "money owed to a business by its customers",
    "maturity": "the date on which a loan or bond must be repaid",
    "coupon": "the periodic interest payment made on a bond",
    "covenant": "a condition in a loan agreement that the borrower must keep",
    "impairment": "a write-down when an asset is worth less than its carrying amount",
    "accrual": "an income or expense recorded when it is earned or incurred, not when cash moves",
}
GEN_TERMS = {
    "river": "a large natural stream of water flowing to the sea",
    "orchard": "a piece of land planted with fruit trees",
    "lantern": "a lamp with a transparent case that protects its flame",
    "shepherd": "a person who looks after sheep",
    "meadow": "a field of grass and wild flowers",
    "harbor": "a sheltered place on a coast where ships can stay",
    "baker": "a person who makes and sells bread",
    "kettle": "a container with a spout, used for boiling water",
    "heron": "a tall wading bird with a long neck and long legs",
    "mill": "a building with machinery for grinding grain into flour",
    "cottage": "a small simple house, usually in the country",
    "autumn": "the season after summer, when leaves fall",
    "basket": "a container woven from thin strips of cane or wicker",
    "pumpkin": "a large round orange fruit that grows on a vine",
    "diary": "a book in which someone writes about each day's events",
    "sailor": "a person who works on a ship at sea",
    "fog": "a thick cloud of tiny water drops near the ground",
    "painter": "an artist who makes pictures with paint",
    "chestnut": "a glossy brown nut that grows inside a prickly case",
    "village": "a small group of houses in the country",
}


def write_tasks(out: Path, seed: int = 0) -> dict[str, Path]:
    """Two tiny lm-eval multiple-choice tasks (definition -> term, 4 choices) in eval/build_tasks' layout."""
    from dapt.eval.build_tasks import write_task

    built = {}
    for name, kind, terms in (
        ("tiny_fin_terms", "finance", FIN_TERMS),
        ("tiny_gen_terms", "general", GEN_TERMS),
    ):
        rng = random.Random(f"{name}:{seed}")
        words = sorted(terms)
        items = []
        for i, word in enumerate(words):
            choices = [word, *rng.sample([w for w in words if w != word], 3)]
            rng.shuffle(choices)
            items.append(
                {
                    "id": i,
                    "gloss": terms[word],
                    "word": word,
                    "choices": choices,
                    "label": choices.index(word),
                }
            )
        rng.shuffle(items)
        prov = {"source": "corpora/synthetic.py (the dapt authors' own definitions)", "license": "Apache-2.0"}
        built[name] = write_task(out, name, kind, items, n_val=4, provenance=prov)
    return built


if __name__ == "__main__":
    main()
