"""Assigning experts to an application without conflicts of interest: not from the
applicant's institution, not a member of the applicant's team, no declared conflict."""

from __future__ import annotations

from dataclasses import dataclass, field

from approvals.errors import ConflictOfInterest, InvalidDecision, Reason

MIN_EXPERTS = 3


@dataclass(frozen=True)
class Expert:
    id: str
    name: str
    institution: str
    # application ids, applicant ids, names of people or institutions the expert declared
    declared_conflicts: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Case:
    """What conflict checks look at about an application."""

    application_id: str
    applicant_id: str
    institution: str
    team: frozenset[str] = field(default_factory=frozenset)  # person ids and names
    applicant_name: str = ""


def conflict(expert: Expert, case: Case) -> Reason | None:
    """Why ``expert`` may not review ``case`` (in both languages), or None."""
    name = expert.name
    if expert.id == case.applicant_id:
        return Reason("applicant", f"{name}是申请人本人", f"{name} is the applicant")
    if expert.institution.strip() and expert.institution.strip() == case.institution.strip():
        return Reason("institution", f"{name}与申请人同属{case.institution}",
                      f"{name} works at the applicant's institution ({case.institution})")
    if expert.id in case.team or name in case.team:
        return Reason("team", f"{name}是申请团队成员",
                      f"{name} is a member of the applicant's team")
    declared = {case.application_id, case.applicant_id, case.applicant_name,
                case.institution} & expert.declared_conflicts
    if declared - {""}:
        return Reason("declared", f"{name}已声明利益冲突",
                      f"{name} declared a conflict of interest")
    return None


def can_assign(expert: Expert, case: Case) -> bool:
    return conflict(expert, case) is None


def check_can_assign(expert: Expert, case: Case) -> None:
    reason = conflict(expert, case)
    if reason:
        raise ConflictOfInterest(reason.en, zh=reason.zh)


def check_panel(experts: list[Expert], case: Case, minimum: int = MIN_EXPERTS) -> None:
    """A panel is at least ``minimum`` distinct experts, none conflicted."""
    for expert in experts:
        check_can_assign(expert, case)
    if len({e.id for e in experts}) < minimum:
        raise InvalidDecision(f"assign at least {minimum} different experts")
