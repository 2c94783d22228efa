"""Assigning experts to an application without conflicts of interest: not from the
applicant's institution, not a member of the applicant's team, no declared conflict.

Institutions are registry ids (``approvals.institutions``), never typed text, so a second
spelling of the applicant's institution cannot pass for another one; a person whose
institution is not confirmed yet cannot be cleared at all. Names (team members, declared
people) compare by their folded key. The same check runs at assignment, at scoring and at
decision time: institutions and declarations change, and a conflict that arose after the
panel was formed counts as much as one that existed before.

A person picks their institution on their own profile, so the check looks back: an
institution the expert or the applicant has held since the application's look-back date
(its submission, less the configured look-back) conflicts as much as the one held now —
an expert cannot step out of the applicant's institution by picking another entry, before
or after being assigned, nor the applicant out of an expert's. The chair who decides is
held to the same rule, except that a chair with no institution on record is not refused for
it (chairs are appointed by an admin and do not choose their institution).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from approvals.errors import ConflictOfInterest, InvalidDecision, Reason
from approvals.institutions import key

MIN_EXPERTS = 3


@dataclass(frozen=True)
class Expert:
    id: str
    name: str
    institution: int | None  # registry id; None while unconfirmed
    # application ids, applicant ids, names of people the expert declared
    declared_conflicts: frozenset[str] = field(default_factory=frozenset)
    # registry ids of institutions the expert declared a conflict with
    declared_institutions: frozenset[int] = field(default_factory=frozenset)
    # registry ids the expert held since the case's look-back date (at assignment included)
    former: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Case:
    """What conflict checks look at about an application."""

    application_id: str
    applicant_id: str
    institution: int | None  # registry id; None while unconfirmed
    team: frozenset[str] = field(default_factory=frozenset)  # person ids and names
    applicant_name: str = ""
    institution_names: tuple[str, str] = ("", "")  # (zh, en), for reasons only
    # registry ids the applicant held since the look-back date (at submission included)
    former: frozenset[int] = field(default_factory=frozenset)
    since: str = ""  # the look-back date, for reasons
    names: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # id → (zh, en)


def _held(institution: int | None, former: frozenset[int]) -> frozenset[int]:
    return former | ({institution} if institution is not None else frozenset())


def conflict(expert: Expert, case: Case) -> Reason | None:
    """Why ``expert`` may not review ``case`` (in both languages), or None."""
    return _conflict(expert, case, institution_required=True)


def chair_conflict(chair: Expert, case: Case) -> Reason | None:
    """Why ``chair`` may not decide ``case``: the experts' rule, but a chair with no
    institution on record is checked for the rest only."""
    return _conflict(chair, case, institution_required=False)


def _conflict(expert: Expert, case: Case, institution_required: bool) -> Reason | None:
    name = expert.name
    zh_inst, en_inst = case.institution_names
    if expert.id == case.applicant_id:
        return Reason("applicant", f"{name}是申请人本人", f"{name} is the applicant")
    if case.institution is None:
        return Reason("applicant_unconfirmed", "申请人的单位尚待主任委员确认",
                      "the applicant's institution awaits a chair's confirmation")
    if expert.institution is None and institution_required:
        return Reason("expert_unconfirmed", f"{name}的单位尚待确认",
                      f"{name}'s institution awaits confirmation")
    if expert.institution is not None and expert.institution == case.institution:
        return Reason("institution", f"{name}与申请人同属{zh_inst}",
                      f"{name} works at the applicant's institution ({en_inst})")
    shared = _held(expert.institution, expert.former) & _held(case.institution, case.former)
    if shared:
        zh, en = case.names.get(min(shared), ("", ""))
        return Reason("former_institution", f"{name}与申请人自 {case.since} 以来都曾隶属{zh}",
                      f"{name} and the applicant have both belonged to {en} since "
                      f"{case.since}")
    team = {key(member) for member in case.team}
    if key(expert.id) in team or key(name) in team:
        return Reason("team", f"{name}是申请团队成员",
                      f"{name} is a member of the applicant's team")
    declared = {key(d) for d in expert.declared_conflicts}
    about = {key(case.application_id), key(case.applicant_id), key(case.applicant_name)}
    if (declared & about) - {""} or case.institution in expert.declared_institutions:
        return Reason("declared", f"{name}已声明利益冲突",
                      f"{name} declared a conflict of interest")
    return None


def can_assign(expert: Expert, case: Case) -> bool:
    return conflict(expert, case) is None


def check_can_assign(expert: Expert, case: Case) -> None:
    reason = conflict(expert, case)
    if reason:
        raise ConflictOfInterest(reason.en, zh=reason.zh, conflict=reason.code)


def check_panel(experts: list[Expert], case: Case, minimum: int = MIN_EXPERTS) -> None:
    """A panel is at least ``minimum`` distinct experts, none conflicted."""
    for expert in experts:
        check_can_assign(expert, case)
    if len({e.id for e in experts}) < minimum:
        raise InvalidDecision(f"assign at least {minimum} different experts",
                              zh=f"请至少分配 {minimum} 位不同的专家")


def conflicted(experts: Iterable[Expert], case: Case) -> dict[str, Reason]:
    """The experts (by id) who may not review ``case`` now, with why — for a panel's scores
    re-checked when the chair decides."""
    found = {e.id: conflict(e, case) for e in experts}
    return {expert_id: reason for expert_id, reason in found.items() if reason is not None}
