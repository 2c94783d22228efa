"""Assigning experts to an application without conflicts of interest: not from the
applicant's institution, not a member of the applicant's team, no declared conflict."""

from __future__ import annotations

from dataclasses import dataclass, field

from approvals.errors import ConflictOfInterest, InvalidDecision

MIN_EXPERTS = 3


@dataclass(frozen=True)
class Expert:
    id: str
    name: str
    institution: str
    declared_conflicts: frozenset[str] = field(default_factory=frozenset)  # people or apps


@dataclass(frozen=True)
class Case:
    """What conflict checks look at about an application."""

    application_id: str
    applicant_id: str
    institution: str
    team: frozenset[str] = field(default_factory=frozenset)  # person ids and names


def conflict(expert: Expert, case: Case) -> str | None:
    """The reason ``expert`` may not review ``case``, or None."""
    if expert.id == case.applicant_id:
        return f"{expert.name} is the applicant"
    if expert.institution.strip() == case.institution.strip():
        return f"{expert.name} works at the applicant's institution ({case.institution})"
    if expert.id in case.team or expert.name in case.team:
        return f"{expert.name} is a member of the applicant's team"
    if {case.application_id, case.applicant_id} & expert.declared_conflicts:
        return f"{expert.name} declared a conflict of interest"
    return None


def can_assign(expert: Expert, case: Case) -> bool:
    return conflict(expert, case) is None


def check_can_assign(expert: Expert, case: Case) -> None:
    reason = conflict(expert, case)
    if reason:
        raise ConflictOfInterest(reason)


def check_panel(experts: list[Expert], case: Case, minimum: int = MIN_EXPERTS) -> None:
    """A panel is at least ``minimum`` distinct experts, none conflicted."""
    for expert in experts:
        check_can_assign(expert, case)
    if len({e.id for e in experts}) < minimum:
        raise InvalidDecision(f"assign at least {minimum} different experts")
