"""Each cleaning step, MinHash and the readers, on hand-written documents, without Ray."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_clean_data import finance_table, near_duplicate, prose

from dapt.corpora.clean import config as C
from dapt.corpora.clean import steps as S
from dapt.corpora.clean.config import StepSpec
from dapt.corpora.clean.minhash import MinHasher, band_keys, jaccard, shingle_array, shingles
from dapt.corpora.clean.readers import ShardSpec, count_newlines, plan_file, read_shard


def run(fn, text):
    pii: Counter = Counter()
    out, reason = fn(text, pii)
    return out, reason, pii


# ---------------------------------------------------------------------------------------------- steps


def test_normalize_nfc_controls_spaces_and_mojibake():
    fn = S.make_normalize(C.NormalizeParams())
    out, reason, _ = run(fn, "Cafe\u0301\x00 au\u00a0lait\u200b  \r\nline two   \n\n\n\n\nend\x07")
    assert reason is None
    assert out == "Caf\u00e9 au lait\nline two\n\n\nend"
    fix = S.make_normalize(C.NormalizeParams(fix_mojibake=True))
    assert run(fix, "The caf\u00c3\u00a9 is open.")[0] == "The caf\u00e9 is open."
    assert run(fn, "The caf\u00c3\u00a9 is open.")[0] == "The caf\u00c3\u00a9 is open."  # off by default


def test_length_bounds():
    fn = S.make_length(C.LengthParams(min_chars=5, max_chars=20, min_words=2))
    assert run(fn, "")[1] == "length:min_chars"
    assert run(fn, "x" * 21)[1] == "length:max_chars"
    assert run(fn, "oneword")[1] == "length:min_words"
    assert run(fn, "two words")[1] is None


def test_gopher_quality_rules():
    fn = S.make_gopher_quality(C.GopherQualityParams())
    good = prose(random.Random(1))
    assert run(fn, good)[1] is None
    assert run(fn, "Too short but with the and of.")[1] == "gopher_quality:min_words"
    assert run(fn, " ".join(["the", "a" * 20] * 40))[1] == "gopher_quality:max_avg_word_length"
    assert run(fn, good + " #tag" * 60)[1] == "gopher_quality:max_symbol_word_ratio"
    bullets = "\n".join(f"- item {w} of the list" for w in good.split()[:60])
    assert run(fn, bullets)[1] == "gopher_quality:max_bullet_lines_ratio"
    nostop = " ".join(
        w
        for w in good.split()
        if w.lower().strip(".!?") not in {"the", "be", "to", "of", "and", "that", "have", "with"}
    )
    assert run(fn, nostop)[1] == "gopher_quality:min_stop_words"
    table = finance_table(random.Random(2))
    assert run(fn, table)[1] == "gopher_quality:min_alpha_words_ratio"  # why the domain profile drops it
    domain = dict(C.default_profile("domain")[4].params)
    assert run(S.make_gopher_quality(C.GopherQualityParams(**domain)), table)[1] is None


def test_gopher_repetition_rules_single_and_batch_agree():
    fn = S.make_gopher_repetition(C.GopherRepetitionParams())
    rng = random.Random(3)
    good = prose(rng)
    para = prose(rng, paragraphs=1)
    cases = {
        good: None,
        "\n\n".join([para] * 3 + [prose(rng, paragraphs=1)]): "gopher_repetition:dup_para_frac",
        "\n".join(
            ["Same line repeated here."] * 5 + [prose(rng, paragraphs=1)]
        ): "gopher_repetition:dup_line_frac",
        "buy now " * 100: "gopher_repetition:top_2gram_char_frac",
        good + " " + " ".join(good.split()[:60]): "gopher_repetition:dup_5gram_char_frac",
    }
    for text, want in cases.items():
        assert run(fn, text)[1] == want, want
    assert fn.batch(list(cases)) == list(cases.values())


def test_repetition_char_fractions_by_hand():
    from dapt.corpora.clean.minhash import word_hashes

    wh, _, wl = word_hashes(["aa bb aa bb aa bb cc"])
    # most frequent bigram "aa bb" x3, 4 chars each, over 14 word chars
    assert S.top_ngram_char_frac(wh, wl, 2) == pytest.approx(3 * 4 / 14)
    # repeated 2-grams: positions 2..4 repeat earlier ones -> words 2..5 covered = 8 chars
    assert S.dup_ngram_char_frac(wh, wl, 2) == pytest.approx(8 / 14)


def test_c4_line_and_document_rules():
    fn = S.make_c4(C.C4Params())
    rng = random.Random(4)
    body = "\n".join(S_ for S_ in prose(rng, paragraphs=1, sentences=6).split("\n"))
    text = (
        "Menu Home About\n"
        + body
        + "\nPlease enable JavaScript to view this page.\nRead our privacy policy here."
    )
    out, reason, _ = run(fn, text)
    assert reason is None and out == body
    assert run(fn, "Lorem ipsum dolor sit amet. " + body)[1] == "c4:lorem_ipsum"
    assert run(fn, body + "\nfunction f() { return 1; }")[1] == "c4:curly_bracket"
    assert run(fn, "One sentence only here.")[1] == "c4:min_sentences"
    assert run(fn, "no punctuation at all\nnone here either")[1] == "c4:no_lines_left"


def test_fineweb_rules():
    fn = S.make_fineweb(C.FineWebParams())
    rng = random.Random(5)
    assert run(fn, prose(rng))[1] is None
    assert run(fn, "\n".join(f"heading {i}" for i in range(20)))[1] == "fineweb:line_punct_ratio"
    short = "\n".join(["Short line."] * 1 + [f"Item {i}." for i in range(20)] + [prose(rng, 1)])
    assert run(fn, short)[1] == "fineweb:short_line_ratio"
    dup = "\n".join([prose(rng, 1, 2)] * 3 + [prose(rng, 1)])
    assert run(fn, dup)[1] == "fineweb:dup_line_char_ratio"
    words = "\n".join(f"Word{i}." if i % 2 else f"This is line {i}." for i in range(40))
    assert run(fn, words)[1] in {"fineweb:newline_word_ratio", "fineweb:short_line_ratio"}


def test_language_identification_offline():
    fn = S.make_language(C.LanguageParams())
    assert run(fn, prose(random.Random(6)))[1] is None
    fr = "Le conseil d'administration a approuvé les comptes annuels et le versement d'un dividende aux actionnaires."
    assert run(fn, fr)[1] == "language:fr"
    de = "Der Vorstand hat den Jahresabschluss gebilligt und eine Dividende für die Aktionäre vorgeschlagen."
    assert run(fn, de)[1] == "language:de"
    table = finance_table(random.Random(7))
    assert run(S.make_language(C.LanguageParams(min_score=0.5)), table)[1] is None


PII_CASES = {
    "email": ["jane.doe@example.com", "a_b+tag@mail.co.uk"],
    "phone": ["(212) 555-0143", "212-555-0199", "+44 20 7946 0958", "+1 415.555.2671"],
    "ipv4": ["192.168.1.20", "8.8.8.8"],
    "ipv6": ["2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a"],
    "card": ["4111 1111 1111 1111", "4539148803436467", "3782-822463-10005"],
    "ssn": ["123-45-6789"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
}
NOT_PII = [
    "Revenue 2019 2020 2021 2022 grew",
    "rows 512 634 1021 and 7,340.5",
    "at 10:30:45 on 2023-01-15",
    "version 1.2.3 of the tool",
    "card-like 4111 1111 1111 1112 fails Luhn",
    "ISIN US0378331005 and CUSIP 037833100",
    "ratio 3.14159 and 1,234,567.89",
    "SSN-like 000-12-3456 and 666-12-3456",
    "account DE89 3704 0044 0532 0130 01 bad checksum",
]


def test_pii_every_kind_redacted_and_counted():
    fn = S.make_pii(C.PIIParams())
    for kind, values in PII_CASES.items():
        for v in values:
            out, reason, pii = run(fn, f"Contact {v} today.")
            assert reason is None
            assert out == f"Contact <{kind.upper()}> today.", (kind, v, out)
            assert pii == {kind: 1}


def test_pii_leaves_numbers_and_tables_alone():
    fn = S.make_pii(C.PIIParams())
    for text in NOT_PII:
        out, _, pii = run(fn, text)
        assert out == text and not pii, (text, out)
    table = finance_table(random.Random(8))
    assert run(fn, table)[0] == table
    assert S.luhn_ok("4111111111111111") and not S.luhn_ok("4111111111111112")
    assert S.iban_ok("GB82 WEST 1234 5698 7654 32") and not S.iban_ok("GB82 WEST 1234 5698 7654 33")


def test_pii_types_and_placeholder_configurable():
    fn = S.make_pii(C.PIIParams(types=["email"], placeholder="[{TYPE}]"))
    out, _, pii = run(fn, "Mail a@b.com or call 212-555-0199.")
    assert out == "Mail [EMAIL] or call 212-555-0199." and pii == {"email": 1}


def test_apply_steps_stops_at_first_rejection():
    steps = S.build_steps(C.validate_steps(C.default_profile("general"), "x"))
    text, step, reason, pii = S.apply_steps(steps, "Lorem ipsum dolor sit amet. " + prose(random.Random(9)))
    assert (step, reason) == ("c4", "c4:lorem_ipsum")
    ok = prose(random.Random(10)).replace(". ", ". Write to bob@example.org now. ", 1)
    text, step, reason, pii = S.apply_steps(steps, ok)
    assert reason is None and pii == {"email": 1} and "<EMAIL>" in text
    batch = S.apply_batch(steps, ["", ok, "Lorem ipsum dolor sit amet. " + prose(random.Random(9))])
    assert [b[2] for b in batch] == ["length:min_chars", None, "c4:lorem_ipsum"]


def test_step_param_validation_names_the_key():
    with pytest.raises(ValueError, match=r"sources\.0\.steps\.1\.params\.max_ratio: unknown key"):
        C.validate_steps(
            [C.StepSpec(name="normalize"), C.StepSpec(name="c4", params={"max_ratio": 1})], "sources.0.steps"
        )
    with pytest.raises(ValueError, match=r"x\.0\.params\.min_alpha_words_ratio"):
        C.validate_steps([C.StepSpec(name="gopher_quality", params={"min_alpha_words_ratio": 2})], "x")
    with pytest.raises(ValueError, match=r"x\.0\.name: unknown step 'nope'"):
        C.validate_steps([C.StepSpec(name="nope")], "x")


def test_domain_profile_keeps_finance_tables_general_does_not():
    rng = random.Random(11)
    tables = [finance_table(rng) for _ in range(30)]
    dom = S.build_steps(C.validate_steps(C.default_profile("domain"), "d"))
    gen = S.build_steps(C.validate_steps(C.default_profile("general"), "g"))
    assert all(r[2] is None for r in S.apply_batch(dom, tables))
    assert all(r[2] is not None for r in S.apply_batch(gen, tables))
    docs = [prose(rng) for _ in range(30)]
    assert all(r[2] is None for r in S.apply_batch(dom, docs))
    assert all(r[2] is None for r in S.apply_batch(gen, docs))


# ---------------------------------------------------------------------------------------------- minhash


def test_minhash_signatures_estimate_jaccard_and_are_batch_independent():
    rng = random.Random(12)
    docs = [prose(rng) for _ in range(40)]
    near = [near_duplicate(d, rng) for d in docs[:10]]
    mh = MinHasher(num_perm=256, ngram=5, seed=0)
    sig = mh.signatures(docs + near)
    assert sig.shape == (50, 256) and sig.dtype == np.uint32
    again = np.vstack([mh.signatures(docs[:7]), mh.signatures(docs[7:] + near)])
    assert np.array_equal(sig, again)
    for i in range(10):
        est = float((sig[i] == sig[40 + i]).mean())
        assert abs(est - jaccard(docs[i], near[i])) < 0.1
    assert float((sig[0] == sig[1]).mean()) < 0.1
    assert not np.array_equal(MinHasher(256, 5, seed=1).signatures(docs[:1]), sig[:1])


def test_shingles_definition_and_edge_cases():
    assert shingles("A b, C d e!", 5) == shingles("a B c   D e", 5)
    assert len(shingles("one two three four five six", 5)) == 2
    assert len(shingles("only three words", 5)) == 1  # short docs: one shingle of all words
    assert shingles("... !!!", 5) == set()
    assert jaccard("", "") == 1.0 and jaccard("a b c d e", "") == 0.0
    assert np.array_equal(
        shingle_array("x y z w v u", 5), np.array(sorted(shingles("x y z w v u", 5)), np.uint64)
    )
    mh = MinHasher(16, 5)
    sig = mh.signatures(["", "!!!", "word"])
    assert list(MinHasher.has_shingles(sig)) == [False, False, True]
    assert mh.signatures([]).shape == (0, 16)


def test_band_keys_collide_for_duplicates_only():
    rng = random.Random(13)
    docs = [prose(rng) for _ in range(30)]
    sig = MinHasher(112, 5).signatures(docs + [docs[3]])
    keys = band_keys(sig, 16, 7)
    assert keys.shape == (31, 16) and keys.dtype == np.uint64
    assert np.array_equal(keys[3], keys[30])
    assert not (keys[:30, None, :] == keys[None, :30, :]).any(axis=2)[~np.eye(30, dtype=bool)].any()
    with pytest.raises(ValueError):
        band_keys(sig, 20, 7)


# ---------------------------------------------------------------------------------------------- readers


def _spec(path: Path, fmt: str, **kw) -> ShardSpec:
    return ShardSpec(shard=0, source_idx=0, source="s", kind="domain", path=str(path), fmt=fmt, **kw)


def _ranges(path: Path, fmt: str, shard_bytes: int, **kw) -> list:
    recs = []
    line0 = 1
    prev = 0
    for start, end in plan_file(str(path), fmt, shard_bytes):
        line0 += count_newlines(str(path), prev, start)
        prev = start
        recs.extend(read_shard(_spec(path, fmt, start=start, end=end, line0=line0, **kw)))
    return recs


def test_jsonl_byte_ranges_read_every_record_once_with_line_numbers(tmp_path):
    rng = random.Random(14)
    lines = [json.dumps({"text": prose(rng, 1, rng.randint(1, 6)), "n": i}) for i in range(200)]
    lines.insert(17, "")  # blank lines are not records
    lines.insert(50, "{broken")
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    whole = list(read_shard(_spec(p, "jsonl")))
    for shard_bytes in (997, 4096, 50_000):
        split = _ranges(p, "jsonl", shard_bytes)
        assert [(r.line, r.text, r.reason) for r in split] == [(r.line, r.text, r.reason) for r in whole]
    assert len(whole) == 201
    assert [(r.line, r.reason) for r in whole if r.reason] == [(51, "malformed:json")]
    assert all(json.loads(lines[r.line - 1])["text"] == r.text for r in whole if not r.reason)


def test_jsonl_compressed_and_malformed(tmp_path):
    import zstandard

    raw = (
        b'{"text": "fine", "id": 7, "d": "2024"}\n'
        b'{"text": "bad \xff"}\n'
        b'{"text": "\\ud800 lone surrogate", "id": 1}\n'
        b'{"id": 3}\n'
        b'{"text": ["x"], "id": 4}\n'
        b'"just a string"\n'
        b'{"text": "no id"}\n'
    )
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    for name in ("a.jsonl.gz", "a.jsonl.zst"):
        recs = list(read_shard(_spec(tmp_path / name, "jsonl", id_field="id", date_field="d")))
        assert [(r.line, r.reason) for r in recs] == [
            (1, None),
            (2, "malformed:utf8"),
            (3, "malformed:utf8"),
            (4, "malformed:missing_text"),
            (5, "malformed:text_type"),
            (6, "malformed:not_object"),
            (7, "malformed:missing_id"),
        ]
        assert (recs[0].id, recs[0].date, recs[0].text, recs[0].nbytes) == ("7", "2024", "fine", 4)


def test_txt_file_and_blocks(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("First block line one.\nline two.\n\n\n  \nSecond block.\n\nThird.\n", encoding="utf-8")
    blocks = list(read_shard(_spec(p, "txt", txt_mode="blocks")))
    assert [(r.line, r.text) for r in blocks] == [
        (1, "First block line one.\nline two."),
        (6, "Second block."),
        (8, "Third."),
    ]
    whole = list(read_shard(_spec(p, "txt", txt_mode="file")))
    assert len(whole) == 1 and whole[0].text == p.read_text()


def test_parquet_rows_and_row_group_shards(tmp_path):
    p = tmp_path / "a.parquet"
    texts = [f"doc {i}" for i in range(50)]
    texts[13] = None
    pq.write_table(pa.table({"text": texts, "id": [f"i{i}" for i in range(50)]}), p, row_group_size=10)
    ranges = plan_file(str(p), "parquet", 1)
    assert len(ranges) == 5
    from dapt.corpora.clean.readers import parquet_row_offsets

    recs = []
    for (s, e), row0 in zip(ranges, parquet_row_offsets(str(p), ranges), strict=True):
        recs.extend(read_shard(_spec(p, "parquet", start=s, end=e, line0=row0, id_field="id")))
    assert [r.line for r in recs] == list(range(1, 51))
    assert recs[13].reason == "malformed:missing_text"
    assert recs[20].id == "i20" and recs[20].text == "doc 20"


# ---------------------------------------------------------------------------------------------- dedup kernels


def _components_by_stars(u: np.ndarray, v: np.ndarray, buckets: int = 3) -> dict[int, int]:
    """Run the dedup's large-star / small-star kernels with an in-process 'shuffle' (group by bucket)."""
    from dapt.corpora.clean.dedup.components import both_directions, star_group

    edges = {"u": u, "v": v}
    prev = None
    for _ in range(50):
        for large in (True, False):
            d = both_directions(edges, buckets)
            outs = [
                star_group({"u": d["u"][d["bucket"] == b], "v": d["v"][d["bucket"] == b]}, large)
                for b in np.unique(d["bucket"])
            ]
            edges = {k: np.concatenate([o[k] for o in outs]) for k in ("u", "v", "h")}
        check = (edges["u"].size, int(edges["h"].sum()))
        if check == prev:
            break
        prev = check
    return {int(a): int(b) for a, b in zip(edges["u"], edges["v"], strict=True)}


