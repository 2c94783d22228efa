"""The blacklist: a researcher who broke the rules (an overdue destruction certificate, a
breach of the agreement) is blacklisted by a controller. They then fail eligibility for
new applications, and every active project of theirs is suspended — on the gateway first,
so their tokens stop working at once — with its sandbox stopped."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals.states import Action, Role, State
from portal import projects
from portal.config import PortalSettings
from portal.models import Application, Profile, User
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError


def confirm(db: Session, settings: PortalSettings, researcher: User, actor: str,
            reason: str) -> list[int]:
    """Blacklist ``researcher`` and suspend their active projects; returns those projects."""
    if researcher.role != Role.RESEARCHER:
        raise InputError("only researchers are blacklisted")
    if not reason.strip():
        raise InputError("give the reason; it is recorded and shown to the researcher")
    profile = researcher.profile or Profile(user_id=researcher.id)
    profile.blacklisted = True
    db.add(profile)
    audit.append(db.connection(), AuditAction.RESEARCHER_BLACKLISTED, actor,
                 f"user:{researcher.id}", {"reason": reason})
    db.commit()
    active = list(db.scalars(select(Application).where(
        Application.researcher_id == researcher.id, Application.state == State.ACTIVE)))
    for application in active:
        projects.control(db, settings, application, Action.SUSPEND, Role.CONTROLLER, actor,
                         f"blacklisted: {reason}")
    return [a.id for a in active]


def lift(db: Session, researcher: User, actor: str, reason: str) -> None:
    """Take ``researcher`` off the blacklist; suspended projects stay suspended until a
    controller resumes each one."""
    if researcher.profile is None or not researcher.profile.blacklisted:
        raise InputError("this researcher is not blacklisted")
    researcher.profile.blacklisted = False
    audit.append(db.connection(), AuditAction.RESEARCHER_UNLISTED, actor,
                 f"user:{researcher.id}", {"reason": reason})
    db.commit()
