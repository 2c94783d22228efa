"""SVG figures: what the checks read in one, and the one way this package parses and
writes one — defused (no entities, nothing fetched), comments and processing instructions
dropped — shared by the checks, the rebuilt copy that leaves, its watermark and the
reviewer's rendering.

The checks read an SVG's drawn text row by row (a ``<text>`` per row, or positioned
``<tspan>`` cells), the text it hides (comments, ids, titles …), its embedded rasters; an
SVG that runs code, animates, or refers to anything outside itself (links, ``@import``,
``url()``) fails."""

from __future__ import annotations

import copy
import math
import re
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, register_namespace, tostring

import tinycss2
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from sandbox.exports import encoded
from sandbox.exports.model import Check, Contents, Embedded, Outcome, Text

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
SVG = f"{{{SVG_NS}}}"
XLINK_HREF = f"{{{XLINK_NS}}}href"
# Written with their usual prefixes (SVG as the default namespace), not ns0:, ns1:.
register_namespace("", SVG_NS)
register_namespace("xlink", XLINK_NS)
# Elements that run code or carry another document.
ACTIVE = frozenset({"script", "foreignObject", "iframe", "object", "embed", "handler",
                    "listener"})
# Elements that change the figure after it is drawn: a reviewer sees its first frame.
ANIMATION = frozenset({"animate", "set", "animateTransform", "animateMotion", "animateColor",
                       "discard"})
# Attributes that name things rather than draw them: where text can hide.
NAMING = frozenset({"id", "class", "name", "lang", "alt", "title"})
RASTERS = ("image/png", "image/jpeg")
UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54,
         "in": 96.0}
LENGTH = re.compile(r"^\s*([+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-z]*)\s*$")
DEFAULT_SIZE = (300.0, 150.0)  # what a viewer draws for an SVG that states no size


def local(element: Element) -> str:
    """The element's name without its namespace ("" for a comment)."""
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def parse(text: str, comments: bool = False) -> Element:
    """The root ``<svg>`` element; ``ValueError`` for anything that is not an SVG."""
    builder = TreeBuilder(insert_comments=comments, insert_pis=comments)
    try:
        parser = DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True,
                                  forbid_external=True)
        parser.feed(text)
        root = parser.close()
    except (ParseError, DefusedXmlException) as exc:
        raise ValueError(f"not a readable SVG: {exc}") from exc
    if not isinstance(root, Element) or root.tag != f"{SVG}svg":
        raise ValueError("not an SVG image: its root element is not <svg>")
    if any(isinstance(e.tag, str) and not e.tag.startswith("{") for e in root.iter()):
        raise ValueError("not a readable SVG: an element outside any namespace")
    return root


def serialise(root: Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + tostring(
        root, encoding="unicode").encode()


def size(root: Element) -> tuple[float, float]:
    """The figure's width and height in CSS pixels, as a viewer would draw it."""
    width, height = _length(root.get("width")), _length(root.get("height"))
    box = view_box(root)
    if width and height:
        return width, height
    if box:
        aspect = box[3] / box[2]
        if width:
            return width, width * aspect
        if height:
            return height / aspect, height
        return box[2], box[3]
    return DEFAULT_SIZE


def view_box(root: Element) -> tuple[float, float, float, float] | None:
    try:
        box = tuple(float(v) for v in re.split(r"[\s,]+", (root.get("viewBox") or "").strip()))
    except ValueError:
        return None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        return None
    return box


def _length(value: str | None) -> float | None:
    match = LENGTH.match(value or "")
    if not match or match.group(2) not in UNITS:
        return None  # a percentage or a font-relative length: no size of its own
    number = float(match.group(1)) * UNITS[match.group(2)]
    return number if math.isfinite(number) and number > 0 else None


# -- style sheets ---------------------------------------------------------------------

def scope_styles(root: Element, scope: str) -> None:
    """Rewrite every style sheet in ``root`` so that it reaches only descendants of the
    element with id ``scope``: a sheet otherwise styles the whole document, a mark drawn
    beside the figure included. At-rules and rules that do not start with a selector are
    dropped."""
    for element in root.iter():
        if local(element) == "style":
            element.text = _scoped("".join(element.itertext()), scope)
            for child in list(element):
                element.remove(child)


def _scoped(css: str, scope: str) -> str:
    rules = []
    for rule in tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True):
        if rule.type != "qualified-rule":
            continue
        selectors: list[list] = [[]]
        for token in rule.prelude:
            if token.type == "literal" and token.value == ",":
                selectors.append([])
            else:
                selectors[-1].append(token)
        scoped = []
        for selector in selectors:
            text = tinycss2.serialize(selector).strip()
            # a selector must name its subject; one starting with a combinator or "&"
            # would, once scoped, reach siblings of the scope (the mark)
            if not text or text[0] in ">+~|&," or "&" in text:
                break
            scoped.append(f"#{scope} {text}")
        else:
            rules.append(f"{', '.join(scoped)} {{{tinycss2.serialize(rule.content)}}}")
    return "\n".join(rules)


