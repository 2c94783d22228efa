"""Cohort definitions: which patients, and what to know about each — plain JSON, validated
here, never code. A definition names an *index event* (the patients who have one form the
population; its date is each patient's index date), *variables* computed per patient from
the dataset's tables (the records table and its event tables), and conditions on those
variables that narrow the population. The gateway (``sandbox.gateway.cohorts``) and the
sandbox's client (``sandbox.client.cohorts``) build the same one-row-per-patient frame from
it with ``sandbox.cohorts.frame``; every statistic is then asked of that frame, where each
patient is one row.

Dates in the tables may be published at different precisions (a day, a month, a quarter, a
year): an event is in a window only when its whole period is, and "within N days of the
index" holds only when it holds for every day of both periods (``sandbox.cohorts.frame``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox.queries.spec import Filter, QuerySpec

RECORDS = "records"
MAX_VARIABLES = 20
MAX_CODES = 200
MAX_DAYS = 36_600  # a century either side of the index date
NAME = r"^[a-z][a-z0-9_]{0,39}$"
RESERVED = frozenset({"count", "sum", "mean", "bin", "suppressed"})  # columns of a release
# ICD-10 codes and categories ("E11", "E11.9") or a range of categories ("I10-I15")
CODE = re.compile(r"[A-Z][0-9]{2}(\.[0-9A-Z]{1,2})?")
CODE_RANGE = re.compile(r"([A-Z][0-9]{2})-([A-Z][0-9]{2})")

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Window(BaseModel):
    """When an event counts: between two dates (inclusive, either may be open), and/or a
    number of days after the index date (negative: before it), both ends inclusive."""

    model_config = _FROZEN

    start: date | None = None
    end: date | None = None
    after_index: tuple[int, int] | None = Field(
        None, description="[low, high] days from the index date, e.g. [1, 30]")

    @model_validator(mode="after")
    def _shape(self) -> Window:
        if self.start is None and self.end is None and self.after_index is None:
            raise ValueError("a window needs start, end or after_index")
        if self.start and self.end and self.start > self.end:
            raise ValueError("a window's start comes after its end")
        if self.after_index is not None:
            low, high = self.after_index
            if low > high or max(abs(low), abs(high)) > MAX_DAYS:
                raise ValueError(f"after_index takes [low, high] days, low ≤ high, "
                                 f"within ±{MAX_DAYS}")
        return self


class Codes(BaseModel):
    """ICD-10 codes of a field: categories or codes ("E11", "E11.9") match themselves and
    every code below them; a range ("I10-I15") matches every category within it."""

    model_config = _FROZEN

    field: str = Field(min_length=1, max_length=64)
    codelist: list[str] = Field(min_length=1, max_length=MAX_CODES)

    @field_validator("codelist")
    @classmethod
    def _codes(cls, codelist: list[str]) -> list[str]:
        for code in codelist:
            if CODE.fullmatch(code):
                continue
            bounds = CODE_RANGE.fullmatch(code)
            if bounds and bounds[1] <= bounds[2]:
                continue
            raise ValueError(f"{code[:20]!r} is not an ICD-10 code, category or range "
                             "(e.g. E11, E11.9, I10-I15)")
        return sorted(set(codelist))


class Events(BaseModel):
    """Rows of one table: those whose ``codes`` match, that pass ``where`` and fall in
    ``window``."""

    model_config = _FROZEN

    table: str = Field(min_length=1, max_length=64)
    codes: Codes | None = None
    where: list[Filter] = Field(default_factory=list, max_length=20)
    window: Window | None = None

    def fields_used(self) -> list[str]:
        used = [*([self.codes.field] if self.codes else []), *(f.field for f in self.where)]
        return list(dict.fromkeys(used))


class Index(Events):
    """The index event: the patient's first (or last) matching event."""

    which: Literal["first", "last"] = "first"

    @model_validator(mode="after")
    def _absolute(self) -> Index:
        if self.window is not None and self.window.after_index is not None:
            raise ValueError("the index event's window cannot refer to the index date")
        return self


