"""Structured text files, read for what they hold: JSON (its tables, and the text of its
string values), Jupyter notebooks (each cell's source and attachments; each output's text,
tables — HTML, JSON and data-resource bundles — and figures; the notebook's, each cell's
and each output's metadata). SVG is ``svg``.

JSON text escapes what it holds (a CSV in a string value is one line of ``\n``s), so
string values are read decoded: a string of several lines is checked as text of its own
(its tables found), single-line strings together for identifiers and encoded runs.
Everything readable goes on as ``Text`` to the identifier, table and encoded-run checks;
figures inside go on as ``Embedded`` to the figure checks."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator

from sandbox.exports import tables
from sandbox.exports.model import Check, Contents, Embedded, Outcome, Text

IMAGE_OUTPUTS = ("image/png", "image/jpeg")
STANDARD_METADATA = ("kernelspec", "language_info")


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
    read_value(found, value, "")
    found.checks.append(Check("content", Outcome.PASS, "JSON", name))
    return found


def read_value(found: Contents, value: object, origin: str) -> None:
    """What parsed JSON holds: its tables, and its string values as text."""
    found.tables += tables.from_json(value, origin)
    single = []
    for path, string in _strings(value, origin):
        if "\n" in string.strip() or "\r" in string.strip():
            found.texts.append(Text(f"{path} (string value)".strip(), string))
        elif string.strip():
            single.append(string)
    if single:  # one value a line: never a table of their own
        found.texts.append(Text(f"{origin} string values".strip(), "\n".join(single),
                                parsed=True))


def _strings(value: object, path: str) -> Iterator[tuple[str, str]]:
    """Every string in parsed JSON, keys and numbers included, with where it is."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, str(value)
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from _strings(item, f"{path}[{number}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            yield inner, str(key)
            yield from _strings(item, inner)


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
        _metadata(found, cell.get("metadata"), f"cell {number} metadata")
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
                found.texts.append(Text(origin, "\n".join([
                    f"{output.get('ename', '')}: {output.get('evalue', '')}",
                    *(str(line) for line in output.get("traceback") or [])])))
            for mime, value in (output.get("data") or {}).items():
                _output(found, origin, mime, value, name)
            _metadata(found, output.get("metadata"), f"{origin} metadata")
    metadata = notebook.get("metadata")
    if isinstance(metadata, dict):  # the standard keys have their own shapes: read apart
        for key in STANDARD_METADATA:
            _metadata(found, metadata.get(key), f"notebook metadata.{key}")
        metadata = {k: v for k, v in metadata.items() if k not in STANDARD_METADATA}
    _metadata(found, metadata, "notebook metadata")
    found.checks.append(Check("content", Outcome.PASS,
                              f"a Jupyter notebook of {len(cells)} cell(s)", name))
    return found


def _metadata(found: Contents, value: object, origin: str) -> None:
    """Metadata the review page does not show and the released copy does not keep (but
    kernelspec and language_info) — read all the same: what a file carries is checked."""
    if value:
        read_value(found, value, origin)


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
        if data is None:
            found.texts.append(Text(origin, _joined(value)))
        else:
            read_value(found, data, origin)
    else:
        found.texts.append(Text(origin, _joined(value)))


def _parse(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
