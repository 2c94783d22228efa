"""Screening: one pass over the joined extract, a bucket at a time, that keeps what later
steps need and learns what the refusals depend on — malformed ICD-10 codes, rows without
the value the pseudonym is keyed on, direct identifiers in published columns — then refuses
in that order, before anything is generalised.

The published columns are written out by a hash of the pseudonym's source value, so that
every row of one patient lands in one bucket: counts of distinct patients then add up
across buckets, which is what lets the minimum count be enforced without holding the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from sandbox.data import identifiers
from sandbox.data.extract import ROW
from sandbox.data.pseudonym import canonical
from sandbox.data.spec import Icd10Hierarchy, Spec
from sandbox.data.spill import Spill, Workspace, hashed
from sandbox.errors import PolicyRefusal, SpecError

ID = "_id"  # the value the pseudonym is keyed on (the ID number)
PID = "_pid"  # the extract's patient ID, which consent records refer to
_ICD10 = r"^[A-Z]\d{2}(\.\d{1,2})?$"


@dataclass
class Screened:
    """What the pass over the extract kept and learnt."""

    published: Spill  # ROW, ID and the published columns, bucketed by hash(ID)
    mapping: Spill  # PID → ID, bucketed by hash(PID)
    rows: int = 0
    missing_ids: int = 0
    years: tuple[int, int] | None = None
    distinct: dict[str, pl.Series] = field(default_factory=dict)
    nulls: set[str] = field(default_factory=set)
    hits: list[identifiers.Hit] = field(default_factory=list)


def screen(frames: Iterable[pl.DataFrame], spec: Spec, work: Workspace) -> Screened:
    """Read every joined row once; refuse (SpecError, PolicyRefusal) or return what was
    kept. Every spill but ``published`` and ``mapping`` is gone when this returns."""
    s = Screened(work.spill("published"), work.spill("patient-ids"))
    names, values = work.spill("names"), work.spill("text-values")
    bad = work.spill("icd10", schema=pl.Schema({"field": pl.String, "value": pl.String}))
    generalised = [f.name for f in spec.fields if f.hierarchy is not None]
    icd10 = [f for f in spec.fields if isinstance(f.hierarchy, Icd10Hierarchy)]
    source = spec.pseudonym.source
    try:
        columns: list[str] = []
        for frame in frames:
            published = frame.select(ROW, canonical(pl.col(source)).alias(ID),
                                     *(pl.col(f.source_column).alias(f.name) for f in spec.fields))
            columns = identifiers.scannable(published.drop(ROW, ID).schema)
            s.rows += frame.height
            s.missing_ids += published[ID].null_count()
            year = (frame[spec.dataset.year_column].dt.year() if spec.dataset.year_column
                    else pl.Series([], dtype=pl.Int32))
            if year.drop_nulls().len():
                low, high = int(year.min()), int(year.max())
                s.years = (min(low, s.years[0]), max(high, s.years[1])) if s.years else (low,
                                                                                        high)
            for f in icd10:
                codes = frame[f.source_column].drop_nulls().unique()
                wrong = codes.filter(~codes.str.contains(_ICD10))
                bad.add(wrong.to_frame("value").select(pl.lit(f.name).alias("field"), "value"),
                        hashed(pl.col("value"), work.count))
            for name in generalised:
                column = published[name]
                if column.null_count():
                    s.nulls.add(name)
                seen = column.drop_nulls().unique()
                s.distinct[name] = (pl.concat([s.distinct[name], seen]).unique()
                                    if name in s.distinct else seen)
            s.hits += identifiers.number_hits(published, columns)
            if spec.identifiers.name_columns:
                names.add(frame.select(pl.concat_list(spec.identifiers.name_columns)
                                       .alias("name")).explode("name").drop_nulls().unique(),
                          hashed(pl.col("name"), work.count))
                values.add(identifiers.text_values(published, columns),
                           hashed(pl.col("value"), work.count))
            s.mapping.add(frame.select(pl.col(spec.source.patient_column).alias(PID),
                                       canonical(pl.col(source)).alias(ID)).unique(),
                          hashed(pl.col(PID), work.count))
            s.published.add(published, hashed(pl.col(ID), work.count))
        for spill in (s.published, s.mapping, names, values, bad):
            spill.close()
        _refuse_bad_codes(bad, [f.name for f in icd10])
        if s.missing_ids:
            raise PolicyRefusal(f"{s.missing_ids} rows have no {source!r} to key the "
                                "pseudonym on; fix the extract first")
        for index in range(work.count):
            found = names.read(index)
            if found.height:
                s.hits += identifiers.name_hits(values.read(index), found["name"])
        findings = identifiers.combine(s.hits, columns)
        if findings:
            raise PolicyRefusal("direct identifiers found; nothing was published:\n"
                                + "\n".join(f"  - {f.describe()}" for f in findings))
    finally:
        for spill in (names, values, bad):
            spill.remove()
    for name in s.distinct:
        s.distinct[name] = s.distinct[name].sort()
    return s


_CODE_LIKE = re.compile(r"[A-Za-z0-9.\-]{1,8}")


def _refuse_bad_codes(bad: Spill, fields: list[str]) -> None:
    counts: dict[str, tuple[int, str]] = {}
    for part in bad:
        for row in (part.group_by("field")
                    .agg(pl.col("value").n_unique().alias("n"), pl.col("value").min())
                    .iter_rows()):
            n, example = counts.get(row[0], (0, row[2]))
            counts[row[0]] = (n + row[1], min(example, row[2]))
    for name in fields:
        if name in counts:
            n, example = counts[name]
            # a code-like example helps the controller; anything else may be an identifier
            shown = f"e.g. {example!r}" if _CODE_LIKE.fullmatch(example) else (
                "the first is not shown: it is not code-like")
            raise SpecError(f"field {name}: {n} values are not ICD-10 codes ({shown})")
