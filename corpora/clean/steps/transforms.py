"""Steps that transform a document and never reject it: Unicode normalisation and PII redaction.

Kept apart from the quality filters (``quality``) because they answer a different question (what
the text should look like, not whether to keep it) and have a different test surface: the PII
patterns and their checksums (Luhn, IBAN mod-97) are audited on their own.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter

from dapt.corpora.clean import config as C
from dapt.corpora.clean.steps.base import StepFn

# ----------------------------------------------------------------------------------------------
# normalize

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(
    r"[ \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]{2,}|[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
)
_TRAILING = re.compile(r"[ \t]+\n")


def make_normalize(p: C.NormalizeParams) -> StepFn:
    """NFC/NFKC, control characters, unusual spaces, trailing spaces, blank-line runs; optional ftfy."""
    blank = re.compile(r"\n{" + str(p.max_blank_lines + 2) + ",}")
    blank_to = "\n" * (p.max_blank_lines + 1)
    fix_text = None
    if p.fix_mojibake:
        import ftfy

        fix_text = ftfy.fix_text

    def normalize(text: str, pii: Counter) -> tuple[str, str | None]:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if fix_text is not None:
            text = fix_text(text, normalization="NFC" if p.form == "none" else p.form)
        if p.form != "none" and not unicodedata.is_normalized(p.form, text):
            text = unicodedata.normalize(p.form, text)
        if p.strip_control:
            text = _CONTROL.sub("", text)
        if p.collapse_spaces:
            text = _SPACES.sub(" ", text)
            text = _TRAILING.sub("\n", text)
        text = blank.sub(blank_to, text).strip()
        return text, None

    return normalize


# ----------------------------------------------------------------------------------------------
# PII

_PII_RE = re.compile(
    r"""
    (?P<email>(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-]))
  | (?P<iban>(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9]))
  | (?P<card>(?<![\d-])(?:\d{4}(?P<cs1>[ -])\d{4}(?P=cs1)\d{4}(?P=cs1)\d{1,7}|\d{4}(?P<cs2>[ -])\d{6}(?P=cs2)\d{5}|\d{13,19})(?![\d-]))
  | (?P<ssn>(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-]))
  | (?P<phone>(?<![\w+])(?:
          (?:\+?1[ .-]?)?\(\d{3}\)[ ]?\d{3}[ .-]\d{4}
        | (?:\+?1[ .-]?)?\d{3}(?P<ps>[.-])\d{3}(?P=ps)\d{4}
        | \+\d{1,3}(?:[ .-]\d{1,4}){2,5}
      )(?![\w-]))
  | (?P<ipv6>(?<![0-9A-Fa-f:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})
        (?![0-9A-Fa-f:])|(?<![0-9A-Fa-f:])::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}(?![0-9A-Fa-f:]))
  | (?P<ipv4>(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]))
    """,
    re.VERBOSE,
)
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|6011|65|64[4-9]|62)")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(s: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN (spaces ignored)."""
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    r = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in r)
    return int(num) % 97 == 1


def _valid(kind: str, s: str) -> bool:
    if kind == "card":
        d = s.replace(" ", "").replace("-", "")
        return 13 <= len(d) <= 19 and bool(_CARD_PREFIX.match(d)) and luhn_ok(d)
    if kind == "iban":
        return iban_ok(s)
    if kind == "ipv6":
        if s.count(":") < 2:
            return False
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return False
        return sum(c.isalnum() for c in s) >= 3
    if kind == "phone":
        return 10 <= sum(c.isdigit() for c in s) <= 15
    return True


def make_pii(p: C.PIIParams) -> StepFn:
    """One combined regex pass (alternatives in priority order), validated matches replaced."""
    types = set(p.types)

    def pii_step(text: str, pii: Counter) -> tuple[str, str | None]:
        if "@" not in text and ":" not in text and not _HAS_DIGIT.search(text):
            return text, None

        def repl(m: re.Match) -> str:
            kind = m.lastgroup or ""
            s = m.group(0)
            if kind not in types or not _valid(kind, s):
                return s
            pii[kind] += 1
            return p.placeholder.replace("{TYPE}", kind.upper())

        return _PII_RE.sub(repl, text), None

    return pii_step


_HAS_DIGIT = re.compile(r"\d")


def find_pii(text: str) -> list[tuple[str, str]]:
    """Every validated PII match in ``text`` as (type, string): used by tests and audits."""
    out = []
    for m in _PII_RE.finditer(text):
        kind = m.lastgroup or ""
        if _valid(kind, m.group(0)):
            out.append((kind, m.group(0)))
    return out
