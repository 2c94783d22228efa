"""The role guides: each exists in Chinese and English with the same pictures in both, every
picture they show exists (small, as docs/images/refresh.py makes it) and is one the
refresh script knows how to take again from the browser tests, every link between
documents leads somewhere, and the README points newcomers to them."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

DOCS = ROOT / "docs"
IMAGES = DOCS / "images"
GUIDES = ["guide-researcher.md", "guide-committee.md", "guide-controller.md"]
ZH, EN = "## 中文", "## English"  # each guide: the Chinese half first, then the English
PICTURE = re.compile(r"!\[([^\]]*)\]\(images/([^)\s]+)\)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")
MAX_TOTAL = 4_000_000  # bytes for all the pictures together


def halves(guide: str) -> tuple[str, str]:
    """The Chinese and the English half of a guide (each up to the next level-2 heading)."""
    text = (DOCS / guide).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines.count(ZH) == 1 and lines.count(EN) == 1, f"{guide}: one {ZH} and one {EN}"
    zh_at, en_at = lines.index(ZH), lines.index(EN)
    assert zh_at < en_at, f"{guide}: the Chinese half comes first"

    def section(start: int) -> str:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ") or lines[i] == "---"), len(lines))
        return "\n".join(lines[start + 1:end])

    return section(zh_at), section(en_at)


def refresh_script():
    """docs/images/refresh.py, which is a script, not a package module."""
    name = "docs_images_refresh"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, IMAGES / "refresh.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while defined
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("guide", GUIDES)
def test_each_guide_is_complete_in_both_languages(guide):
    zh, en = halves(guide)
    assert len(re.findall(r"[\u4e00-\u9fff]", zh)) > 500, "the Chinese half is Chinese"
    headings_zh = [h for h in zh.splitlines() if h.startswith("### ")]
    headings_en = [h for h in en.splitlines() if h.startswith("### ")]
    assert len(headings_zh) == len(headings_en) > 3, (headings_zh, headings_en)
    # the same pictures, in the same order, illustrate the same steps in both languages
    assert [p for _, p in PICTURE.findall(zh)] == [p for _, p in PICTURE.findall(en)]
    assert all(alt.strip() for alt, _ in PICTURE.findall(zh + en)), "every picture has a caption"


@pytest.mark.parametrize("guide", GUIDES)
def test_every_picture_a_guide_shows_exists(guide):
    shown = {p for _, p in PICTURE.findall((DOCS / guide).read_text(encoding="utf-8"))}
    assert shown, f"{guide} shows no screenshot"
    for name in sorted(shown):
        path = IMAGES / name
        assert path.is_file(), f"{guide} shows images/{name}, which does not exist"
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width <= 1200, (name, picture.size)


def test_the_pictures_are_the_ones_the_refresh_script_makes_and_stay_small():
    shown = {p for guide in GUIDES
             for _, p in PICTURE.findall((DOCS / guide).read_text(encoding="utf-8"))}
    stored = {p.name for p in IMAGES.glob("*.png")}
    known = set(refresh_script().SHOTS)
    assert stored == shown, f"not shown: {stored - shown}; missing: {shown - stored}"
    assert known == stored, f"refresh.py lacks {stored - known}; stale in it: {known - stored}"
    assert sum((IMAGES / p).stat().st_size for p in stored) < MAX_TOTAL


def test_the_refresh_script_names_the_test_for_a_missing_screenshot(tmp_path, capsys):
    assert refresh_script().main(["--from", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "missing: demo-01-sign-in.png (taken by tests/hub/test_demo.py)" in err
    assert "tests/browser/test_step_up.py" in err


@pytest.mark.parametrize("guide", GUIDES)
def test_links_between_documents_lead_somewhere(guide):
    for target in LINK.findall((DOCS / guide).read_text(encoding="utf-8")):
        assert (DOCS / target).is_file(), f"{guide} links to {target}"


def test_the_readme_points_to_every_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for guide in GUIDES:
        assert f"(docs/{guide})" in readme, guide


def test_every_test_the_threat_model_cites_exists():
    """docs/threat-model.md names, for each guarantee, the test that plays its attack: each
    file it cites exists and each test it names is defined there (a trailing * stands for
    a family of tests with that prefix)."""
    import ast

    text = (DOCS / "threat-model.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+)(\*)?)?", text)
    assert len(cited) >= 40, "the threat model cites the tests that show it"
    for path, name, family in cited:
        source = ROOT / path
        assert source.is_file(), path
        if not name:
            continue
        defined = {n.name for n in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                   if isinstance(n, ast.FunctionDef)}
        assert (any(d.startswith(name) for d in defined) if family else name in defined), \
            f"{path}::{name}{family}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/threat-model.md)" in readme
