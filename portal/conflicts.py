"""What conflict-of-interest checks look at, read from the portal's records: an application
as a case (the applicant's institution now, at submission, and every one left since the
look-back date), and an expert or chair (their institution now, at assignment, and every one
left since that date), plus the institution changes the chair's page shows. The rules are
``approvals.assignment``'s (docs/adr/0008).

A person's institution is their own pick on their profile, effective at once; so what a
person held while an application was open is kept (``FormerInstitution``), and a conflict
with any of it counts — picking another entry clears nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import assignment
from approvals.errors import Reason
from portal import institutions
from portal.config import PortalSettings
from portal.models import Application, Assignment, FormerInstitution, Institution, User


def since(settings: PortalSettings, application: Application) -> datetime:
    """The look-back date: the first submission (creation while a draft), less the
    configured look-back."""
    start = application.submitted_at or application.created_at or datetime.now(UTC)
    return start - timedelta(days=settings.conflict_lookback_days)


def _left(db: Session, user_id: int, moment: datetime) -> list[FormerInstitution]:
    return list(db.scalars(select(FormerInstitution).where(
        FormerInstitution.user_id == user_id, FormerInstitution.left_at >= moment)
        .order_by(FormerInstitution.left_at, FormerInstitution.id)))


def _assignment(db: Session, application: Application, user: User) -> Assignment | None:
    return db.scalar(select(Assignment).where(Assignment.application_id == application.id,
                                              Assignment.expert_id == user.id))


def case_of(db: Session, settings: PortalSettings,
            application: Application) -> assignment.Case:
    """``application`` as conflict checks see it: its applicant's institution now, at
    submission, and every one left since the look-back date."""
    researcher = application.researcher
    profile = researcher.profile
    moment = since(settings, application)
    former = {row.institution_id for row in _left(db, researcher.id, moment)}
    if application.submitted_institution_id is not None:
        former.add(application.submitted_institution_id)
    current = profile.institution_id if profile else None
    ids = former | ({current} if current is not None else set())
    names = {row.id: (row.name_zh, row.name_en) for row in db.scalars(
        select(Institution).where(Institution.id.in_(ids)))} if ids else {}
    return assignment.Case(str(application.id), str(researcher.id), current,
                           frozenset(application.team), researcher.name,
                           institutions.names(profile), frozenset(former),
                           moment.date().isoformat(), names)


def expert_of(db: Session, settings: PortalSettings, user: User,
              application: Application) -> assignment.Expert:
    """``user`` as conflict checks see them for ``application``: their institution now, at
    assignment, and every one left since the look-back date; declared lines that spell a
    registry entry count as a declared conflict with that institution."""
    profile = user.profile
    declared = [str(line) for line in (profile.declared_conflicts or [])] if profile else []
    named = {found.id for found in (institutions.resolve(db, line) for line in declared)
             if found is not None}
    former = {row.institution_id for row in _left(db, user.id, since(settings, application))}
    assigned = _assignment(db, application, user)
    if assigned is not None and assigned.institution_id is not None:
        former.add(assigned.institution_id)
    return assignment.Expert(str(user.id), user.name,
                             profile.institution_id if profile else None,
                             frozenset(declared), frozenset(named), frozenset(former))


def conflict(db: Session, settings: PortalSettings, user: User,
             application: Application) -> Reason | None:
    """Why expert ``user`` may not review ``application`` now, or None."""
    return assignment.conflict(expert_of(db, settings, user, application),
                               case_of(db, settings, application))


def chair_conflict(db: Session, settings: PortalSettings, chair: User,
                   application: Application) -> Reason | None:
    """Why ``chair`` may not decide ``application``, or None."""
    return assignment.chair_conflict(expert_of(db, settings, chair, application),
                                     case_of(db, settings, application))


@dataclass(frozen=True)
class Change:
    """A person whose institution changed while the application was open: the institutions
    they named in turn, from submission (the applicant) or assignment (an expert) to now."""

    person: User
    role: str  # "applicant" | "expert"
    path: list[str]  # labels, oldest first


def _path(db: Session, user: User, start: int | None, moment: datetime) -> list[str]:
    """Labels of the institutions ``user`` named from ``moment`` on, ``start`` first."""
    ids: list[int | None] = [row.institution_id for row in _left(db, user.id, moment)]
    if start is not None and (not ids or ids[0] != start):
        ids.insert(0, start)
    profile = user.profile
    ids.append(profile.institution_id if profile else None)
    path: list[int | None] = [i for n, i in enumerate(ids) if n == 0 or ids[n - 1] != i]
    return [db.get(Institution, i).label if i is not None else
            (institutions.label(profile) or "—") for i in path]


def changes(db: Session, application: Application) -> list[Change]:
    """The applicant's and each assigned expert's institution changes since submission or
    assignment (none when they named one institution throughout)."""
    out = []
    if application.submitted_at is not None:
        path = _path(db, application.researcher, application.submitted_institution_id,
                     application.submitted_at)
        if len(path) > 1:
            out.append(Change(application.researcher, "applicant", path))
    for row in db.scalars(select(Assignment).where(
            Assignment.application_id == application.id).order_by(Assignment.id)):
        path = _path(db, row.expert, row.institution_id, row.assigned_at)
        if len(path) > 1:
            out.append(Change(row.expert, "expert", path))
    return out
