"""Cohorts in a notebook: define once, try on the dummy data, then ask the gateway::

    from sandbox.client import Cohort, Gateway, codelist
    diabetes = (Cohort("emr-visits", Cohort.events("diagnoses", codes=codelist("t2d.txt"),
                                                   start="2020-01-01"))
                .first_value("sex", Cohort.events("records"), "sex")
                .max("glucose", Cohort.events("labs", where={"test_code": "GLU"}), "value")
                .bands("glucose_band", "glucose", [0, 7, 11.1, 50])
                .exists("readmitted", Cohort.events("visits", where={"visit_type": "住院"},
                                                    after_index=(1, 30))))
    diabetes.frame()                                  # on dummy data: free, no gateway
    gw = Gateway.from_env()
    gw.cohort(diabetes).count(epsilon=0.5, group_by=["glucose_band", "readmitted"])

The definition is the JSON the gateway checks (``sandbox.cohorts.spec``) and the frame
is built by the code the gateway runs (``sandbox.cohorts.frame``).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from sandbox.client import models
from sandbox.cohorts import checks, rates, survival
from sandbox.cohorts import frame as cohort_frame
from sandbox.cohorts.spec import MAX_VARIABLES, CohortQuery, CohortSpec
from sandbox.errors import SandboxError
from sandbox.queries.checks import bin_labels

if TYPE_CHECKING:
    from sandbox.client import DPResult, Gateway, Where


def codelist(path: str | os.PathLike) -> list[str]:
    """The codes of a codelist file kept in the workspace: one per line (or the first
    column of a CSV), blank lines and lines starting with # ignored."""
    codes = []
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        code = line.split(",", 1)[0].strip()
        if code and not code.startswith("#") and code.lower() != "code":
            codes.append(code)
    return codes


class Cohort:
    """A cohort definition, built step by step; ``spec()`` is its JSON."""

    def __init__(self, dataset: str, index: dict, which: str = "first") -> None:
        self._doc: dict[str, Any] = {"dataset": dataset, "index": {**index, "which": which},
                                     "variables": {}, "where": []}

    @staticmethod
    def events(table: str, *, codes: list[str] | None = None, field: str = "diagnosis_code",
               where: Where = None, start: str | None = None, end: str | None = None,
               after_index: tuple[int, int] | None = None) -> dict:
        """A set of events: rows of ``table`` whose ``field`` matches ``codes`` (ICD-10),
        that pass ``where``, dated between ``start`` and ``end`` and/or ``after_index``
        days from the index date ([1, 30]: the 30 days after it)."""
        from sandbox.client import _filters
        selection: dict[str, Any] = {"table": table, "where": _filters(where)}
        if codes is not None:
            selection["codes"] = {"field": field, "codelist": list(codes)}
        window = {k: v for k, v in (("start", start), ("end", end),
                                    ("after_index", list(after_index) if after_index
                                     else None)) if v is not None}
        if window:
            selection["window"] = window
        return selection

    def variable(self, name: str, kind: str, events: dict | None = None,
                 field: str | None = None, **extra: Any) -> Cohort:
        entry = {"kind": kind, **({"events": events} if events else {}),
                 **({"field": field} if field else {}), **extra}
        self._doc["variables"][name] = entry
        return self

    def exists(self, name: str, events: dict) -> Cohort:
        return self.variable(name, "exists", events)

    def count(self, name: str, events: dict) -> Cohort:
        return self.variable(name, "count", events)

    def min(self, name: str, events: dict, field: str) -> Cohort:
        return self.variable(name, "min", events, field)

    def max(self, name: str, events: dict, field: str) -> Cohort:
        return self.variable(name, "max", events, field)

    def mean(self, name: str, events: dict, field: str) -> Cohort:
        return self.variable(name, "mean", events, field)

    def first_value(self, name: str, events: dict, field: str) -> Cohort:
        return self.variable(name, "first_value", events, field)

    def last_value(self, name: str, events: dict, field: str) -> Cohort:
        return self.variable(name, "last_value", events, field)

    def days_to_first(self, name: str, events: dict) -> Cohort:
        return self.variable(name, "days_to_first", events)

    def survival(self, name: str, events: dict, followup: dict, horizon: int) -> Cohort:
        """Days to the first of ``events`` on or after the index date within ``horizon``,
        else censored at the last of ``followup``: columns ``name`` and ``name_event``."""
        return self.variable(name, "survival", events, followup=followup, horizon=horizon)

    def bands(self, name: str, of: str, edges: list[float]) -> Cohort:
        return self.variable(name, "bands", of=of, edges=list(edges))

    def index_period(self, name: str, level: str = "month") -> Cohort:
        """The index date's month, quarter or year: group by it for a series."""
        return self.variable(name, "index_period", level=level)

    def where(self, conditions: Where) -> Cohort:
        """Keep the patients whose variables meet ``conditions``."""
        from sandbox.client import _filters
        self._doc["where"].extend(_filters(conditions))
        return self

    def spec(self) -> dict:
        """The definition as the gateway reads it (checked here first)."""
        return CohortSpec.model_validate(self._doc).model_dump(mode="json",
                                                                exclude_defaults=True)

    def frame(self, datasets_dir: str | os.PathLike | None = None) -> pl.DataFrame:
        """The cohort built on the dataset's dummy data, one row per patient — what the
        gateway builds on the real tables, minus consent (dummy patients have none)."""
        root = Path(datasets_dir or os.environ.get("SANDBOX_DATASETS_DIR", "/opt/datasets"))
        spec = CohortSpec.model_validate(self._doc)
        directory = root / spec.dataset
        metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
        built = cohort_frame.build(
            spec, metadata, lambda table: pl.scan_parquet(directory / "dummy" /
                                                         f"{table}.parquet"))
        return built.drop(cohort_frame.PATIENT).collect()

    def __repr__(self) -> str:
        return json.dumps(self._doc, ensure_ascii=False, indent=1)


