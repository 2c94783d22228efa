"""Every user-visible string of the portal has a zh-CN translation."""

from __future__ import annotations

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from tests.conftest import ROOT

KEYWORDS = {"_": None, "gettext": None, "_l": None, "lazy_gettext": None}
METHOD_MAP = [("**.py", "python"), ("**/templates/**.html", "jinja2")]


def test_every_message_is_translated():
    found = {message for _file, _line, message, _comments, _context in extract_from_dir(
        ROOT / "portal", METHOD_MAP, keywords=KEYWORDS)}
    with open(ROOT / "portal" / "translations" / "zh" / "LC_MESSAGES" / "messages.po",
              "rb") as handle:
        catalog = read_po(handle)
    translated = {m.id for m in catalog if m.id and m.string}
    missing = sorted(found - translated)
    assert not missing, f"add zh translations for: {missing}"
    assert len(found) > 50
