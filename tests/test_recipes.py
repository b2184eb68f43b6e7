"""The demo corpus recipe: its parsers on hand-made inputs, and a small real build from Debian packages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dapt.corpora.recipes import parsers as P
from dapt.corpora.recipes.debian import installed_version
from dapt.corpora.recipes.demo import SOURCES, Doc, build_demo, eval_glosses, select_budget
from dapt.pipeline.errors import ConfigError, InputError

# ------------------------------------------------------------------------------------------------ dictd


def test_dictd_b64_is_a_base64_number_not_rfc4648():
    assert P.dictd_b64("A") == 0
    assert P.dictd_b64("B") == 1
    assert P.dictd_b64("/") == 63
    assert P.dictd_b64("BA") == 64
    assert P.dictd_b64("irGt") == ((34 * 64 + 43) * 64 + 6) * 64 + 45
    with pytest.raises(ValueError):
        P.dictd_b64("a-b")
    with pytest.raises(ValueError):
        P.dictd_b64("")


def _b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def _write_dictd(tmp: Path, entries: list[tuple[list[str], str]]) -> tuple[Path, Path]:
    """A dictd database: entries (headwords sharing one text) laid out as dictfmt does."""
    data = b"00-database-info\nThis is a test.\n"
    lines = [f"00-database-info\tA\t{_b64(len(data))}"]
    for heads, text in entries:
        raw = text.encode("utf-8")
        for h in heads:
            lines.append(f"{h}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    (tmp / "t.index").write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    with gzip.open(tmp / "t.dict.dz", "wb") as f:
        f.write(data)
    return tmp / "t.index", tmp / "t.dict.dz"


def test_read_dictd_dedupes_shared_entries_and_keeps_file_order(tmp_path):
    idx, dz = _write_dictd(
        tmp_path,
        [
            (["Banc", "Bank"], "Bank \\Bank\\, n.\n   A bench.\n"),
            (["Zloty"], "Złoty, n.\n   Polish money.\n"),
        ],
    )
    entries = P.read_dictd(idx, dz)
    assert [e.headword for e, _ in entries] == ["Banc", "Zloty"]  # one entry per (offset, length)
    assert entries[1][1] == "Złoty, n.\n   Polish money.\n"  # byte offsets, multi-byte text intact
    with pytest.raises(ValueError, match="line 1"):
        P.parse_dictd_index(["only\ttwo"])


# ------------------------------------------------------------------------------------------------ GCIDE

ACCEPTANCE = """Acceptance \\Ac*cept"ance\\, n. [Cf. OF. acceptance.]
   1. The act of accepting; a receiving what is offered.
      [1913 Webster]

            They shall come up with acceptance. --Isa. lx. 7.
      [1913 Webster]

   2. (Com.)
      (a) An assent and engagement by the person on whom a bill
          of exchange is drawn, to pay it when due.
      (b) The bill itself when accepted.
          [1913 Webster]

   3. (Law) An agreeing to the action of another.
      [1913 Webster]
