"""An active project's life after activation: suspension, resumption, revocation and the
end of its term. Each step moves the project through ``approvals.states``, changes the
grant on the gateway first (so access stops at once), then stops or destroys the sandbox,
and is audited."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import states
from approvals.states import Action, Role, State
from portal import destruction, gateway, sandboxes
from portal.config import PortalSettings
from portal.models import Agreement, Application
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError

# action → (the gateway's verb for the grant, audit action)
CONTROLS = {
    Action.SUSPEND: ("suspend", AuditAction.PROJECT_SUSPENDED),
    Action.RESUME: ("resume", AuditAction.PROJECT_RESUMED),
    Action.REVOKE: ("revoke", AuditAction.PROJECT_REVOKED),
}


def control(db: Session, settings: PortalSettings, application: Application, action: Action,
            role: Role, actor: str, reason: str) -> None:
    """Suspend, resume or revoke a project: grant, state, sandbox, audit."""
    if action not in CONTROLS:
        raise InputError(f"{action} is not a project control")
    target = states.check(State(application.state), action, role)
    if not reason.strip():
        raise InputError("give a reason; it is recorded and shown to the researcher")
    agreement = db.get(Agreement, application.id)
    verb, audited = CONTROLS[action]
    if agreement is not None and agreement.grant_id:
        gateway.change_grant(settings, agreement.grant_id, application.id, verb, reason)
    application.state = target
    audit.append(db.connection(), audited, actor, f"application:{application.id}",
                 {"reason": reason})
    db.commit()
    if action == Action.SUSPEND:
        sandboxes.stop(db, settings, application, actor)
    elif action == Action.REVOKE:
        sandboxes.destroy(db, settings, application, actor)
        destruction.open_task(db, settings, application, actor)


def end_terms(db: Session, settings: PortalSettings, now: datetime | None = None
              ) -> list[int]:
    """Close every active or suspended project whose term has passed: it moves to
    closing, and its sandbox is stopped and destroyed (the hub reports the destruction)."""
    now = now or datetime.now(UTC)
    running = (State.ACTIVE, State.SUSPENDED)
    due = [a for a in db.scalars(select(Application).join(Agreement)
                                 .where(Application.state.in_(running))).all()
           if sandboxes.aware(db.get(Agreement, a.id).expires_at) <= now]
    for application in due:
        application.state = states.check(State(application.state), Action.BEGIN_CLOSING,
                                         Role.SYSTEM)
        audit.append(db.connection(), AuditAction.TERM_ENDED, "system:term-end",
                     f"application:{application.id}", {})
        db.commit()
        sandboxes.destroy(db, settings, application, "system:term-end")
        destruction.open_task(db, settings, application, "system:term-end", now)
    return [a.id for a in due]