def css_problems(css: str) -> set[str]:
    """What in a style sheet or style attribute reaches outside the figure."""
    problems = set()
    if re.search(r"@import", css, re.IGNORECASE):
        problems.add("the SVG's style sheet imports another (@import): a figure refers to "
                     "nothing outside itself")
    for target in re.findall(r"url\(\s*['\"]?\s*([^)'\"\s]*)", css, re.IGNORECASE):
        if not target.startswith("#") and not target.lower().startswith("data:"):
            problems.add(f"the SVG's style refers to {target[:60]!r}: a figure refers to "
                         "nothing outside itself")
    return problems


# -- rendering ----------------------------------------------------------------------------

def for_rendering(root: Element) -> Element:
    """A copy of ``root`` a renderer may draw on the server: nothing that runs or moves,
    no link but to its own elements and PNG/JPEG data (a path or ``file:`` URL would have
    the server read its own files into the picture), and a size in pixels."""
    drawn = copy.deepcopy(root)
    for parent in drawn.iter():
        for child in list(parent):
            if local(child) in ACTIVE or local(child) in ANIMATION or (
                    local(child) == "style" and css_problems("".join(child.itertext()))):
                parent.remove(child)
    for element in drawn.iter():
        for attribute, value in list(element.attrib.items()):
            short = attribute.rsplit("}", 1)[-1]
            link = value.strip().lower()
            if short.lower().startswith("on") or (
                    short in ("href", "src") and not link.startswith(
                        ("#", "data:image/png", "data:image/jpeg"))) or (
                    short == "style" and css_problems(value)):
                del element.attrib[attribute]
    width, height = size(drawn)
    drawn.set("width", f"{width:g}")
    drawn.set("height", f"{height:g}")
    return drawn


# -- the checks ---------------------------------------------------------------------------

def read_svg(text: str, name: str) -> Contents:
    found = Contents()
    try:
        root = parse(text, comments=True)
    except ValueError as exc:
        found.checks.append(Check("content", Outcome.FAIL, str(exc), name))
        return found
    lines: dict[float, list[tuple[float, str]]] = {}
    loose: list[str] = []
    problems: set[str] = set()
    for element in root.iter():
        kind = local(element)
        if not kind:  # a comment or processing instruction
            loose.append(element.text or "")
            continue
        if kind in ACTIVE:
            problems.add(f"the SVG holds a <{kind}> element: a figure runs no code")
        if kind in ANIMATION:
            problems.add(f"the SVG animates (<{kind}>): a figure shows at once what it "
                         "shows")
        if kind == "style":
            problems |= css_problems("".join(element.itertext()))
        for attribute, value in element.attrib.items():
            short = attribute.rsplit("}", 1)[-1]
            if short.lower().startswith("on"):
                problems.add(f"the SVG holds an event handler ({short}): a figure runs "
                             "no code")
            elif attribute in ("href", XLINK_HREF, "src"):
                _href(found, problems, value)
            elif short == "style":
                problems |= css_problems(value)
            elif short in NAMING or short.startswith(("data-", "aria-")):
                loose.append(value)
        if kind == "text":
            for y, x, words in _cells(element):
                if y is None:
                    loose.append(words)
                else:
                    lines.setdefault(round(y, 1), []).append((x, words))
        elif kind in ("title", "desc", "metadata"):
            loose.append("".join(element.itertext()).strip())
    for problem in sorted(problems):
        found.checks.append(Check("content", Outcome.FAIL, problem, name))
    drawn = ["  ".join(w for _, w in sorted(row)) for _, row in sorted(lines.items())]
    found.texts.append(Text("drawn text", "\n".join(drawn)))
    found.texts.append(Text("hidden text", "\n".join(t for t in loose if t.strip())))
    if not found.checks:
        found.checks.append(Check("content", Outcome.PASS, "an SVG image", name))
    return found


def _cells(text: Element) -> list[tuple[float | None, float, str]]:
    """A ``<text>``'s pieces where it draws them (y None: no position of its own): a
    ``<tspan>`` with its own x or y starts a new cell (a table drawn as positioned
    spans), otherwise it goes on the current one."""
    y, x = _number(text.get("y")), _number(text.get("x")) or 0.0
    cells: list[list] = [[y, x, text.text or ""]]
    for span in text:
        if local(span) == "tspan" and (span.get("x") is not None or span.get("y") is not None):
            y = _number(span.get("y")) if span.get("y") is not None else y
            x = _number(span.get("x")) or 0.0 if span.get("x") is not None else x
            cells.append([y, x, ""])
        cells[-1][2] += "".join(span.itertext()) + (span.tail or "")
    return [(y, x, words.strip()) for y, x, words in cells if words.strip()]


def _href(found: Contents, problems: set[str], value: str) -> None:
    link = value.strip()
    if link.startswith("#") or not link:
        return
    if link.lower().startswith("data:"):
        for mime, content in encoded.data_uris(link):
            if content is None or mime not in RASTERS:
                problems.add(f"the SVG embeds a {mime or 'data'} URI that is not a PNG or "
                             "JPEG")
            else:
                found.embedded.append(Embedded("SVG image", content, claimed=mime))
        return
    problems.add(f"the SVG links to {link[:60]!r}: a figure refers to nothing outside "
                 "itself")


def _number(value: str | None) -> float | None:
    try:
        number = float(re.split(r"[\s,]+", str(value).strip())[0]) if value else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None
