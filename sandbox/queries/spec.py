"""Query specs: the only thing a researcher can send. Plain JSON validated here — never SQL
or code — then checked against the dataset's public metadata and the project's grant
before any budget is spent."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox import units

MAX_BINS = 100
MAX_CELLS = 10_000
MAX_QUANTILES = 9
MAX_FILTERS = 20
MAX_IN_VALUES = 100
# A grouped count's cell whose noisy count is below this is withheld (the guide's minimum
# count): post-processing in the gateway, mirrored by the client's tests of released tables.
SMALL_CELL = 5
QUANTILE_CANDIDATES = 100
INT64 = (-(2**63), 2**63 - 1)

Scalar = str | int | float | bool


class Filter(BaseModel):
    """A row filter on an allowed field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Literal["eq", "ne", "in", "lt", "le", "gt", "ge", "between"]
    value: Scalar | list[Scalar]

    @model_validator(mode="after")
    def _shape(self) -> Filter:
        values = self.value if isinstance(self.value, list) else [self.value]
        if any(isinstance(v, int) and not INT64[0] <= v <= INT64[1] for v in values):
            # Columns hold 64-bit integers at most: a literal beyond them cannot be compared
            # by the engines (and would fail inside OpenDP), so it is refused here.
            raise ValueError(f"integer values must lie within 64 bits "
                             f"({INT64[0]} to {INT64[1]})")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            # 1e400 is valid JSON for infinity: no column holds it, and the engines fail on it
            raise ValueError("numbers must be finite")
        if self.op == "in":
            if not isinstance(self.value, list) or not 1 <= len(self.value) <= MAX_IN_VALUES:
                raise ValueError(f"'in' takes a list of 1 to {MAX_IN_VALUES} values")
        elif self.op == "between":
            if not isinstance(self.value, list) or len(self.value) != 2:
                raise ValueError("'between' takes [low, high]")
            low, high = self.value
            if not all(_number(v) for v in self.value) or low > high:
                raise ValueError("'between' takes two numbers, low ≤ high")
        elif isinstance(self.value, list):
            raise ValueError(f"'{self.op}' takes a single value")
        elif self.op in ("lt", "le", "gt", "ge") and not _number(self.value):
            raise ValueError(f"'{self.op}' takes a number")
        return self


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class QuerySpec(BaseModel):
    """One differentially private question about one dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00]*$")
    kind: Literal["count", "sum", "mean", "quantiles", "histogram"]
    field: str | None = None
    bounds: tuple[float, float] | None = None
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] | None = None
    bins: list[float] | None = None
    group_by: list[str] = Field(default_factory=list, max_length=4)
    keys: Literal["public", "private"] = "public"
    filters: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS)
    epsilon: float = Field(gt=0, le=10)
    delta: float = Field(default=0.0, ge=0, lt=1e-3)
    # Laplace noise, accounted in pure ε; or Gaussian noise, accounted in zero-concentrated
    # DP and converted by OpenDP to the (ε, δ) charged (docs/adr/0017)
    noise: Literal["laplace", "gaussian"] = "laplace"

    _on_grid_epsilon = field_validator("epsilon")(units.on_grid_epsilon)
    _on_grid_delta = field_validator("delta")(units.on_grid_delta)

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and (not all(map(math.isfinite, bounds))
                                   or bounds[0] >= bounds[1]):
            raise ValueError("bounds must be two finite numbers, low < high")
        return bounds

    @model_validator(mode="after")
    def _shape(self) -> QuerySpec:
        numeric = ("sum", "mean", "quantiles", "histogram")
        if self.kind in numeric and not self.field:
            raise ValueError(f"a {self.kind} query needs a field")
        if self.kind == "count" and self.field:
            raise ValueError("a count query takes no field")
        if self.kind == "quantiles":
            if not self.quantiles or len(self.quantiles) > MAX_QUANTILES:
                raise ValueError(f"give 1 to {MAX_QUANTILES} quantiles, e.g. [0.5]")
            if self.group_by:
                raise ValueError("quantiles cannot be grouped")
        elif self.quantiles is not None:
            raise ValueError("quantiles only go with kind 'quantiles'")
        if self.kind == "histogram":
            if not self.bins or len(self.bins) < 2:
                raise ValueError("a histogram needs bin edges, at least two")
            if len(self.bins) - 1 > MAX_BINS:
                raise ValueError(f"too many bins: at most {MAX_BINS}")
            if any(b >= a for a, b in zip(self.bins[1:], self.bins, strict=False)) or \
                    not all(map(math.isfinite, self.bins)):
                raise ValueError("bin edges must be finite and increasing")
            if self.group_by:
                raise ValueError("a histogram cannot also be grouped")
        elif self.bins is not None:
            raise ValueError("bins only go with kind 'histogram'")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names a field twice")
        if self.keys == "private" and not self.group_by:
            raise ValueError("keys 'private' only applies to grouped queries")
        if self.keys == "private" and self.delta <= 0:
            raise ValueError("releasing private group keys needs delta > 0")
        if self.noise == "gaussian":
            if self.delta <= 0:
                raise ValueError("Gaussian noise needs delta > 0: its loss is converted "
                                 "to (epsilon, delta), e.g. delta 1e-7")
            if self.keys == "private":
                raise ValueError("private group keys are released with Laplace noise only")
        return self

    def fingerprint(self) -> str:
        """SHA-256 of the canonical spec: identical questions have identical prints."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def canonical(self) -> str:
        return json.dumps(self._dump(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    def _dump(self) -> dict:
        """The spec as JSON data; Laplace noise, the default, is left unsaid, so a question
        has the print it had before the choice of noise existed."""
        data = self.model_dump(mode="json")
        if data["noise"] == "laplace":
            del data["noise"]
        return data

    def shape(self) -> str:
        """The spec without filter values: queries of one shape share a noise scale."""
        data = self._dump()
        data["filters"] = [[f["field"], f["op"], len(f["value"]) if isinstance(f["value"], list)
                            else 1] for f in data["filters"]]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def fields_used(self) -> list[str]:
        used = [*self.group_by, *(f.field for f in self.filters)]
        if self.field:
            used.append(self.field)
        return list(dict.fromkeys(used))
