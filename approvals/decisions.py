"""The chair's decision: approve (possibly removing fields and setting ε, δ and term),
request a revision, or reject — with reasons, and only once the quorum has scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from approvals.errors import InvalidDecision
from approvals.scoring import Summary
from approvals.states import Action
from sandbox.limits import MAX_EPSILON

MAX_TERM_MONTHS = 60


class Verdict(StrEnum):
    APPROVE = "approve"
    REVISE = "revise"
    REJECT = "reject"


ACTION = {Verdict.APPROVE: Action.APPROVE, Verdict.REVISE: Action.REQUEST_REVISION,
          Verdict.REJECT: Action.REJECT}


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: str
    removed_fields: frozenset[str] = field(default_factory=frozenset)
    epsilon: float | None = None
    delta: float = 0.0
    term_months: int | None = None


@dataclass(frozen=True)
class Terms:
    """What an approval grants."""

    fields: tuple[str, ...]
    epsilon: float
    delta: float
    term_months: int


def check_decision(decision: Decision, requested_fields: list[str], summary: Summary
                   ) -> Terms | None:
    """Validate a decision; for an approval, the terms it grants."""
    if not summary.quorum_met:
        raise InvalidDecision("the experts' quorum has not scored this application yet")
    if not decision.reasons.strip():
        raise InvalidDecision("give the reasons for the decision")
    if decision.verdict != Verdict.APPROVE:
        return None
    unknown = sorted(decision.removed_fields - set(requested_fields))
    if unknown:
        raise InvalidDecision(f"cannot remove fields that were not requested: {unknown}")
    kept = tuple(f for f in requested_fields if f not in decision.removed_fields)
    if not kept:
        raise InvalidDecision("an approval must leave at least one field")
    if decision.epsilon is None or not 0 < decision.epsilon <= MAX_EPSILON:
        raise InvalidDecision(f"set ε between 0 and {MAX_EPSILON:g}")
    if not 0 <= decision.delta < 1e-3:
        raise InvalidDecision("δ must be at least 0 and below 0.001")
    if decision.term_months is None or not 1 <= decision.term_months <= MAX_TERM_MONTHS:
        raise InvalidDecision(f"set a term of 1 to {MAX_TERM_MONTHS} months")
    return Terms(kept, decision.epsilon, decision.delta, decision.term_months)
