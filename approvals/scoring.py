"""The guide's five approval dimensions, scored 1–5 by each expert, and how the scores
become one recommendation. Weights, quorum and the aggregation rule are configuration the
chair sees; leakage risk counts against an application (a 5 for risk scores as a 1)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from approvals.errors import InvalidDecision


class Dimension(StrEnum):
    LEGALITY = "legality"
    CONSISTENCY = "consistency"
    VALUE = "value"
    LEAKAGE_RISK = "leakage_risk"
    COST = "cost"


LABELS: dict[Dimension, tuple[str, str, str]] = {
    Dimension.LEGALITY: ("合法性、正当性", "legality and legitimacy",
                         "complies with laws and regulations"),
    Dimension.CONSISTENCY: ("数据申请与数据需求一致性", "consistency of request and need",
                            "will the requested data be used; minimum necessity"),
    Dimension.VALUE: ("数据使用价值", "value of use",
                      "value of the data and of its application"),
    Dimension.LEAKAGE_RISK: ("数据泄露风险", "leakage risk",
                             "people affected, diseases involved, harm to patients "
                             "(higher risk lowers the total)"),
    Dimension.COST: ("提供数据成本", "cost of provision",
                     "labour and resources to extract, clean, de-identify, deliver"),
}
INVERTED = frozenset({Dimension.LEAKAGE_RISK})


@dataclass(frozen=True)
class RubricConfig:
    weights: dict[Dimension, float] = field(default_factory=lambda: {
        Dimension.LEGALITY: 0.25, Dimension.CONSISTENCY: 0.25, Dimension.VALUE: 0.2,
        Dimension.LEAKAGE_RISK: 0.2, Dimension.COST: 0.1})
    quorum: int = 3
    aggregation: str = "mean"  # or "median"
    pass_mark: float = 3.0  # a weighted total (1–5) at or above it recommends approval
    veto_below: int = 2  # any legality score below it recommends rejection

    def __post_init__(self) -> None:
        if set(self.weights) != set(Dimension) or any(w < 0 for w in self.weights.values()):
            raise InvalidDecision("weights must give every dimension a non-negative weight")
        if sum(self.weights.values()) <= 0:
            raise InvalidDecision("weights must not all be zero")
        if self.aggregation not in ("mean", "median"):
            raise InvalidDecision("aggregation is 'mean' or 'median'")


@dataclass(frozen=True)
class Score:
    expert_id: str
    values: dict[Dimension, int]
    comments: str = ""
    remove_fields: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        missing = set(Dimension) - set(self.values)
        if missing:
            raise InvalidDecision(f"score every dimension; missing: "
                                  f"{', '.join(sorted(missing))}")
        bad = {d: v for d, v in self.values.items() if not (isinstance(v, int) and 1 <= v <= 5)}
        if bad:
            raise InvalidDecision(f"scores are whole numbers from 1 to 5: {bad}")


def weighted_total(score: Score, config: RubricConfig) -> float:
    """1 (worst) to 5 (best), leakage risk inverted."""
    total = sum(config.weights[d] * (6 - v if d in INVERTED else v)
                for d, v in score.values.items())
    return round(total / sum(config.weights.values()), 3)


@dataclass(frozen=True)
class Summary:
    """What the chair sees: every expert side by side, and the aggregate."""

    per_expert: dict[str, float]
    per_dimension: dict[Dimension, float]
    overall: float | None
    quorum_met: bool
    recommendation: str  # approve | reject | pending
    field_removals: dict[str, int]


def summarise(scores: list[Score], config: RubricConfig) -> Summary:
    aggregate = statistics.mean if config.aggregation == "mean" else statistics.median
    per_expert = {s.expert_id: weighted_total(s, config) for s in scores}
    per_dimension = {d: round(aggregate([s.values[d] for s in scores]), 3)
                     for d in Dimension} if scores else {}
    quorum = len(per_expert) >= config.quorum
    overall = round(aggregate(list(per_expert.values())), 3) if scores else None
    if not quorum or overall is None:
        recommendation = "pending"
    elif any(s.values[Dimension.LEGALITY] < config.veto_below for s in scores):
        recommendation = "reject"
    else:
        recommendation = "approve" if overall >= config.pass_mark else "reject"
    removals = Counter(f for s in scores for f in s.remove_fields)
    return Summary(per_expert, per_dimension, overall, quorum, recommendation,
                   dict(removals.most_common()))