class CohortStatistics:
    """Statistics of one cohort through the gateway (``gw.cohort(c)``): each spends budget
    and returns a receipted ``DPResult``, as for a dataset; fields are the cohort's
    variables."""

    def __init__(self, gateway: Gateway, cohort: Cohort | dict, noise: str = "laplace",
                 delta: float = 0.0) -> None:
        if noise not in ("laplace", "gaussian"):
            raise ValueError(f"noise is 'laplace' or 'gaussian', not {noise!r}")
        if noise == "gaussian" and delta <= 0:
            raise ValueError("Gaussian noise needs delta > 0, e.g. delta=1e-7")
        self._gateway = gateway
        self.spec = cohort.spec() if isinstance(cohort, Cohort) else cohort
        self.noise, self.delta = noise, delta

    def query(self, query: dict) -> DPResult:
        body = {"cohort": self.spec, "query": query}
        CohortQuery.model_validate(body)  # refused here before any round trip
        return self._gateway._answer("/v1/cohort/query", body)

    def preview(self, query: dict) -> pl.DataFrame:
        body = {"cohort": self.spec, "query": query}
        return pl.DataFrame(self._gateway._call("POST", "/v1/cohort/preview",
                                                body)["statistics"])

    def _query(self, kind: str, epsilon: float, delta: float = 0.0, **extra: Any) -> dict:
        from sandbox.client import _filters
        extra["filters"] = _filters(extra.pop("where", None))
        if self.noise == "gaussian":
            # every statistic of this object: Gaussian noise, its zCDP loss converted by
            # OpenDP to (ε, δ) at the object's δ (docs/adr/0017)
            extra["noise"], delta = "gaussian", delta or self.delta
        return self._gateway._spec(kind, self.spec["dataset"], epsilon, delta, **extra)

    def count(self, *, epsilon: float, where: Where = None,
              group_by: list[str] | None = None, delta: float = 0.0) -> DPResult:
        """Patients of the cohort (each counted once), overall or per group."""
        return self.query(self._query("count", epsilon, delta, where=where,
                                      group_by=group_by))

    def mean(self, field: str, *, epsilon: float, bounds: tuple[float, float] | None = None,
             where: Where = None, group_by: list[str] | None = None) -> DPResult:
        return self.query(self._query("mean", epsilon, field=field, bounds=bounds,
                                      where=where, group_by=group_by))

    def sum(self, field: str, *, epsilon: float, bounds: tuple[float, float] | None = None,
            where: Where = None, group_by: list[str] | None = None) -> DPResult:
        return self.query(self._query("sum", epsilon, field=field, bounds=bounds,
                                      where=where, group_by=group_by))

    def histogram(self, field: str, bins: list[float], *, epsilon: float,
                  where: Where = None) -> DPResult:
        return self.query(self._query("histogram", epsilon, field=field, bins=bins,
                                      where=where))

    def quantiles(self, field: str, quantiles: list[float], *, epsilon: float,
                  bounds: tuple[float, float] | None = None, where: Where = None) -> DPResult:
        return self.query(self._query("quantiles", epsilon, field=field,
                                      quantiles=quantiles, bounds=bounds, where=where))

    def proportion(self, outcome: str, *, epsilon: float, by: list[str] | None = None,
                   value: str = "yes", where: Where = None, level: float = 0.95) -> DPResult:
        """The share of the cohort's patients whose ``outcome`` is ``value`` (overall or
        per group of ``by``), with a ``level`` confidence interval: one grouped count
        (charged, receipted) and its preview's noise scale (free), post-processed
        (``sandbox.cohorts.rates``). Groups with a withheld count (under 5) show none."""
        from sandbox.client import DPResult
        _check_level(level)
        outcomes = self._categories(outcome)
        if outcomes is not None and value not in outcomes:
            raise ValueError(f"{value!r} is not a value of {outcome!r}: "
                             f"{', '.join(outcomes)}")
        by = list(by or [])
        query = self._query("count", epsilon, where=where, group_by=[*by, outcome])
        noise = self.preview(query)
        scale, distribution = float(noise["scale"][0]), noise["distribution"][0]
        counts = self.query(query)
        rows = []
        for key, group in counts.df.group_by(by or [pl.lit(0)], maintain_order=True):
            cells = dict(zip(group[outcome].to_list(), group["count"].to_list(),
                             strict=True))
            others = [c for k, c in cells.items() if k != value]
            no = None if any(c is None for c in others) else sum(others)
            share = rates.proportion(cells.get(value), no, scale, level, distribution)
            rows.append({**(dict(zip(by, key, strict=True)) if by else {}),
                         value: cells.get(value), **share})
        frame = pl.DataFrame(rows)
        return DPResult(frame, counts.release_id, counts.receipt, counts.epsilon,
                        counts.delta, counts.repeated, counts.query)

    def survival(self, name: str, edges: list[float], *, epsilon: float,
                 by: str | None = None, where: Where = None, level: float = 0.95
                 ) -> DPResult:
        """The survival curve of the ``survival`` variable ``name`` — per time bin of
        ``edges`` (from 0 to at least its horizon), per group of ``by`` — with ``level``
        intervals, and the log-rank test when ``by`` has two groups (``.comparison``): one
        count of patients by group, bin and outcome (charged, receipted), post-processed
        (``sandbox.cohorts.survival``)."""
        from sandbox.client import DPResult
        _check_level(level)
        variable = self.spec["variables"].get(name, {})
        if variable.get("kind") != "survival":
            raise ValueError(f"{name!r} is not a survival variable of this cohort")
        if edges[0] != 0 or edges[-1] < variable["horizon"]:
            raise ValueError(f"edges must run from 0 to the horizon ({variable['horizon']} "
                             "days) or beyond")
        status = f"{name}_event"
        binned = next(n for n in (f"time_bin{i or ''}" for i in range(MAX_VARIABLES + 2))
                      if n not in self.spec["variables"] and n != status)
        spec = json.loads(json.dumps(self.spec))
        spec["variables"][binned] = {"kind": "bands", "of": name, "edges": list(edges)}
        groups = [by] if by else []
        asked = CohortStatistics(self._gateway, spec)
        query = self._query("count", epsilon, where=where, group_by=[*groups, binned, status])
        noise = asked.preview(query)
        scale, distribution = float(noise["scale"][0]), noise["distribution"][0]
        counts = asked.query(query)
        labels = bin_labels(list(edges))
        middle = any(b - a > 1 for a, b in itertools.pairwise(edges))
        rows, curves = [], {}
        for key, cells in counts.df.group_by(groups or [pl.lit(0)], maintain_order=True):
            found = {(r[binned], r[status]): r["count"] for r in cells.iter_rows(named=True)}
            events = [found.get((label, "yes")) for label in labels]
            censored = [found.get((label, "no")) for label in labels]
            curves[key[0] if groups else None] = (events, censored)
            for label, row in zip(labels, survival.kaplan_meier(
                    events, censored, scale, level, middle, distribution), strict=True):
                rows.append({**({by: key[0]} if by else {}), "bin": label, **row})
        comparison = None
        if len(curves) == 2:
            comparison = {"test": "log-rank", "groups": list(curves),
                          **survival.log_rank(*curves.values(), scale=scale,
                                              distribution=distribution)}
        return DPResult(pl.DataFrame(rows), counts.release_id, counts.receipt,
                        counts.epsilon, counts.delta, counts.repeated, counts.query,
                        comparison)

    def logistic(self, outcome: str, predictors: list[str], *, epsilon: float,
                 value: str = "yes", where: Where = None,
                 reference: dict[str, str] | None = None, level: float = 0.95,
                 preview: bool = False) -> DPResult | pl.DataFrame:
        """Logistic regression of ``outcome`` = ``value`` on categorical ``predictors``:
        coefficients, odds ratios, ``level`` intervals (``sandbox.client.models``)."""
        return models.logistic(self, outcome, predictors, epsilon=epsilon, value=value,
                               where=where, reference=reference, level=level,
                               preview=preview)

    def linear(self, target: str, predictors: list[str], *, epsilon: float,
               bounds: tuple[float, float], where: Where = None,
               reference: dict[str, str] | None = None, level: float = 0.95,
               preview: bool = False) -> DPResult | pl.DataFrame:
        """Linear regression of ``target`` (within ``bounds``) on categorical
        ``predictors``: two releases, one result with both receipts."""
        return models.linear(self, target, predictors, epsilon=epsilon, bounds=bounds,
                             where=where, reference=reference, level=level, preview=preview)

    def table(self, rows: str, columns: str, *, epsilon: float, where: Where = None,
              preview: bool = False) -> DPResult | pl.DataFrame:
        """The contingency table of two categorical variables, and the chi-square test of
        independence with the release's noise (``.comparison``)."""
        return models.table(self, rows, columns, epsilon=epsilon, where=where,
                            preview=preview)

    def _categories(self, column: str) -> list[str] | None:
        """The categories of a text column of this cohort, where they are known here: the
        yes/no columns always, others from the dataset's catalogue in the sandbox."""
        variables = self.spec["variables"]
        if variables.get(column, {}).get("kind") == "exists" or (
                column.endswith("_event")
                and variables.get(column[:-6], {}).get("kind") == "survival"):
            return ["no", "yes"]
        if variables.get(column, {}).get("kind") == "bands":
            return bin_labels(variables[column]["edges"])
        root = Path(os.environ.get("SANDBOX_DATASETS_DIR", "/opt/datasets"))
        try:
            metadata = json.loads((root / self.spec["dataset"] / "metadata.json")
                                  .read_text(encoding="utf-8"))
            fields = checks.check(CohortSpec.model_validate(self.spec), metadata)
        except (OSError, ValueError, SandboxError):
            return self._granted_categories(column)
        return fields.get(column, {}).get("categories")

    def _granted_categories(self, column: str) -> list[str] | None:
        """Outside a sandbox (no catalogue on disk): a text variable's categories from the
        gateway's catalogue of the granted fields."""
        variable = self.spec["variables"].get(column, {})
        if variable.get("kind") not in ("first_value", "last_value"):
            return None
        name = checks.qualified(variable["events"]["table"], variable["field"])
        for entry in self._gateway.datasets():
            if entry["id"] == self.spec["dataset"]:
                found = [f for f in entry["fields"] if f["name"] == name]
                return found[0].get("categories") if found else None
        return None

    def preview_count(self, *, epsilon: float, where: Where = None,
                      group_by: list[str] | None = None) -> pl.DataFrame:
        return self.preview(self._query("count", epsilon, where=where, group_by=group_by))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level is a confidence level between 0 and 1 (e.g. 0.95), "
                         f"not {level!r}")
