"""Direct identifiers in the text of an export: resident ID numbers (with a valid check
digit) and mobile numbers fail; a person's name from the name dictionary goes to review.

The adversary writes an identifier so that a pattern for plain ASCII digits misses it:
full-width or other-script digits (``４４０１…``), invisible characters between digits,
an ID number in groups (``440106 19850312 123X``), a mobile number with dashes
(``138-0013-8000``). So the text is first brought to one form — NFKC, every decimal digit
as ASCII, format characters (zero-width spaces …) removed — and an ID number may have one
separator between any two of its characters: its date and check digit keep chance matches
rare. A mobile number has no check digit, so only the ways people write one are joined
(3-4-4 groups with one separator, an optional +86), lest a row of small counts turn into
one."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from sandbox.data import idcard
from sandbox.data.reference.population import GIVEN_FEMALE, GIVEN_MALE, SURNAMES
from sandbox.exports.model import Check, Outcome, Text

SEPARATOR = r"[ \t\-‐‑‒–—.·/_]"
# 18 characters of an ID number, one optional separator between any two; looked for at
# every start (a lookahead), so that a number written just before one does not hide it.
ID_NUMBER = re.compile(rf"(?<![0-9])(?=((?:[0-9]{SEPARATOR}?){{17}}[0-9Xx])(?![0-9]))")
_ID_SHAPE = re.compile(idcard.PATTERN)
MOBILE = re.compile(
    rf"(?<![0-9])(?:(?:\+|00)?86{SEPARATOR}?)?"
    rf"(1[3-9][0-9](?:[0-9]{{8}}|(?P<sep>{SEPARATOR})[0-9]{{4}}(?P=sep)[0-9]{{4}}))"
    r"(?![0-9])")
_SURNAMES = "|".join(sorted((s for s, _ in SURNAMES), key=len, reverse=True))
_GIVEN = "".join(sorted(set(GIVEN_MALE) | set(GIVEN_FEMALE)))
NAME = re.compile(rf"(?:{_SURNAMES})[{_GIVEN}]{{1,2}}")


def ascii_digits(text: str) -> str:
    """``text`` with every decimal digit (full-width, Arabic-Indic, …) as ASCII and format
    characters (zero-width spaces, joiners, soft hyphens) removed."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c
                   for c in text if unicodedata.category(c) != "Cf")


def normal(text: str) -> str:
    """The one form identifiers are looked for in (NFKC, ASCII digits)."""
    return ascii_digits(unicodedata.normalize("NFKC", text))


def id_numbers(text: str) -> list[str]:
    """Valid resident ID numbers in ``text``, however their digits are written."""
    found = []
    for match in ID_NUMBER.finditer(normal(text)):
        number = re.sub(SEPARATOR, "", match.group(1))
        if _ID_SHAPE.fullmatch(number) and idcard.is_valid(number):
            found.append(number)
    return found


def mobiles(text: str) -> list[str]:
    return [re.sub(SEPARATOR, "", m.group(1)) for m in MOBILE.finditer(normal(text))]


def check(texts: list[Text], name: str) -> Iterator[Check]:
    text = "\n".join(t.text for t in texts)
    ids, phones = id_numbers(text), mobiles(text)
    names = sorted(set(NAME.findall(normal(text))))
    if ids:
        yield Check("identifiers", Outcome.FAIL, f"{len(ids)} resident ID number(s), e.g. "
                    f"{_mask(ids[0])}", name)
    if phones:
        yield Check("identifiers", Outcome.FAIL, f"{len(phones)} mobile number(s), e.g. "
                    f"{_mask(phones[0])}", name)
    if names:
        yield Check("identifiers", Outcome.REVIEW, f"possible personal names: "
                    f"{', '.join(names[:5])}", name)
    if not (ids or phones or names):
        yield Check("identifiers", Outcome.PASS, "no ID numbers, phones or names", name)


def _mask(value: str) -> str:
    return value[:3] + "*" * (len(value) - 5) + value[-2:]
