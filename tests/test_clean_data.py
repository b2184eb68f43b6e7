"""Synthetic text for the clean tests: natural-looking prose, finance tables, planted near-duplicates.

The conftest fixtures' documents are built from six sentence templates, so the Gopher repetition
rules (correctly) reject them as repetitive. These generators draw each sentence from a few hundred
words, so documents pass the published web rules unless a test plants a problem on purpose.
"""

from __future__ import annotations

import random

from dapt.corpora.clean.minhash import jaccard

CONTENT = (
    "asset liability equity revenue expense accrual amortization depreciation dividend coupon yield "
    "maturity principal interest ledger journal debit credit invoice receivable payable inventory "
    "goodwill impairment hedge derivative option swap futures collateral margin leverage liquidity "
    "solvency audit fiscal quarter annual filing disclosure covenant tranche securitization portfolio "
    "benchmark index volatility arbitrage custody settlement clearing broker underwriter prospectus "
    "river mountain forest garden window kitchen morning evening winter summer village castle bridge "
    "harbor meadow orchard candle lantern blanket kettle pebble feather thunder whisper journey "
    "stranger neighbor grandmother sailor shepherd baker painter poet dragon knight princess wizard "
    "sparrow rabbit horse cattle wheat barley honey bread cheese apple cherry violet silver golden "
    "company market report growth price share investor bank loan rate policy board manager customer "
    "product service contract agreement payment balance account statement budget capital fund trust "
    "analysis forecast estimate margin profit loss sale purchase supplier factory office worker team "
    "project schedule meeting decision strategy risk return value cost tax reserve deposit transfer "
    "stone water light shadow music letter story picture family friend teacher student doctor city "
    "country road street house door table chair paper book school church market station island "
    "carefully quickly slowly quietly openly rarely often usually finally suddenly nearly almost "
    "bright dark heavy light small large early late happy careful strong gentle silent ancient modern "
    "walks carries writes reads builds opens closes watches follows finds keeps brings holds moves "
    "measured reported increased declined remained approved reviewed issued signed delivered recorded"
).split()
STOP = "the of and to with that a in for on is was by as from have be at it".split()


def sentence(rng: random.Random, lo: int = 9, hi: int = 18) -> str:
    n = rng.randint(lo, hi)
    words = [rng.choice(STOP) if rng.random() < 0.35 else rng.choice(CONTENT) for _ in range(n)]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"])


def prose(rng: random.Random, paragraphs: int = 3, sentences: int = 6) -> str:
    """A document of ``paragraphs`` paragraphs that passes Gopher, C4 and FineWeb rules."""
    return "\n\n".join(" ".join(sentence(rng) for _ in range(sentences)) for _ in range(paragraphs))


def finance_table(rng: random.Random, rows: int = 14) -> str:
    """A numeric table with a title line: what web heuristics kill and the domain profile keeps."""
    items = [
        "Net revenue",
        "Cost of revenue",
        "Gross profit",
        "Operating expenses",
        "Operating income",
        "Interest expense",
        "Income tax",
        "Net income",
        "Total assets",
        "Total liabilities",
        "Cash and equivalents",
        "Long-term debt",
        "Shareholders' equity",
        "Diluted EPS",
        "Dividends paid",
        "Capital expenditure",
        "Free cash flow",
        "Accounts receivable",
    ]
    y = rng.randint(2001, 2020)
    lines = [f"Consolidated statement of operations (in millions of USD), fiscal {y} and {y + 1}", ""]
    lines.append(f"Item | FY{y} | FY{y + 1} | Change")
    for name in rng.sample(items, rows):
        a = rng.uniform(10, 9000)
        b = a * rng.uniform(0.7, 1.4)
        lines.append(f"{name} | {a:,.1f} | {b:,.1f} | {100 * (b - a) / a:+.1f}%")
    return "\n".join(lines)


def near_duplicate(text: str, rng: random.Random, min_jaccard: float = 0.8, edits: int = 2) -> str:
    """``text`` with a few words replaced, at Jaccard >= ``min_jaccard`` (checked, not assumed)."""
    for _ in range(100):
        words = text.split(" ")
        for i in rng.sample(range(len(words)), edits):
            words[i] = rng.choice(CONTENT)
        out = " ".join(words)
        if out != text and jaccard(text, out) >= min_jaccard:
            return out
    raise AssertionError("could not plant a near-duplicate")


def test_generators_make_distinct_documents():
    rng = random.Random(0)
    docs = [prose(rng) for _ in range(50)]
    assert len(set(docs)) == 50
    assert max(jaccard(docs[0], d) for d in docs[1:]) < 0.1
    nd = near_duplicate(docs[0], rng)
    assert 0.8 <= jaccard(docs[0], nd) < 1.0
