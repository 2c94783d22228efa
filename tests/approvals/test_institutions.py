"""The institution registry's rules: spellings that differ only in case, width, spaces or
punctuation are one institution, a look-alike in another script cannot be added beside an
entry, the registry cannot hold one institution twice, and a name typed as "other" is
confirmed by a chair through one state table."""

from __future__ import annotations

import pytest

from approvals import institutions
from approvals.errors import DuplicateInstitution, IllegalTransition, InvalidDecision, NotPermitted
from approvals.institutions import (
    ClaimAction,
    ClaimState,
    Institution,
    check_entry,
    key,
    match,
    skeleton,
)
from approvals.states import Role

LINGNAN = Institution(1, "岭南大学", "Lingnan University", ("嶺南大學", "LNU"))
ZHONGSHAN = Institution(2, "中山医院", "Zhongshan Hospital")
REGISTRY = [LINGNAN, ZHONGSHAN]


@pytest.mark.parametrize("spelling", [
    "Lingnan University", "lingnan university", "LINGNAN UNIVERSITY", " Lingnan  University ",
    "Ｌｉｎｇｎａｎ　Ｕｎｉｖｅｒｓｉｔｙ", "Lingnan-University", "Lingnan University.",
    "lingnan\u200buniversity", "岭南大学", "岭 南 大 学", "嶺南大學", "lnu", "（岭南大学）",
])
def test_every_spelling_of_an_entry_finds_it(spelling):
    assert match(spelling, REGISTRY) == LINGNAN


@pytest.mark.parametrize("other", ["Lingnan Univ", "岭南师范学院", "", "   ", "-"])
def test_other_names_find_nothing(other):
    assert match(other, REGISTRY) is None


def test_keys_fold_width_case_spaces_and_punctuation():
    assert key("Ｌｉｎｇｎａｎ Ｕｎｉｖ．") == key("lingnan univ") == "lingnanuniv"
    assert key("Straße") == key("STRASSE")


@pytest.mark.parametrize(("zh", "en", "aliases"), [
    ("岭南 大学", "Some Other Name", ()),
    ("新机构", "LINGNAN UNIVERSITY", ()),
    ("新机构", "New Institute", ("ｌｎｕ",)),
    ("嶺南大學", "New Institute", ()),
])
def test_the_registry_refuses_a_second_spelling_of_an_entry(zh, en, aliases):
    with pytest.raises(DuplicateInstitution) as refused:
        check_entry(zh, en, aliases, REGISTRY)
    assert refused.value.details["institution"] == 1
    assert "岭南大学" in refused.value.details["zh"]


def test_an_entry_may_keep_its_own_names_when_edited():
    edited = check_entry("岭南大学", "Lingnan University", ["LNU", "Lingnan Univ."], REGISTRY,
                         editing=1)
    assert edited.aliases == ("LNU", "Lingnan Univ.")
    with pytest.raises(DuplicateInstitution):
        check_entry("岭南大学", "Lingnan University", ["Zhongshan Hospital"], REGISTRY,
                    editing=1)


@pytest.mark.parametrize(("zh", "en", "aliases", "message"), [
    ("", "X", (), "both its Chinese and its English name"),
    ("新", " ", (), "both its Chinese and its English name"),
    ("新", "New", ("--",), "no letters or digits"),
    ("新", "N" * 201, (), "at most 200"),
    ("新", "New", tuple(f"a{i}" for i in range(21)), "at most 20 aliases"),
])
def test_malformed_entries_are_refused(zh, en, aliases, message):
    with pytest.raises(InvalidDecision, match=message):
        check_entry(zh, en, aliases, REGISTRY)


def test_a_claim_is_confirmed_or_rejected_by_a_chair_only():
    assert institutions.check(ClaimState.PENDING, ClaimAction.MAP, Role.CHAIR) == \
        ClaimState.CONFIRMED
    assert institutions.check(ClaimState.PENDING, ClaimAction.ADD, Role.CHAIR) == \
        ClaimState.CONFIRMED
    with pytest.raises(NotPermitted, match="a researcher may not map"):
        institutions.check(ClaimState.PENDING, ClaimAction.MAP, Role.RESEARCHER)
    with pytest.raises(NotPermitted):
        institutions.check(ClaimState.PENDING, ClaimAction.ADD, Role.ADMIN)
    with pytest.raises(InvalidDecision, match="say why"):
        institutions.check(ClaimState.PENDING, ClaimAction.REJECT, Role.CHAIR, " ")
    assert institutions.check(ClaimState.PENDING, ClaimAction.REJECT, Role.CHAIR,
                              "not an institution") == ClaimState.REJECTED
    with pytest.raises(IllegalTransition, match="confirmed"):
        institutions.check(ClaimState.CONFIRMED, ClaimAction.MAP, Role.CHAIR)


@pytest.mark.parametrize(("zh", "en"), [
    ("新机构", "Lingn\u0430n University"),  # Cyrillic а
    ("新机构", "Lingnan University"),  # the same name: refused as before
    ("新机构", "LINGNAN UNIVERSIT\u03a5"),  # Greek capital Upsilon, upper case only
    ("新机构", "\u0422ianjin Hospital"),  # Cyrillic capital Те
    ("新机构", "Zh\u03bfngshan Hospital"),  # Greek ο
])
def test_a_look_alike_of_an_entry_is_refused_beside_it(zh, en):
    registry = [*REGISTRY, Institution(3, "天津医院", "Tianjin Hospital")]
    with pytest.raises(DuplicateInstitution) as refused:
        check_entry(zh, en, (), registry)
    assert refused.value.details["institution"] in (1, 2, 3)


def test_a_look_alike_names_what_it_imitates_and_finds_nothing():
    look_alike = "Lingn\u0430n University"
    assert key(look_alike) != key("Lingnan University")
    assert skeleton(look_alike) == skeleton("Lingnan University")
    with pytest.raises(DuplicateInstitution, match="looks the same as “Lingnan University”"):
        check_entry(look_alike, look_alike, (), REGISTRY)
    assert match(look_alike, REGISTRY) is None  # not taken for the entry: a chair decides
    assert institutions.look_alike(look_alike, REGISTRY) == LINGNAN
    assert institutions.look_alike("lingnan university", REGISTRY) is None  # a spelling


@pytest.mark.parametrize(("zh", "en"), [
    ("国际商业机器", "IBM"), ("新", "LBM"), ("新", "Lingnan Institute"), ("岭南师范学院", "x"),
    ("新", "Zhongshan Hospitals"),
])
def test_names_a_reader_tells_apart_are_not_look_alikes(zh, en):
    registry = [*REGISTRY, Institution(4, "某机构", "IBN")]
    assert check_entry(zh, en, (), registry).name_en == en


def test_every_spelling_has_the_skeleton_of_its_key():
    for spelling in ("Lingnan University", "LINGNAN UNIVERSITY",
                     "Ｌｉｎｇｎａｎ　Ｕｎｉｖｅｒｓｉｔｙ", "lingnan\u200buniversity",
                     "岭 南 大 学"):
        assert skeleton(spelling) == skeleton(key(spelling))
        assert skeleton(spelling) in LINGNAN.skeletons()
