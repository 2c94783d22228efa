"""The institution registry's rules, and the confirmation of a name typed as "other".

Conflict-of-interest checks compare registry ids, never the text people typed: two
spellings of one institution must be one entry. So every name of an entry (Chinese name,
English name, each alias) is reduced to a *key* — Unicode-compatibility folded (full-width
letters and spaces become ordinary ones), case-folded, without spaces or punctuation — and a
key belongs to at most one entry. "Lingnan University", "lingnan  university",
"Ｌｉｎｇｎａｎ Ｕｎｉｖｅｒｓｉｔｙ" and "Lingnan-University" share one key, so the
registry can neither hold them as two institutions nor fail to recognise one of them.

Names that only *look* alike — "Lingnаn University" with a Cyrillic а — fold to different
keys, so each key also has a *skeleton* (Unicode TR39's confusable classes, from the
confusable-homoglyphs package): every character replaced by one member of its class. A
skeleton belongs to at most one entry, so no name can be added beside an entry it cannot be
told apart from. Lookups still need the key: a look-alike typed as "other" is not taken for
the entry it imitates but waits for a chair, who sees which entry it looks like.

What folding cannot equate (岭南大学 / 嶺南大學, an abbreviation, a former name) is an alias
an admin adds, or a chair's judgement: text that matches no key becomes an *institution
claim* a chair confirms — mapping it to an entry or adding a new one — before the person's
applications can be assigned or decided. One state table, like ``approvals.states``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from confusable_homoglyphs.confusables import confusables_data

from approvals.errors import DuplicateInstitution, InvalidDecision
from approvals.states import Role, move

MAX_NAME = 200
MAX_ALIASES = 20


def key(name: str) -> str:
    """The form of ``name`` that registry lookups compare."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    # Separators (Z*), punctuation (P*) and control/format characters (C*) carry no identity.
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] not in "ZPC")


_DIRECTION_MARKS = "\u200e\u200f"  # the data wraps right-to-left glyphs in these


@cache
def _prototypes() -> dict[str, str]:
    """Character → the member standing for its confusable class: a lowercase ASCII letter
    where the class has one, else another ASCII character, else one that compatibility
    folding keeps (大 rather than the radical ⼤), else the lowest code point. Only
    single-character confusables: sequences ("rn" for "m") would merge names a reader
    tells apart."""
    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        while parent.setdefault(ch, ch) != ch:
            parent[ch] = parent[parent[ch]]
            ch = parent[ch]
        return ch

    for char, glyphs in confusables_data.items():
        char = char.strip(_DIRECTION_MARKS)
        for glyph in glyphs:
            other = glyph["c"].strip(_DIRECTION_MARKS)
            if len(char) == 1 and len(other) == 1:
                parent[root(char)] = root(other)
    classes: dict[str, list[str]] = {}
    for ch in parent:
        classes.setdefault(root(ch), []).append(ch)

    def rank(ch: str) -> tuple[bool, bool, bool, int]:
        return (not ("a" <= ch <= "z"), not ch.isascii(),
                unicodedata.normalize("NFKC", ch) != ch, ord(ch))

    return {ch: min(members, key=rank) for members in classes.values() for ch in members}


def _replace_confusables(text: str) -> str:
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(prototypes.get(ch, ch) for ch in decomposed))


def skeleton(name: str) -> str:
    """``key(name)`` with each character replaced by its confusable class's member: the
    form lookups use (a function of the key, so every spelling of a name finds it)."""
    return _replace_confusables(key(name))


def skeletons(name: str) -> frozenset[str]:
    """The forms that look-alike comparisons use: the skeleton of the key in lower case and
    in upper case — a Cyrillic а passes for a Latin a in lower case, a Cyrillic Т for a
    Latin T only in upper case. Both depend on the key alone."""
    folded = key(name)
    if not folded:
        return frozenset()
    return frozenset({_replace_confusables(folded), _replace_confusables(folded.upper())})


@dataclass(frozen=True)
class Institution:
    """A registry entry."""

    id: int
    name_zh: str
    name_en: str
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.name_zh, self.name_en, *self.aliases)

    def folded(self) -> frozenset[str]:
        return frozenset(key(n) for n in self.names())

    def skeletons(self) -> frozenset[str]:
        return frozenset().union(*(skeletons(n) for n in self.names()))


def match(text: str, registry: Iterable[Institution]) -> Institution | None:
    """The entry ``text`` names (in any of its spellings), or None."""
    wanted = key(text)
    if not wanted:
        return None
    return next((entry for entry in registry if wanted in entry.folded()), None)


