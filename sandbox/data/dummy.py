"""Dummy data made from the catalog metadata alone — never from restricted rows — with the
restricted tables' exact schema, so researchers can write and test code in the sandbox
before spending any privacy budget. Values are uniform over the public categories and
bounds; they carry no information about patients."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from sandbox.data.catalog import CONSENT

_DTYPES = {"string": pl.String, "integer": pl.Int64, "float": pl.Float64,
           "boolean": pl.Boolean, "date": pl.Date}


def schema(metadata: dict, table: str) -> dict[str, pl.DataType]:
    """The Polars schema a table of the dataset has, from its metadata."""
    return {f["name"]: _DTYPES[f["type"]]() for f in metadata["tables"][table]["fields"]}


def make(metadata: dict, rows: int, seed: int) -> dict[str, pl.DataFrame]:
    """Dummy ``records`` and ``consent`` tables of ``rows`` records, and as many rows of
    each event table, over one pool of dummy patients."""
    rng = np.random.default_rng(seed)
    pool = [rng.bytes(32).hex() for _ in range(max(1, rows // 8))]
    patients = pl.Series(pool, dtype=pl.String)
    tables = {name: _table(rng, table["fields"], patients, rows)
              for name, table in metadata["tables"].items() if name != CONSENT}
    years = metadata["years"]  # none stated: no dates to draw withdrawals from
    consent: dict[str, pl.Series] = {}
    for field in metadata["tables"][CONSENT]["fields"]:
        name = field["name"]
        if field["role"] == "patient_key":
            consent[name] = patients
        elif field["type"] == "boolean":
            consent[name] = pl.Series(rng.random(len(pool)) < 0.8)
        elif field["type"] == "date" and not years:
            consent[name] = pl.Series([None] * len(pool), dtype=pl.Date)
        elif field["type"] == "date":
            start = (date(years[0], 1, 1) - date(1970, 1, 1)).days
            end = (date(years[1], 12, 31) - date(1970, 1, 1)).days
            days = rng.integers(start, end + 1, len(pool)).astype(np.int32)
            withdrawn = pl.Series(days).cast(pl.Date)
            consent[name] = withdrawn.zip_with(pl.Series(rng.random(len(pool)) < 0.02),
                                               pl.Series([None], dtype=pl.Date))
        else:
            consent[name] = _column(rng, field, len(pool))
    tables[CONSENT] = pl.DataFrame(consent)
    return {t: frame.select(schema(metadata, t).keys()).cast(schema(metadata, t))
            for t, frame in tables.items()}


def _table(rng: np.random.Generator, fields: list[dict], patients: pl.Series, rows: int
           ) -> pl.DataFrame:
    columns: dict[str, pl.Series] = {}
    for field in fields:
        name = field["name"]
        if field["role"] == "patient_key":
            columns[name] = patients.gather(rng.integers(0, len(patients), rows))
        elif field["role"] != "label":
            columns[name] = _column(rng, field, rows)
    for field in fields:
        if field["role"] == "label":
            of = columns[field["label_of"]]
            columns[field["name"]] = of.replace_strict(field["labels"], default="",
                                                       return_dtype=pl.String)
    return pl.DataFrame(columns)


def _column(rng: np.random.Generator, field: dict, rows: int) -> pl.Series:
    kind = field["type"]
    if kind == "boolean":
        return pl.Series(rng.random(rows) < 0.5)
    if kind in ("integer", "float"):
        low, high = field["bounds"]
        if kind == "integer":
            return pl.Series(rng.integers(int(low), int(high) + 1, rows))
        return pl.Series(np.round(rng.uniform(low, high, rows), 2))
    categories = field.get("categories") or ["—"]
    return pl.Series(categories, dtype=pl.String).gather(rng.integers(0, len(categories), rows))