def test_star_rounds_label_every_node_with_its_component_minimum():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 300
        u = rng.integers(0, n, 400) * 7 + 1000 * trial
        v = rng.integers(0, n, 400) * 7 + 1000 * trial
        keep = u != v
        u, v = u[keep], v[keep]
        parent = {}

        def find(x, parent=parent):
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in zip(u.tolist(), v.tolist(), strict=True):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        comp: dict[int, list[int]] = {}
        for x in set(u.tolist()) | set(v.tolist()):
            comp.setdefault(find(x), []).append(x)
        want = {x: min(members) for members in comp.values() for x in members if x != min(members)}
        assert _components_by_stars(u.astype(np.int64), v.astype(np.int64)) == want


def test_exact_and_band_group_kernels():
    from dapt.corpora.clean.dedup.exact import exact_group
    from dapt.corpora.clean.dedup.lsh import band_group

    rank = np.array([5, 3, 9, 4, 7], np.int64)
    xhi = np.array([1, 1, 2, 1, 2], np.uint64)
    xlo = np.array([0, 0, 0, 0, 0], np.uint64)
    e = exact_group({"rank": rank, "xhi": xhi, "xlo": xlo})
    assert sorted(zip(e["u"].tolist(), e["v"].tolist(), strict=True)) == [(4, 3), (5, 3), (9, 7)]
    key = np.array([10, 10, 10, 10, 20], np.int64)
    b = band_group({"key": key, "rank": rank, "khi": xhi}, max_pairs=16, collapse_exact=True)
    # identical texts (khi 1: ranks 3, 4, 5) collapse to rank 3; bucket 10 -> {3, 9}
    assert sorted(zip(b["u"].tolist(), b["v"].tolist(), strict=True)) == [(3, 9)]
    b = band_group({"key": key, "rank": rank, "khi": xhi}, max_pairs=2, collapse_exact=False)
    assert sorted(zip(b["u"].tolist(), b["v"].tolist(), strict=True)) == [(3, 4), (3, 5), (3, 9)]  # star