def look_alike(text: str, registry: Iterable[Institution]) -> Institution | None:
    """The entry ``text`` imitates — one of its names but for look-alike characters — or
    None (also when ``text`` *is* one of its spellings)."""
    wanted = skeletons(text)
    return next((entry for entry in registry
                 if wanted & entry.skeletons() and key(text) not in entry.folded()), None)


def check_entry(name_zh: str, name_en: str, aliases: Iterable[str],
                registry: Iterable[Institution], editing: int | None = None
                ) -> Institution:
    """A well-formed entry (``editing``: the id of the entry being changed), or a refusal
    naming the entry that already holds one of its names."""
    zh, en = name_zh.strip(), name_en.strip()
    extra = tuple(dict.fromkeys(a.strip() for a in aliases if a.strip()))
    if not zh or not en:
        raise InvalidDecision("an institution needs both its Chinese and its English name",
                              zh="机构需同时填写中文名称和英文名称")
    if len(extra) > MAX_ALIASES:
        raise InvalidDecision(f"at most {MAX_ALIASES} aliases", zh=f"别名最多 {MAX_ALIASES} 个")
    for name in (zh, en, *extra):
        if len(name) > MAX_NAME:
            raise InvalidDecision(f"a name is at most {MAX_NAME} characters",
                                  zh=f"名称最多 {MAX_NAME} 个字符")
        if not key(name):
            raise InvalidDecision(f"{name!r} has no letters or digits",
                                  zh=f"“{name}”不含文字或数字")
    entry = Institution(editing or 0, zh, en, tuple(a for a in extra if a not in (zh, en)))
    for other in registry:
        if other.id == editing:
            continue
        clash = entry.skeletons() & other.skeletons()  # equal keys have equal skeletons
        if not clash:
            continue
        name = next(n for n in entry.names() if skeletons(n) & clash)
        if key(name) in other.folded():
            raise DuplicateInstitution(
                f"“{name}” is already in the registry as {other.name_en} (no. {other.id})",
                zh=f"“{name}”已在机构名录中：{other.name_zh}（编号 {other.id}）",
                institution=other.id)
        theirs = next(n for n in other.names() if skeletons(n) & skeletons(name))
        raise DuplicateInstitution(
            f"“{name}” looks the same as “{theirs}”, a name of {other.name_en} (no. "
            f"{other.id}) in the registry: names that differ only in look-alike letters of "
            f"another script are one name",
            zh=f"“{name}”与机构名录中{other.name_zh}（编号 {other.id}）的名称“{theirs}”字形"
               f"相同：仅以外观相同的他种文字字母相区别的名称视为同一名称",
            institution=other.id)
    return entry


class ClaimState(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class ClaimAction(StrEnum):
    MAP = "map"  # the text names an entry already in the registry
    ADD = "add"  # the text names an institution the registry lacks: add it
    REJECT = "reject"
    WITHDRAW = "withdraw"  # the person chose another institution meanwhile


# (state, action) → (next state, roles that may take it). A claim starts pending when a
# person types an institution the registry does not know.
TRANSITIONS: dict[tuple[ClaimState, ClaimAction], tuple[ClaimState, frozenset[Role]]] = {
    (ClaimState.PENDING, ClaimAction.MAP): (ClaimState.CONFIRMED, frozenset({Role.CHAIR})),
    (ClaimState.PENDING, ClaimAction.ADD): (ClaimState.CONFIRMED, frozenset({Role.CHAIR})),
    (ClaimState.PENDING, ClaimAction.REJECT): (ClaimState.REJECTED, frozenset({Role.CHAIR})),
    (ClaimState.PENDING, ClaimAction.WITHDRAW): (ClaimState.WITHDRAWN,
                                                 frozenset({Role.SYSTEM})),
}
TERMINAL = frozenset({ClaimState.CONFIRMED, ClaimState.REJECTED, ClaimState.WITHDRAWN})


def check(state: ClaimState, action: ClaimAction, role: Role, reasons: str = "") -> ClaimState:
    """The state ``action`` leads to; a rejection says why."""
    target = move(TRANSITIONS, ClaimState(state), ClaimAction(action), role,
                  "an institution claim")
    if action == ClaimAction.REJECT and not reasons.strip():
        raise InvalidDecision("say why the institution is not accepted",
                              zh="请说明不予确认的理由")
    return target
