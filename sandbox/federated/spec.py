"""A federated question (``FederatedSpec``) and its one spelling.

One question has one fingerprint, hence one query id and one noise draw at each site:
filters are a set of canonical filters (order, repeats, 5000.0 for 5000, an ``in`` list's
order and repeats), -0.0 is 0.0, a regression's features come in name order, and the
gateway writes in the public bounds a question leaves out (``resolved``); sites refuse a
question that is not resolved. Questions that select the same rows in other words remain
other questions, charged as such.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox import units
from sandbox.queries.spec import MAX_BINS, MAX_FILTERS, Filter

MAX_FEATURES = 20
Kind = Literal["histogram", "mean", "linear_regression"]


class FederatedSpec(BaseModel):
    """One question about a federated dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, max_length=64)
    kind: Kind
    field: str | None = None
    bins: list[float] | None = None
    bounds: tuple[float, float] | None = None
    target: str | None = None
    features: list[str] = Field(default_factory=list, max_length=MAX_FEATURES)
    feature_bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    filters: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS)
    epsilon: float = Field(gt=0, le=10)
    delta: float = Field(default=0.0, ge=0, le=0)  # pure ε-DP (Laplace)

    _on_grid_epsilon = field_validator("epsilon")(units.on_grid_epsilon)

    @field_validator("filters")
    @classmethod
    def _filters(cls, filters: list[Filter]) -> list[Filter]:
        # A conjunction: its order and repeats say nothing, nor do 5000.0 for 5000 or the
        # order and repeats of an 'in' list (one value: 'eq'), so one set of filters is one
        # spelling (and one fingerprint).
        spelled = {json.dumps(f.model_dump(mode="json"), sort_keys=True): f
                   for f in map(_canonical_filter, filters)}
        return [spelled[key] for key in sorted(spelled)]

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None:
            _check_bounds(bounds)
            return _zero(bounds[0]), _zero(bounds[1])
        return bounds

    @field_validator("feature_bounds")
    @classmethod
    def _feature_bounds(cls, bounds: dict[str, tuple[float, float]]
                        ) -> dict[str, tuple[float, float]]:
        for pair in bounds.values():
            _check_bounds(pair)
        return {name: (_zero(low), _zero(high)) for name, (low, high) in bounds.items()}

    @field_validator("bins")
    @classmethod
    def _bins(cls, bins: list[float] | None) -> list[float] | None:
        return None if bins is None else [_zero(b) for b in bins]

    @field_validator("delta")
    @classmethod
    def _delta(cls, delta: float) -> float:
        return _zero(delta)

    @field_validator("features")
    @classmethod
    def _features(cls, features: list[str]) -> list[str]:
        # one regression whatever the order its features are named in (the answer names
        # each coefficient); repeats are refused below
        return sorted(features)

    @model_validator(mode="after")
    def _shape(self) -> FederatedSpec:
        if self.kind in ("histogram", "mean") and not self.field:
            raise ValueError(f"a {self.kind} needs a field")
        if self.kind == "histogram":
            if not self.bins or len(self.bins) < 2 or len(self.bins) - 1 > MAX_BINS:
                raise ValueError(f"a histogram needs 2 to {MAX_BINS + 1} bin edges")
            if not all(map(math.isfinite, self.bins)) or any(
                    b <= a for a, b in itertools.pairwise(self.bins)):
                raise ValueError("bin edges must be finite and increasing")
            if self.bounds is not None:
                raise ValueError("a histogram takes bins, not bounds")
        elif self.bins is not None:
            raise ValueError("bins only go with a histogram")
        if self.kind == "linear_regression":
            if not self.target or not self.features or self.field:
                raise ValueError("a linear regression takes a target and features, "
                                 "not a field")
            if self.target in self.features or len(set(self.features)) != len(self.features):
                raise ValueError("features must be distinct and differ from the target")
        elif self.target or self.features or self.feature_bounds:
            raise ValueError("target, features and feature_bounds go with a linear "
                             "regression")
        unknown = set(self.feature_bounds) - set(self.features)
        if unknown:
            raise ValueError(f"feature_bounds name fields that are not features: "
                             f"{sorted(unknown)}")
        return self

    def canonical(self) -> str:
        return json.dumps({"federated": True, **self.model_dump(mode="json")},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def fields_used(self) -> list[str]:
        used = [f.field for f in self.filters]
        used += [self.field] if self.field else []
        used += [self.target, *self.features] if self.target else []
        return list(dict.fromkeys(used))


def _zero(x: float) -> float:
    """``x``, with -0.0 written 0.0 (one number, one spelling)."""
    return x + 0.0


def _canonical_filter(flt: Filter) -> Filter:
    def number(v: object) -> object:
        whole = isinstance(v, float) and v.is_integer() and abs(v) < 2**63
        return int(v) if whole else v

    if flt.op == "in":
        values = {json.dumps(number(v)): number(v) for v in flt.value}
        ordered = [values[key] for key in sorted(values)]
        if len(ordered) == 1:
            return Filter(field=flt.field, op="eq", value=ordered[0])
        return Filter(field=flt.field, op="in", value=ordered)
    if isinstance(flt.value, list):
        return Filter(field=flt.field, op=flt.op, value=[number(v) for v in flt.value])
    return Filter(field=flt.field, op=flt.op, value=number(flt.value))


def _check_bounds(bounds: tuple[float, float]) -> None:
    if not all(map(math.isfinite, bounds)) or bounds[0] >= bounds[1]:
        raise ValueError("bounds must be two finite numbers, low < high")




def resolved(spec: FederatedSpec, metadata: dict) -> FederatedSpec:
    """``spec`` with the public bounds it left out written in, so that one question has one
    spelling, and so one query id (the gateway resolves what it is asked; the sites refuse
    a question that is not resolved). Unknown fields are left for ``make_plan`` to refuse."""
    fields = {f["name"]: f for f in metadata["tables"]["records"]["fields"]}

    def public(name: str | None) -> tuple[float, float] | None:
        f = fields.get(name or "")
        if f is None or f.get("type") not in ("integer", "float") or not f.get("bounds"):
            return None
        return float(f["bounds"][0]), float(f["bounds"][1])

    changes: dict = {}
    if spec.kind in ("mean", "linear_regression") and spec.bounds is None:
        changes["bounds"] = public(spec.field if spec.kind == "mean" else spec.target)
    if spec.kind == "linear_regression":
        given = {name: (float(low), float(high))
                 for name, (low, high) in spec.feature_bounds.items()}
        changes["feature_bounds"] = given | {
            name: bounds for name in spec.features
            if name not in given and (bounds := public(name)) is not None}
    if spec.bounds is not None:
        changes.setdefault("bounds", (float(spec.bounds[0]), float(spec.bounds[1])))
    return spec.model_copy(update=changes) if changes else spec
