"""Structured text files, read for what they hold: JSON (its tables), Jupyter notebooks
(each cell's source; each output's text, tables — HTML, JSON and data-resource bundles —
and figures), SVG (its text, its embedded rasters, and nothing that runs).

Everything readable goes on as ``Text`` to the identifier, table and encoded-run checks;
figures inside go on as ``Embedded`` to the figure checks."""

from __future__ import annotations

import base64
import binascii
import json
import re
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from sandbox.exports import encoded, tables
from sandbox.exports.model import Check, Contents, Embedded, Outcome, Text

IMAGE_OUTPUTS = ("image/png", "image/jpeg")


def _fail(reason: str, name: str) -> Check:
    return Check("content", Outcome.FAIL, reason, name)


def _joined(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def read_json(text: str, name: str) -> Contents:
    found = Contents()
    try:
        value = json.loads(text)
    except ValueError as exc:
        found.checks.append(_fail(f"not valid JSON: {exc}", name))
        return found
    found.tables += tables.from_json(value, "")
    found.texts.append(Text("", text))
    found.checks.append(Check("content", Outcome.PASS, "JSON", name))
    return found


def read_notebook(text: str, name: str) -> Contents:
    found = Contents()
    try:
        notebook = json.loads(text)
    except ValueError as exc:
        found.checks.append(_fail(f"not a Jupyter notebook: not valid JSON ({exc})", name))
        return found
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        found.checks.append(_fail("not a Jupyter notebook: it has no list of cells", name))
        return found
    for number, cell in enumerate(cells, 1):
        found.texts.append(Text(f"cell {number}", _joined(cell.get("source", "")),
                                code=cell.get("cell_type") == "code"))
        for attachment, bundle in (cell.get("attachments") or {}).items():
            for mime, value in (bundle or {}).items():
                _output(found, f"cell {number}, attachment {attachment}", mime, value, name)
        for index, output in enumerate(cell.get("outputs") or [], 1):
            origin = f"cell {number}, output {index}"
            if not isinstance(output, dict):
                continue
            if output.get("output_type") == "stream":
                found.texts.append(Text(origin, _joined(output.get("text", ""))))
            elif output.get("output_type") == "error":
                found.texts.append(Text(origin, "\n".join(output.get("traceback") or [])))
            for mime, value in (output.get("data") or {}).items():
                _output(found, origin, mime, value, name)
            if output.get("metadata"):
                found.texts.append(Text(f"{origin} metadata", _joined(output["metadata"])))
    if notebook.get("metadata"):
        found.texts.append(Text("notebook metadata", _joined(notebook["metadata"])))
    found.checks.append(Check("content", Outcome.PASS,
                              f"a Jupyter notebook of {len(cells)} cell(s)", name))
    return found


def _output(found: Contents, origin: str, mime: str, value: object, name: str) -> None:
    if mime in IMAGE_OUTPUTS:
        try:
            content = base64.b64decode(re.sub(r"\s", "", _joined(value)), validate=True)
        except (binascii.Error, ValueError):
            found.checks.append(_fail(f"{origin}: its {mime} output is not base64", name))
            return
        found.embedded.append(Embedded(origin, content, claimed=mime))
    elif mime == "image/svg+xml":
        found.embedded.append(Embedded(origin, _joined(value).encode(), claimed=mime))
    elif mime == "text/html":
        html = _joined(value)
        found.tables += tables.from_html(html, origin)
        found.texts.append(Text(origin, html))
    elif mime.endswith("json"):
        data = value if not isinstance(value, str) else _parse(value)
        found.tables += tables.from_json(data, origin)
        found.texts.append(Text(origin, _joined(value)))
    else:
        found.texts.append(Text(origin, _joined(value)))


def _parse(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- SVG --------------------------------------------------------------------------------

SVG_NS = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
# Elements that run code or carry another document.
ACTIVE = frozenset({"script", "foreignObject", "iframe", "object", "embed", "handler",
                    "listener"})
# Attributes that name things rather than draw them: where text can hide.
NAMING = frozenset({"id", "class", "name", "lang", "alt", "title"})


def read_svg(text: str, name: str) -> Contents:
    found = Contents()
    builder = TreeBuilder(insert_comments=True, insert_pis=True)
    try:
        parser = DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True,
                                  forbid_external=True)
        parser.feed(text)
        root = parser.close()
    except (ParseError, DefusedXmlException, ValueError) as exc:
        found.checks.append(_fail(f"not a readable SVG: {exc}", name))
        return found
    if not isinstance(root, Element) or root.tag != f"{SVG_NS}svg":
        found.checks.append(_fail("not an SVG image: its root element is not <svg>", name))
        return found
    lines: dict[float, list[tuple[float, str]]] = {}
    loose: list[str] = []
    problems: set[str] = set()
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        local = tag.removeprefix(SVG_NS)
        if not tag:  # a comment or processing instruction
            loose.append(element.text or "")
            continue
        if local in ACTIVE or tag.endswith("}script"):
            problems.add(f"the SVG holds a <{local}> element: a figure runs no code")
        for attribute, value in element.attrib.items():
            short = attribute.rsplit("}", 1)[-1]
            if short.lower().startswith("on"):
                problems.add(f"the SVG holds an event handler ({short}): a figure runs "
                             "no code")
            elif attribute in ("href", XLINK_HREF, "src"):
                _href(found, problems, value, name)
            elif short in NAMING or short.startswith(("data-", "aria-")):
                loose.append(value)
        words = "".join(element.itertext()) if local in ("text", "title", "desc",
                                                         "metadata") else ""
        if local == "text" and _number(element.get("y")) is not None:
            row = lines.setdefault(round(_number(element.get("y")), 1), [])
            row.append((_number(element.get("x")) or 0.0, words.strip()))
        elif words.strip():
            loose.append(words.strip())
    for problem in sorted(problems):
        found.checks.append(_fail(problem, name))
    drawn = ["  ".join(w for _, w in sorted(row)) for _, row in sorted(lines.items())]
    found.texts.append(Text("drawn text", "\n".join(drawn)))
    found.texts.append(Text("hidden text", "\n".join(t for t in loose if t.strip())))
    if not found.checks:
        found.checks.append(Check("content", Outcome.PASS, "an SVG image", name))
    return found


def _href(found: Contents, problems: set[str], value: str, name: str) -> None:
    link = value.strip()
    if link.startswith("#") or not link:
        return
    if link.lower().startswith("data:"):
        for mime, content in encoded.data_uris(link):
            if content is None or mime not in ("image/png", "image/jpeg"):
                problems.add(f"the SVG embeds a {mime or 'data'} URI that is not a PNG or "
                             "JPEG")
            else:
                found.embedded.append(Embedded("SVG image", content, claimed=mime))
        return
    problems.add(f"the SVG links to {link[:60]!r}: a figure refers to nothing outside "
                 "itself")


def _number(value: str | None) -> float | None:
    try:
        return float(str(value).split()[0]) if value else None
    except ValueError:
        return None