def test_oversized_lsh_bucket_is_a_star_around_its_lowest_rank():
    """A band key shared by more documents than ``max_bucket_pairs`` gives a star around the lowest
    rank (the copy dedup keeps), whatever order the hashes put the members in: here the lowest rank
    has the largest key-text hash, which the old sort (by hash, then rank) made the last member."""
    from dapt.corpora.clean.dedup.lsh import band_group

    rank = np.array([40, 10, 30, 20, 50], np.int64)
    khi = np.array([1, 9, 2, 3, 4], np.uint64)  # rank 10 has the largest hash
    key = np.full(5, 77, np.int64)
    for collapse in (True, False):
        b = band_group({"key": key, "rank": rank, "khi": khi}, max_pairs=3, collapse_exact=collapse)
        assert b["u"].tolist() == [10, 10, 10, 10]
        assert sorted(b["v"].tolist()) == [20, 30, 40, 50]
    # two keys in one bucket: each its own star, each around its own lowest rank
    key = np.array([1, 2, 1, 2, 1, 2, 1, 2], np.int64)
    rank = np.array([8, 7, 6, 5, 4, 3, 2, 1], np.int64)
    khi = np.array([1, 2, 3, 4, 5, 6, 7, 8], np.uint64)
    b = band_group({"key": key, "rank": rank, "khi": khi}, max_pairs=3, collapse_exact=True)
    pairs = sorted(zip(b["u"].tolist(), b["v"].tolist(), strict=True))
    assert pairs == [(1, 3), (1, 5), (1, 7), (2, 4), (2, 6), (2, 8)]