class Variable(BaseModel):
    """One value per patient:

    - ``exists`` — "yes" if the patient has a matching event, else "no";
    - ``count`` — how many matching events;
    - ``min`` / ``max`` / ``mean`` — of ``field`` over the matching events (none: null);
    - ``first_value`` / ``last_value`` — ``field`` of the earliest / latest matching event;
    - ``days_to_first`` — days from the index date to the first matching event on or after
      it (none, or a date too coarse to tell: null);
    - ``bands`` — the variable ``of`` cut at ``edges`` ("[a, b)", the last band closed);
    - ``square`` — the variable ``of`` squared (a linear model's sums of squares);
    - ``survival`` — time to the first ``events`` on or after the index date, within
      ``horizon`` days, else censored at the last ``followup`` event (at most
      ``horizon``): two columns, the days (``<name>``) and whether the event was seen
      (``<name>_event``, "yes"/"no"); null where a date is too coarse to count days;
    - ``index_period`` — the index date's month ("2023-05"), quarter ("2023-Q2") or year
      (``level``), null where the published date spans more than one: patients by the
      period of their index event, a monthly series.
    """

    model_config = _FROZEN

    kind: Literal["exists", "count", "min", "max", "mean", "first_value", "last_value",
                  "days_to_first", "bands", "square", "index_period", "survival"]
    events: Events | None = None
    field: str | None = Field(None, max_length=64)
    of: str | None = Field(None, pattern=NAME)
    edges: list[float] | None = Field(None, min_length=2, max_length=101)
    level: Literal["month", "quarter", "year"] | None = None
    followup: Events | None = None
    horizon: int | None = Field(None, ge=1, le=MAX_DAYS)

    @model_validator(mode="after")
    def _shape(self) -> Variable:
        survival = self.kind == "survival"
        if survival != (self.followup is not None and self.horizon is not None) or (
                not survival and (self.followup is not None or self.horizon is not None)):
            raise ValueError("'followup' and 'horizon' go with kind survival, which needs "
                             "both")
        if (self.kind == "index_period") != (self.level is not None):
            raise ValueError("'level' goes with kind index_period, and only there")
        if self.kind == "index_period":
            if self.events or self.field or self.of or self.edges:
                raise ValueError("index_period takes 'level' only")
            return self
        if self.kind == "square":
            if self.of is None or self.edges is not None or self.events or self.field:
                raise ValueError("a square takes 'of' (a variable), nothing else")
            return self
        if self.kind == "bands":
            if self.of is None or self.edges is None or self.events or self.field:
                raise ValueError("bands take 'of' (a variable) and 'edges', nothing else")
            if not all(map(math.isfinite, self.edges)) or any(
                    b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise ValueError("band edges must be finite and increase")
            return self
        if self.events is None or self.of is not None or self.edges is not None:
            raise ValueError(f"a {self.kind} variable takes 'events' (and no 'of' or 'edges')")
        needs_field = self.kind in ("min", "max", "mean", "first_value", "last_value")
        if needs_field != (self.field is not None):
            raise ValueError(f"a {self.kind} variable {'needs' if needs_field else 'takes no'}"
                             " field")
        return self


class CohortSpec(BaseModel):
    """A cohort: the patients with an ``index`` event, the ``variables`` known of each, and
    ``where``: conditions on the variables every patient of the cohort meets."""

    model_config = _FROZEN

    dataset: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00]*$")
    index: Index
    variables: dict[str, Variable] = Field(default_factory=dict, max_length=MAX_VARIABLES)
    where: list[Filter] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _names(self) -> CohortSpec:
        for name, variable in self.variables.items():
            if not re.fullmatch(NAME, name) or name in RESERVED:
                raise ValueError(f"variable name {name[:40]!r}: lower-case letters, digits "
                                 "and _, starting with a letter, and none of "
                                 f"{', '.join(sorted(RESERVED))} (a release's own columns)")
            if variable.kind == "survival" and f"{name}_event" in self.variables:
                raise ValueError(f"{name}: its status column {name}_event is taken")
            if variable.kind in ("bands", "square"):
                source = self.variables.get(variable.of or "")
                if source is None or source.kind in ("bands", "exists", "first_value",
                                                     "last_value", "index_period") or (
                        variable.kind == "square" and source.kind == "square"):
                    raise ValueError(f"{name}: {variable.kind} needs a numeric variable "
                                     f"defined beside it, not {variable.of!r}")
        unknown = [f.field for f in self.where if f.field not in self.columns()]
        if unknown:
            raise ValueError(f"where names {unknown[0]!r}, which is not a variable")
        return self

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def columns(self) -> list[str]:
        """The frame's columns: each variable's, a survival's status after its days."""
        return [c for name, v in self.variables.items()
                for c in ([name, f"{name}_event"] if v.kind == "survival" else [name])]



class CohortQuery(BaseModel):
    """A statistic of a cohort: ``query`` (a count, sum, mean, histogram or quantiles, as
    for a dataset) asked of the cohort's frame, whose fields are the cohort's variables."""

    model_config = _FROZEN

    cohort: CohortSpec
    query: QuerySpec

    @model_validator(mode="after")
    def _same_dataset(self) -> CohortQuery:
        if self.query.dataset != self.cohort.dataset:
            raise ValueError("the query's dataset must be the cohort's")
        return self

    @property
    def dataset(self) -> str:
        return self.cohort.dataset

    @property
    def epsilon(self) -> float:
        return self.query.epsilon

    @property
    def delta(self) -> float:
        return self.query.delta

    @property
    def noise(self) -> str:
        return self.query.noise

    def canonical(self) -> str:
        data = {"cohort": self.cohort.model_dump(mode="json"),
                "query": json.loads(self.query.canonical())}
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()
