"""A cohort definition against a dataset's public metadata and a project's grant: every
table and field it reads must be published and granted, filter values must fit the
catalogue, and what the definition yields — one column per variable — gets a catalogue of
its own (type, bounds, categories), against which statistics of the cohort are checked.

Fields of the records table are granted by name ("sex"); fields of an event table by
table and name ("labs.value").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from sandbox.cohorts import codes
from sandbox.cohorts.spec import RECORDS, CohortSpec, Events, Variable
from sandbox.errors import InputError, PolicyRefusal
from sandbox.queries.checks import check_fields, check_filters, distinct_labels

EXISTS = ["no", "yes"]
DAYS_BOUND = 3660  # days_to_first is clamped to ten years unless a window says otherwise
_NOT_TABLES = ("consent",)


def qualified(table: str, field: str) -> str:
    """The name a grant gives a table's field."""
    return field if table == RECORDS else f"{table}.{field}"


@dataclass(frozen=True)
class Table:
    """One published table: its fields by name, its date field (if any), its contribution
    bound and patient count."""

    name: str
    fields: dict[str, dict]
    date: str | None
    bound: int
    patients: int


def tables(metadata: dict) -> dict[str, Table]:
    """The published tables of a dataset's metadata a cohort may read."""
    out = {}
    for name, table in metadata["tables"].items():
        if name in _NOT_TABLES:
            continue
        fields = {f["name"]: f for f in table["fields"]}
        date = next((f["name"] for f in table["fields"] if f.get("hierarchy") == "date"),
                    None)
        size = table.get("sample_size") or metadata["sample_size"]
        bound = table.get("contribution_bound") or metadata["contribution_bound"]
        out[name] = Table(name, fields, date, int(bound), int(size["patients"]))
    return out


def grantable(metadata: dict) -> set[str]:
    """Every field name a grant may give of this dataset: the records table's by name,
    the event tables' qualified."""
    return {qualified(t.name, name) for t in tables(metadata).values()
            for name, f in t.fields.items() if f["role"] not in ("patient_key", "label")}


def check(spec: CohortSpec, metadata: dict, allowed: set[str] | None = None
          ) -> dict[str, dict]:
    """Refuse what ``metadata`` or the grant (``allowed`` field names; None: all) does not
    allow; the catalogue of the cohort's frame: one entry per variable."""
    known = tables(metadata)
    out: dict[str, dict] = {}
    dated = _table(known, spec.index.table).date is not None
    # the index is ordered by its table's date, if it has one
    _check_events(spec.index, known[spec.index.table], allowed, dated)
    for variable in spec.variables.values():
        if variable.events is not None:
            _check_events(variable.events, _table(known, variable.events.table), allowed,
                          _timed(variable), variable.field)
        if variable.followup is not None:
            _check_events(variable.followup, _table(known, variable.followup.table), allowed,
                          True)
    for name, variable in spec.variables.items():
        relative = variable.kind in ("days_to_first", "survival") or bool(
            variable.events and variable.events.window and variable.events.window.after_index)
        if relative and not dated:
            raise InputError(f"{name}: the index table {spec.index.table!r} has no dates, "
                             "so nothing can be measured from the index date")
        out[name] = _describe(name, variable, known, out, known[spec.index.table])
        if variable.kind == "survival":
            status = f"{name}_event"
            out[status] = {"name": status, "role": "attribute", "type": "string",
                           "categories": EXISTS, "description": {
                               "zh": f"{name} 是否观察到结局", "en": f"{name}: outcome seen"}}
    check_filters(spec.where, out)
    return out


def _timed(variable: Variable) -> bool:
    return variable.kind in ("first_value", "last_value", "days_to_first", "survival")


def _table(known: dict[str, Table], name: str) -> Table:
    if name not in known:
        raise InputError(f"unknown table {name!r}; tables: {', '.join(sorted(known))}")
    return known[name]


def _granted(table: Table, allowed: set[str] | None) -> set[str]:
    return {n for n in table.fields if allowed is None or qualified(table.name, n) in allowed}