"""


def test_gcide_subject_labels_select_finance_entries():
    assert P.gcide_labels(ACCEPTANCE) == ["Com.", "Law"]
    assert P.gcide_finance_labels(ACCEPTANCE) == ["Com."]
    for label in [
        "Com.",
        "Finance",
        "Stock Exchange",
        "Polit. Econ.",
        "Bookkeeping",
        "Life Insurance",
        "U. S. Finance",
    ]:
        assert P.is_finance_label(label), label
    for label in ["Law", "Com. Chem.", "Dict. Econ. Plants", "Zool.", "Bot.", "Trade unions"]:
        assert not P.is_finance_label(label), label
    assert P.gcide_finance_labels("Sparrow, n. (Zool.) A small bird.") == []


def test_gcide_finance_part_keeps_only_labelled_senses():
    part = P.gcide_finance_part(ACCEPTANCE)
    assert "bill" in part and "(Com.)" in part
    assert "receiving what is offered" not in part  # sense 1 has no finance label
    assert "(Law)" not in part
    # A single-sense entry, or one whose head carries the label, is kept whole.
    single = 'Debit \\Deb"it\\, v. t.\n   (Bookkeeping) To enter on the debtor side.\n'
    assert P.gcide_finance_part(single) == single


def test_gcide_to_text_markup():
    text = P.gcide_to_text(ACCEPTANCE)
    assert text.startswith("Acceptance, n. [Cf. OF. acceptance.]")  # syllabified headword dropped
    assert "[1913 Webster]" not in text
    assert "An assent and engagement by the person on whom a bill of exchange is drawn" in text  # rejoined
    assert "\n2. (Com.)\n(a) An assent" in text  # senses start new lines
    assert P.gcide_to_text("Bear, v. t.\n   To depress prices.\n   [1913 Webster] Bearer\n") == (
        "Bear, v. t. To depress prices."
    )
    assert (
        P.gcide_to_text("Caf['e] (k[a^]*f[=a]\"), n. A [deg] {Coffee}house.") == "Café, n. A ° Coffeehouse."
    )


# ------------------------------------------------------------------------------------------------ WordNet

DATA_NOUN = [
    "  1 This software and database is being provided to you, the LICENSEE, by\n",
    "13240514 21 n 01 ownership 0 001 @ 00031921 n 0000 | the relation of an owner to the thing possessed  \n",
    "13333833 21 n 03 dividend 0 net_income 0 profit(a) 1 000 | that part of the earnings of a corporation; "
    '"a large dividend"  \n',
    "01234567 05 n 01 sparrow 0 000 | small brownish bird  \n",
]


def test_parse_wordnet_data_and_lexnames():
    syn = list(P.parse_wordnet_data(DATA_NOUN))
    assert [s.lexname for s in syn] == ["noun.possession", "noun.possession", "noun.animal"]
    assert syn[1].words == ("dividend", "net income", "profit")
    assert P.synset_text(syn[0]) == "ownership: the relation of an owner to the thing possessed."
    assert P.synset_text(syn[1]).startswith("dividend (also: net income, profit): that part")
    assert P.WN_LEXNAMES[21] == "noun.possession" and len(P.WN_LEXNAMES) == 45


def test_wn_entry_to_text_excludes_eval_senses_and_moves_pos_marker():
    entry = (
        "dividend\n    n 1: that part of the earnings of a corporation that is\n"
        '         distributed to its shareholders; "a large dividend"\n    2: a number to be divided\n'
        "    v 1: to share out\n"
    )
    key = P.gloss_key(
        P.wn_definition("that part of the earnings of a corporation that is distributed to its shareholders")
    )
    dropped: list[int] = []
    text = P.wn_entry_to_text(entry, frozenset({key}), dropped)
    assert text == "dividend\nn 2: a number to be divided\nv 1: to share out"
    assert dropped == [1]
    assert P.wn_entry_to_text("x\n    n 1: only sense\n", frozenset({"only sense"})) == ""
    assert P.wn_definition('money paid; "he paid it" [syn: {payment}, {defrayal}]') == "money paid"


def test_phrase_index_ignores_case_and_punctuation():
    idx = P.PhraseIndex(["the amount added to the cost", "too short"], min_words=5)
    assert len(idx) == 1
    assert idx.find("Markup, n. The amount added to the cost, to determine the price.") == (
        "the amount added to the cost"
    )
    assert idx.find("the amount added to a cost") is None
    assert P.PhraseIndex([]).find("anything") is None


def test_wn_entry_to_text_rejoins_senses():
    entry = (
        "dividend\n    n 1: that part of the earnings of a corporation that is\n"
        "         distributed to its shareholders\n    2: a number to be divided [syn: {dividend}]\n"
    )
    assert P.wn_entry_to_text(entry) == (
        "dividend\nn 1: that part of the earnings of a corporation that is distributed to its shareholders\n"
        "2: a number to be divided [syn: dividend]"
    )


# ------------------------------------------------------------------------------------------------ others


def test_parse_fortunes_splits_on_percent_lines():
    text = "A penny saved.\n%\n\n  Two\n  lines\n%\n%\nLast one, no trailing percent"
    assert P.parse_fortunes(text) == ["A penny saved.", "  Two\n  lines", "Last one, no trailing percent"]
    assert P.parse_fortunes("%\n%\n") == []


def test_parse_info_nodes_menus_and_xrefs():
    info = (
        "This is t.info, produced by makeinfo.\n\x1f\n"
        "File: t.info,  Node: Top,  Next: Postings,  Up: (dir)\n\nLedger\n******\n\n* Menu:\n\n"
        "* Postings::     How to post.\n* Index::\n\nThe end of top.\n"
        "\x1f\nFile: t.info,  Node: Postings,  Prev: Top,  Up: Top\n\n1 Postings\n==========\n\n"
        "A posting moves money; *note Balance assertions::.\n"
        "\x1f\nFile: t.info,  Node: Concepts Index,  Up: Top\n\n* account: Postings. (line 3)\n"
        "\x1f\nTag Table:\nNode: Top\x7f40\n\x1f\nEnd Tag Table\n"
    )
    nodes = P.parse_info(info)
    assert [n for n, _ in nodes] == ["Top", "Postings"]  # index node and tag table dropped
    assert nodes[0][1] == "Ledger\n******\n\nThe end of top."  # the menu is gone
    assert "see Balance assertions" in nodes[1][1]


def test_html_to_text_drops_navigation_keeps_pre():
    page = (
        "<html><head><title>2.1. Accounting\n Concepts</title><style>p{x}</style></head><body>"
        '<div class="navheader"><a href="x">Prev</a> Next</div>'
        "<h2>Accounting Concepts</h2><p>Assets &amp; liabilities\n are   balanced.</p>"
        "<pre>2024-01-01 Rent\n    expenses:rent   $500\n    assets:bank</pre>"
        "<ul><li>one<li>two</ul><ul><li><p>para item</p></li></ul>"
        '<div class="navfooter">Home | Up</div><script>var a=1;</script></body></html>'
    )
    title, text = P.html_to_text(page)
    assert title == "2.1. Accounting Concepts"
    assert "Prev" not in text and "Home" not in text and "var a" not in text and "p{x}" not in text
    assert "Assets & liabilities are balanced." in text
    assert "2024-01-01 Rent\n    expenses:rent   $500\n    assets:bank" in text
    assert "- one\n- two" in text
    assert "- para item" in text  # a paragraph inside a list item stays on the bullet's line


def test_bible_chapters():
    lines = ["Ge1:1 In the beginning.", "Ge1:2 And the earth.", "1Jn1:1 That which was.", ""]
    assert P.bible_chapters(lines) == [
        ("Ge1", "1 In the beginning. 2 And the earth."),
        ("1Jn1", "1 That which was."),
    ]
    with pytest.raises(ValueError, match="line 2"):
        list(P.parse_bible_verses(["Ge1:1 ok", "garbage"]))


def test_pack_split_and_normalize():
    items = [(str(i), "x" * 40) for i in range(5)]
    pages = list(P.pack(items, 100))
    assert [keys for keys, _ in pages] == [["0", "1"], ["2", "3"], ["4"]]
    assert P.split_long("a\n\nbb\n\ncc", 5) == ["a\n\nbb", "cc"]
    assert P.split_long("a\n\nbb\n\ncc", 4) == ["a", "bb", "cc"]
    assert P.split_long("short", 100) == ["short"]
    assert P.normalize_text("Cafe\u0301 \r\n\n\n\nend  \n") == "Café\n\nend"


def test_select_budget_is_deterministic_whole_documents_in_order():
    docs = [Doc(id=f"d{i}", text="x" * (100 + i)) for i in range(50)]
    a = select_budget(docs, 1000)
    b = select_budget(list(reversed(docs)), 1000)
    assert sum(len(d.text) for d in a) <= 1000
    assert {d.id for d in a} == {d.id for d in b}  # depends on ids, not on input order
    assert [d.id for d in a] == sorted((d.id for d in a), key=lambda s: int(s[1:]))  # original order kept
    assert len(a) >= 8  # a real spread, not just the first document
    assert select_budget(docs, None) == docs


def test_eval_glosses_reads_task_folders(tmp_path):
    d = tmp_path / "tasks" / "dapt_wn_finance"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text(
        json.dumps({"gloss": "Liability to  taxation.", "word": "taxability"})
        + "\n\n"
        + json.dumps({"x": 1})
        + "\n"
    )
    (d / "provenance.json").write_text("{}")
    assert eval_glosses(tmp_path / "tasks") == frozenset({"liability to taxation"})
    (d / "validation.jsonl").write_text("not json\n")
    with pytest.raises(InputError, match="line 1"):
        eval_glosses(tmp_path / "tasks")


def test_build_demo_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown source"):
        build_demo(tmp_path, sources=["nope"], install=False)
    with pytest.raises(ConfigError, match="max-mb"):
        build_demo(tmp_path, sources=["bible"], max_mb=0, install=False)


# ------------------------------------------------------------------------------------------------ real build


def _have(*names: str) -> bool:
    return all(installed_version(p) for s in names for p in SOURCES[s].packages)


SMALL = ["ledger", "gcide_finance", "wordnet_possession", "fortunes", "bible"]


@pytest.mark.skipif(
    not _have(*SMALL), reason="Debian packages of the demo corpora not installed (dapt corpus demo)"
)
def test_real_build_small(tmp_path):
    """A real build of five sources at 0.05 MB each: records, provenance, determinism, reuse."""
    out = tmp_path / "demo"
    logs: list[str] = []
    # An evaluation task quoting a noun.possession gloss (WordNet's "ownership"): it must not be trained on.
    ownership = "the relation of an owner to the thing possessed; possession with the right to transfer possession to others"
    tasks = tmp_path / "tasks" / "t"
    tasks.mkdir(parents=True)
    (tasks / "test.jsonl").write_text(json.dumps({"gloss": ownership, "word": "ownership"}) + "\n")
    manifest = build_demo(
        out, sources=SMALL, max_mb=0.05, install=False, exclude_eval=tmp_path / "tasks", log=logs.append
    )
    assert manifest["sources"]["wordnet_possession"]["excluded_eval_senses"] == 1
    assert "the relation of an owner" not in (out / "wordnet_possession.jsonl").read_text(encoding="utf-8")
    for name in SMALL:
        entry = manifest["sources"][name]
        assert 0 < entry["bytes"] <= 50_000
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == entry["documents"] > 0
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            assert set(r) >= {"id", "text", "source", "license", "provenance", "kind"}
            assert r["source"] == name and r["kind"] == SOURCES[name].kind
            assert r["provenance"].startswith("debian:") and r["package_version"] != "unknown"
            assert len(r["text"]) >= 200
    fin = (out / "gcide_finance.jsonl").read_text(encoding="utf-8")
    assert "[1913 Webster]" not in fin
    assert all(P.gcide_finance_labels(json.loads(x)["text"]) for x in fin.splitlines())
    bible = json.loads((out / "bible.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert bible["text"].startswith("1 ") and bible["license"].startswith("public-domain")
    saved = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert set(saved["sources"]) == set(SMALL)

    # Same inputs: reused, not rebuilt; a forced rebuild elsewhere gives identical bytes.
    logs.clear()
    build_demo(
        out, sources=SMALL, max_mb=0.05, install=False, exclude_eval=tmp_path / "tasks", log=logs.append
    )
    assert sum("up to date" in m for m in logs) == len(SMALL)
    again = tmp_path / "again"
    quick = [s for s in SMALL if s != "gcide_finance"]  # GCIDE is 40 MB to parse: once is enough here
    build_demo(
        again,
        sources=quick,
        max_mb=0.05,
        install=False,
        force=True,
        exclude_eval=tmp_path / "tasks",
        log=logs.append,
    )
    for name in quick:
        assert (out / f"{name}.jsonl").read_bytes() == (again / f"{name}.jsonl").read_bytes()


def test_missing_packages_without_root_say_how_to_install(monkeypatch):
    import dapt.corpora.recipes.debian as deb

    monkeypatch.setattr(deb.os, "geteuid", lambda: 1000)
    with pytest.raises(
        InputError, match=r"sudo apt-get update && sudo apt-get install -y --no-install-recommends"
    ):
        deb.ensure_packages(["dapt-no-such-package-xyz"], log=lambda m: None)
    assert deb.installed_version("dapt-no-such-package-xyz") is None


def test_build_demo_without_install_skips_sources_with_missing_packages(tmp_path, monkeypatch):
    import dapt.corpora.recipes.demo as demo

    monkeypatch.setattr(demo, "missing_packages", lambda pkgs: [p for p in pkgs if p == "fortunes"])
    logs: list[str] = []
    with pytest.raises(InputError, match="none of the selected sources"):
        build_demo(tmp_path, sources=["fortunes"], install=False, log=logs.append)
    assert any("skipping" in m for m in logs)