def test_exact_hashes_explode_key_and_cleaned_hash():
    """Each document contributes its key-text hash, and its cleaned-text hash only where that differs,
    so a copy matches another through either (cleaning diverged, or converged)."""
    from dapt.corpora.clean.dedup.exact import exact_group, explode_hashes

    batch = {
        "rank": np.array([1, 2, 3], np.int64),
        "khi": np.array([100, 100, 300], np.uint64),  # 1 and 2: same text before the profile edits
        "klo": np.array([0, 0, 0], np.uint64),
        "xhi": np.array([100, 200, 200], np.uint64),  # 2 and 3: same text after them
        "xlo": np.array([0, 0, 0], np.uint64),
    }
    rows = explode_hashes(batch, buckets=4)
    assert sorted(zip(rows["rank"].tolist(), rows["xhi"].tolist(), strict=True)) == [
        (1, 100),
        (2, 100),
        (2, 200),
        (3, 200),
        (3, 300),
    ]
    e = exact_group({k: rows[k] for k in ("rank", "xhi", "xlo")})
    assert sorted(zip(e["u"].tolist(), e["v"].tolist(), strict=True)) == [(2, 1), (3, 2)]


def test_only_transform_steps_change_text():
    """The dedup key text relies on it (``dedup.keytext``): a step outside ``TRANSFORMS`` returns the
    text it was given, kept or rejected."""
    from dapt.corpora.clean.config import STEP_PARAMS
    from dapt.corpora.clean.steps import FACTORIES, TRANSFORMS

    rng = random.Random(3)
    texts = [
        prose(rng),
        "  Spaced   text\twith tabs  \n\n\n\n\nand lines.  ",
        "Short.",
        "Lorem ipsum {x} javascript cookie policy\nHeading without punctuation\n" + prose(rng, 1),
        finance_table(rng),
        "",
    ]
    for name, factory in FACTORIES.items():
        if name in TRANSFORMS:
            continue
        fn = factory(STEP_PARAMS[name]())
        for t in texts:
            assert fn(t, Counter())[0] is t, name
    assert set(FACTORIES) >= TRANSFORMS


def test_key_text_is_the_cleaned_text_for_the_default_edit_chain():
    from dapt.corpora.clean.config import default_profile, validate_steps
    from dapt.corpora.clean.dedup.keytext import KeyText, cleaned_is_key
    from dapt.corpora.clean.steps import apply_steps, build_steps

    domain = validate_steps(default_profile("domain"), "d")
    general = validate_steps(default_profile("general"), "g")
    assert cleaned_is_key(domain) and not cleaned_is_key(general)
    custom = validate_steps([StepSpec(name="normalize", params={"form": "NFKC"}), StepSpec(name="pii")], "c")
    assert not cleaned_is_key(custom)
    rng = random.Random(4)
    doc = prose(rng) + "\nA heading without punctuation\nMail jane.roe@example.org today."
    key = KeyText()(doc)
    d_text, _, d_reason, _ = apply_steps(build_steps(domain), doc)
    g_text, _, g_reason, _ = apply_steps(build_steps(general), doc)
    assert d_reason is None and g_reason is None
    assert d_text == key  # the domain profile's cleaned text is the key text
    assert g_text != key and "A heading without punctuation" not in g_text  # C4 dropped the line
    assert "<EMAIL>" in key and "jane.roe" not in key