def _check_events(events: Events, table: Table, allowed: set[str] | None,
                  timed: bool, value: str | None = None) -> None:
    """Refuse a field of ``events`` (or the ``value`` field read of them) that the table
    does not publish or the grant does not cover, and a window or order without a date."""
    granted = _granted(table, allowed)
    if not granted:
        # a table's events tell who has them, and how many, without any field of it
        raise PolicyRefusal(f"no field of {table.name} is in this project's grant")
    try:
        check_fields([*events.fields_used(), *([value] if value else [])], table.fields,
                     granted)
    except (InputError, PolicyRefusal) as exc:
        raise type(exc)(f"{table.name}: {exc.reason}") from None
    if events.codes is not None:
        field = table.fields[events.codes.field]
        if field.get("hierarchy") != "icd10":
            raise InputError(f"{table.name}.{events.codes.field} holds no ICD-10 codes")
    check_filters(events.where, table.fields)
    if table.date is None:
        # one row per patient, or events without dates: in no window, ordered by value
        if events.window is not None:
            raise InputError(f"{table.name} has no dates: its events fall in no window")
    elif (events.window is not None or timed) and table.date not in granted:
        raise PolicyRefusal(f"{qualified(table.name, table.date)} (the table's date) "
                            "is outside this project's grant")


def _describe(name: str, variable: Variable, known: dict[str, Table],
              done: dict[str, dict], index: Table) -> dict:
    """The catalogue entry of one variable of the frame (``index``: the index's table)."""
    entry = {"name": name, "role": "attribute",
             "description": {"zh": f"队列变量 {name}", "en": f"cohort variable {name}"}}
    if variable.kind == "index_period":
        if index.date is None:
            raise InputError(f"{name}: {index.name} has no dates, so no index period")
        periods = _periods(index.fields[index.date].get("categories") or [],
                           variable.level)
        if not periods:
            raise InputError(f"{name}: no date of {index.name} is published as finely as "
                             f"a {variable.level}")
        return entry | {"type": "string", "categories": periods}
    if variable.kind == "bands":
        if variable.of not in done:
            raise InputError(f"{name}: bands need {variable.of!r} defined before them")
        return entry | {"type": "string", "categories": distinct_labels(variable.edges)}
    if variable.kind == "square":
        if variable.of not in done:
            raise InputError(f"{name}: a square needs {variable.of!r} defined before it")
        low, high = (float(b) for b in done[variable.of]["bounds"])
        least = 0.0 if low <= 0 <= high else min(low * low, high * high)
        if not math.isfinite(max(low * low, high * high)):
            raise InputError(f"{name}: the square of {variable.of!r} has no finite bound")
        return entry | {"type": "float", "bounds": [least, max(low * low, high * high)]}
    assert variable.events is not None
    table = known[variable.events.table]
    if variable.kind == "exists":
        return entry | {"type": "string", "categories": EXISTS}
    if variable.kind == "count":
        return entry | {"type": "integer", "bounds": [0, table.bound]}
    if variable.kind in ("days_to_first", "survival"):
        if table.date is None:
            raise InputError(f"{name}: {table.name} has no dates to count days to")
        window = variable.events.window
        high = window.after_index[1] if window and window.after_index else DAYS_BOUND
        high = variable.horizon if variable.kind == "survival" else high
        return entry | {"type": "integer", "bounds": [0, max(high, 1)]}
    field = table.fields[variable.field]
    if variable.kind in ("min", "max", "mean"):
        if field["type"] not in ("integer", "float") or not field.get("bounds"):
            raise InputError(f"{name}: {variable.kind} needs a numeric field with public "
                             f"bounds; {table.name}.{variable.field} is {field['type']}")
        return entry | {"type": "float", "bounds": list(field["bounds"])}
    if field["type"] != "string" or field.get("categories") is None:
        raise InputError(f"{name}: {variable.kind} needs a text field with public "
                         f"categories; {table.name}.{variable.field} has none")
    return entry | {"type": "string", "categories": list(field["categories"])}


def _periods(labels: list[str], level: str) -> list[str]:
    """The periods at ``level`` that the published date ``labels`` fall wholly inside —
    public, as the labels are."""
    first, last = codes.period("label")
    found = pl.DataFrame({"label": labels}, schema={"label": pl.String}).select(
        codes.period_label(first, last, level).alias("p")).drop_nulls().unique()
    return sorted(found["p"].to_list())
