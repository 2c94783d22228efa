"""Checks of a question against a dataset's public metadata and a project's grant, made
before anything is spent, and the pieces of a query both the central engine and the
federated sites compile the same way (filter predicates, bin labels)."""

from __future__ import annotations

import functools
import itertools
import operator

import polars as pl

from sandbox.errors import InputError, PolicyRefusal
from sandbox.queries.spec import MAX_CELLS, Filter, QuerySpec


def check_fields(names: list[str], fields: dict[str, dict], allowed: set[str]) -> None:
    """Refuse a field the dataset does not publish, or the grant does not cover."""
    granted = sorted(f for f in allowed if f in fields)
    for name in names:
        if name not in fields or fields[name]["role"] in ("patient_key", "label"):
            raise InputError(f"unknown field {name!r}; allowed fields: "
                             f"{', '.join(granted)}", allowed=granted)
        if name not in allowed:
            raise PolicyRefusal(f"field {name!r} is outside this project's grant; "
                                f"allowed fields: {', '.join(granted)}", allowed=granted)


def check_filters(filters: list[Filter], fields: dict[str, dict]) -> None:
    """Refuse a filter whose values do not fit its field's type or public categories."""
    for flt in filters:
        f = fields[flt.field]
        values = flt.value if isinstance(flt.value, list) else [flt.value]
        if f["type"] == "string":
            if flt.op not in ("eq", "ne", "in"):
                raise InputError(f"filter {flt.op!r} does not apply to text field "
                                 f"{flt.field!r}")
            unknown = [v for v in values if v not in (f.get("categories") or [])]
            if unknown:
                raise InputError(f"{unknown} not among the public categories of "
                                 f"{flt.field!r}: {', '.join(f.get('categories') or [])}")
        elif f["type"] in ("integer", "float"):
            if not all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in values):
                raise InputError(f"filter on {flt.field!r} needs numbers")
        elif f["type"] == "boolean" and not all(isinstance(v, bool) for v in values):
            raise InputError(f"filter on {flt.field!r} needs true or false")


def check_spec(spec: QuerySpec, fields: dict[str, dict], allowed: set[str]) -> None:
    """Refuse a spec the dataset or the grant does not allow; nothing is spent."""
    check_fields(spec.fields_used(), fields, allowed)
    if spec.field:
        f = fields[spec.field]
        if f["type"] not in ("integer", "float"):
            raise InputError(f"{spec.kind} needs a numeric field; {spec.field!r} is "
                             f"{f['type']}")
        low, high = f["bounds"]
        if spec.bounds and (spec.bounds[0] < low or spec.bounds[1] > high):
            raise InputError(f"bounds {list(spec.bounds)} lie outside the public bounds "
                             f"[{low:g}, {high:g}] of {spec.field!r}")
        if spec.bins and (spec.bins[0] < low or spec.bins[-1] > high):
            raise InputError(f"bins must lie within the public bounds [{low:g}, {high:g}]")
        if spec.bins:
            distinct_labels(spec.bins)
    cells = 1
    for name in spec.group_by:
        f = fields[name]
        if f["type"] != "string":
            raise InputError(f"group_by needs text fields; {name!r} is {f['type']}")
        cells *= len(f.get("categories") or [])
    if spec.group_by and spec.keys == "public" and cells > MAX_CELLS:
        raise InputError(f"grouping by {spec.group_by} makes {cells} cells; "
                         f"at most {MAX_CELLS}")
    check_filters(spec.filters, fields)


def distinct_labels(edges: list[float]) -> list[str]:
    """The bin labels of ``edges``, refused when two would read the same."""
    labels = bin_labels(edges)
    if len(set(labels)) < len(labels):
        raise InputError("edges too close together: two bins would have the same label "
                         f"({', '.join(labels[:6])}…)")
    return labels


def bin_labels(edges: list[float]) -> list[str]:
    labels = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


def predicate(flt: Filter) -> pl.Expr:
    col = pl.col(flt.field)
    match flt.op:
        case "eq":
            return col == flt.value
        case "ne":
            return col != flt.value
        case "in":
            return functools.reduce(operator.or_, (col == v for v in flt.value))
        case "lt":
            return col < flt.value
        case "le":
            return col <= flt.value
        case "gt":
            return col > flt.value
        case "ge":
            return col >= flt.value
    return (col >= flt.value[0]) & (col <= flt.value[1])
