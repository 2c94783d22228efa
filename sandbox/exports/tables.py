"""Tables in whatever form a file holds them — CSV/TSV, JSON records or columns, HTML
tables (a notebook's DataFrame output), and text tables (pandas and polars printouts,
Markdown, lines delimited by tabs, bars, commas, semicolons, runs of spaces — or, where
a run of lines holds the same kind of value in each column, by a colon or one space) —
and the two rules every table meets:

- **row-level**: a table with more records than the cited releases hold rows is records,
  not aggregates (fail). Records are counted both ways, so rows transposed into columns
  count too; a guess made from program text goes to review instead;
- **traceable numbers**: every number in it — plain, with a currency sign or a unit, or
  in scientific notation (``numbers``) — is a released value or a rounding of one (else
  review).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from html.parser import HTMLParser

from sandbox.exports import numbers
from sandbox.exports.identifiers import ascii_digits
from sandbox.exports.model import Check, ExportPolicy, Outcome, Table

# Looser, for deciding whether a line of text is a row of a table.
NUMERIC = re.compile(r"^[+-]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][+-]?\d+)?%?$")
QUOTED = re.compile(r"""^(?:"[^"]*"|'[^']*'|[a-zA-Z]?"[^"]*")$""")
BRACKETS = "()[]{} \t"
WRAPPING = BRACKETS + "\"'“”‘’`"
# Lines that only draw a table (Markdown separators, box drawing): skipped inside a run.
RULE = re.compile(r"^[\s\-=:+|│┆─━┌┐└┘├┤┬┴┼╞╡╪═╭╮╯╰]*$")
# Delimiters tried on text, in order; a line belongs to the first that makes it a row.
# The weak ones (a colon, one space) also run through prose, times and code, so a run of
# lines they split is a table only if it is long and each column holds one kind of value.
SPLITTERS = (
    ("\t", re.compile(r"\t"), False),
    ("┆", re.compile(r"┆"), False),
    ("|", re.compile(r"(?<!\\)\|"), False),
    (",", re.compile(r","), False),
    (";", re.compile(r";"), False),
    ("  ", re.compile(r" {2,}|\u3000+"), False),
    (":", re.compile(r"[:：]"), True),
    (" ", re.compile(r" +"), True),
)
WEAK_ROWS = 3  # rows a run split on a weak delimiter needs
TIME = re.compile(r"\d{1,2}:\d{2}:\d{2}")


# -- reading ----------------------------------------------------------------------------

def from_csv(text: str, delimiter: str, origin: str = "") -> tuple[Table, str]:
    """The table, and the comment lines (``#``) before its header — a watermark, say —
    which the caller checks as text."""
    lines = text.splitlines(keepends=True)
    skip = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    rows = list(csv.reader(io.StringIO("".join(lines[skip:])), delimiter=delimiter))
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    return Table(origin, rows[0] if rows else [], body), "".join(lines[:skip])


def from_json(value: object, origin: str) -> Iterator[Table]:
    """Tables in parsed JSON: lists of records, lists of rows, dicts of columns, dicts of
    records (pandas' ``index``/``columns`` orients), long lists of values, long flat
    mappings (id → value) — wherever they are nested."""
    if isinstance(value, list):
        if len(value) >= 2 and all(isinstance(v, dict) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            yield Table(origin, keys, [[_cell(v.get(k)) for k in keys] for v in value])
        elif len(value) >= 2 and all(isinstance(v, list) for v in value):
            yield Table(origin, [], [[_cell(c) for c in v] for v in value])
        elif len(value) >= 2 and all(_scalar(v) for v in value):
            yield Table(origin, [origin], [[_cell(v)] for v in value])
        for number, item in enumerate(value):
            if not _scalar(item):
                yield from _nested(item, f"{origin}[{number}]")
        return
    if not isinstance(value, dict):
        return
    columns = {k: v for k, v in value.items()
               if isinstance(v, list) and len(v) >= 2 and all(_scalar(c) for c in v)}
    if columns:
        length = max(len(v) for v in columns.values())
        yield Table(origin, list(columns), [[_cell(v[i]) if i < len(v) else ""
                                              for v in columns.values()]
                                             for i in range(length)])
    records = {k: v for k, v in value.items()
               if isinstance(v, dict) and v and all(_scalar(c) for c in v.values())}
    if len(records) >= 2:
        keys = list(dict.fromkeys(k for v in records.values() for k in v))
        yield Table(origin, ["", *keys], [[str(k), *(_cell(v.get(c)) for c in keys)]
                                          for k, v in records.items()], labels=1)
    scalars = {k: v for k, v in value.items() if _scalar(v)}
    if len(scalars) > FLAT_RECORD_KEYS:
        yield Table(origin, ["key", "value"], [[str(k), _cell(v)]
                                               for k, v in scalars.items()], labels=1)
    for key, item in value.items():
        if not _scalar(item) and key not in columns and key not in records:
            yield from _nested(item, f"{origin}.{key}" if origin else str(key))


# A flat mapping with more keys than this is a list of id → value pairs, not one record.
FLAT_RECORD_KEYS = 20


def _nested(value: object, origin: str) -> Iterator[Table]:
    yield from from_json(value, origin)


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else f"{value}"


class _HTMLTables(HTMLParser):
    """Rows of every <table> in a piece of HTML; header cells (<th>) in the body are the
    row's labels (pandas writes its index so)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[tuple[bool, list[tuple[bool, str]]]]] = []
        self._row: list[tuple[bool, str]] | None = None
        self._cell: list[str] | None = None
        self._header = False
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._header = [], tag == "th"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append((self._header, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            self.tables[-1].append((self._in_head, self._row))
            self._row = None
        elif tag == "thead":
            self._in_head = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def from_html(html: str, origin: str) -> Iterator[Table]:
    parser = _HTMLTables()
    parser.feed(html)
    parser.close()
    for number, rows in enumerate(parser.tables, 1):
        head = [[text for _, text in cells] for in_head, cells in rows
                if in_head or all(is_header for is_header, _ in cells)]
        body = [cells for in_head, cells in rows
                if not in_head and not all(is_header for is_header, _ in cells)]
        labels = min((sum(1 for is_header, _ in cells[:1] if is_header) for cells in body),
                     default=0)
        yield Table(f"{origin} table {number}".strip(), head[0] if head else [],
                    [[text.strip('"') for _, text in cells] for cells in body], labels)


def from_text(text: str, origin: str, code: bool = False) -> Iterator[Table]:
    """Tables in free text: runs of consecutive lines that split into the same number of
    fields on one delimiter, each with a number in it (in program text: every field a
    literal). A run needs two rows at least (three, each column of one kind, on a weak
    delimiter); a line of text is never a table alone. Digits in any script count."""
    lines = ascii_digits(text).splitlines()
    taken = [False] * len(lines)
    for name, splitter, weak in SPLITTERS:
        run: list[tuple[int, list[str]]] = []
        for index in range(len(lines) + 1):
            line = lines[index] if index < len(lines) and not taken[index] else None
            if line is not None and run and line.strip() and RULE.match(line):
                continue  # a drawn rule inside a table
            fields = _split(line, splitter, name) if line is not None else []
            row = len(fields) >= 2 and _is_row(fields, code)
            if row and (not run or len(fields) == len(run[0][1])):
                run.append((index, fields))
                continue
            table = _run_table(run, lines, splitter, name, origin, code, weak)
            if table is not None:
                for at, _ in run:
                    taken[at] = True
                yield table
            run = [(index, fields)] if row else []


def _split(line: str, splitter: re.Pattern, name: str = "") -> list[str]:
    body = line.strip().strip("│|").strip()
    if name in (":", " ") and TIME.search(body):
        return [body]  # a time of day is not fields; a timestamped line is a log's
    fields = [field.strip() for field in splitter.split(body)]
    if name == " " and fields[0].endswith((":", "：")):
        return [body]  # "key: value" is the colon's to judge (one record)
    return fields


def _numeric(value: str) -> bool:
    return bool(NUMERIC.match(value)) or numbers.read(value) is not None


def _is_row(fields: list[str], code: bool) -> bool:
    values = [f.strip(WRAPPING) for f in fields]
    numeric = any(_numeric(v) for v in values)
    if code:  # a row of a data literal: every field a number or a quoted string
        literals = [f.strip(BRACKETS) for f in fields]
        return numeric and all(not v or NUMERIC.match(v) or QUOTED.match(v)
                               for v in literals)
    return numeric


def _tabular(rows: list[list[str]]) -> bool:
    """Whether rows split on a weak delimiter look like a table: each column holds one
    kind of value (numbers, or words) in every row, and some column of numbers is more
    than a list's numbering (1. 2. 3.)."""
    columns = [[cell.strip(WRAPPING) for cell in column] for column in zip(*rows, strict=True)]
    kinds = [{_numeric(cell) for cell in column} for column in columns]
    if any(len(kind) != 1 for kind in kinds):
        return False
    return any(kind == {True} and not _numbering(column)
               for kind, column in zip(kinds, columns, strict=True))


def _numbering(column: list[str]) -> bool:
    values = [cell.rstrip(".)、") for cell in column]
    if not all(v.isdigit() for v in values):
        return False
    return [int(v) for v in values] == list(range(int(values[0]), int(values[0]) + len(values)))


def _run_table(run: list[tuple[int, list[str]]], lines: list[str], splitter: re.Pattern,
               name: str, origin: str, code: bool, weak: bool) -> Table | None:
    if len(run) < 2:
        return None
    rows = [fields for _, fields in run]
    if weak and (len(run) < WEAK_ROWS or not _tabular(rows)):
        return None
    if name == ":" and len(rows[0]) == 2 and len(rows) <= FLAT_RECORD_KEYS:
        return None  # "key: value" lines are one record, as a flat JSON mapping is
    first = run[0][0]
    width = len(run[0][1])
    header: list[str] = []
    above = first - 1
    while above >= 0 and RULE.match(lines[above]) and lines[above].strip():
        above -= 1
    if above >= 0:
        candidate = _split(lines[above], splitter, name)
        if len(candidate) in (width, width - 1) and not _is_row(candidate, code):
            header = candidate
    labels = 0
    if header and len(header) == width - 1:  # pandas prints its index without a header
        labels = 1
    where = f"{origin}, line {first + 1}".lstrip(", ")
    return Table(where, header, rows, labels, certain=not code)


# -- rules ------------------------------------------------------------------------------

def judge(table: Table, payloads: list[dict], policy: ExportPolicy, file: str
          ) -> Iterator[Check]:
    """The row-level and traceable-number rules for one table."""
    released_rows = sum(len(p.get("result") or []) for p in payloads)
    widest = max((len(row) for p in payloads for row in p.get("result") or []), default=0)
    bound = max(released_rows, widest, 1)
    rows = len(table.rows)
    columns = max((len(r) for r in table.rows), default=0)
    where = f" ({table.origin})" if table.origin else ""
    outcome = Outcome.FAIL if table.certain else Outcome.REVIEW
    # a single column may hold one value more than the releases (a histogram's edges)
    if rows > bound + (columns == 1):
        yield Check("row-level table", outcome, f"{rows} rows but the cited releases hold "
                    f"{released_rows}: this looks like records, not aggregates{where}", file)
    elif columns - max(table.labels, 1) > bound:
        yield Check("row-level table", outcome, f"{columns} columns but the cited releases "
                    f"hold {released_rows} rows of at most {widest} values: rows transposed "
                    f"into columns look like records, not aggregates{where}", file)
    released = numbers.released(payloads)
    untraced = [cell for row in table.rows for cell in row[table.labels:]
                if (shown := numbers.read(cell)) is not None
                and not numbers.traceable(shown, released, policy)]
    if untraced:
        yield Check("traceable numbers", Outcome.REVIEW, f"{len(untraced)} number(s) match "
                    f"no released value, e.g. {', '.join(untraced[:3])}{where}", file)
    else:
        yield Check("traceable numbers", Outcome.PASS, "every number is a released value "
                    f"or a rounding of one{where}", file)
