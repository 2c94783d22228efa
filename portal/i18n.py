"""Languages of the portal: zh-CN (default) and en. Catalogs live as ``.po`` files in
``portal/translations``; they are compiled to ``.mo`` whenever the source is newer, so a
checkout needs no separate build step."""

from __future__ import annotations

from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

TRANSLATIONS = Path(__file__).parent / "translations"
LANGUAGES = ("zh", "en")


def compile_catalogs() -> None:
    for po in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"):
        mo = po.with_suffix(".mo")
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        with open(po, "rb") as source:
            catalog = read_po(source)
        with open(mo, "wb") as target:
            write_mo(target, catalog)


def current_language() -> str:
    """The page language: the one chosen with the switch, else the browser's, else zh."""
    from flask import request, session

    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(["zh", "en"]) or "zh"
