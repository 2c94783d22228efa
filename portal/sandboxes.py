"""A project's Jupyter sandbox, from the portal's side: provisioning on activation, the
grant lookup the hub's spawner makes before it starts anything, status for the researcher,
and term end (stop, destroy, record).

The portal decides who may run what: the hub asks ``grant_for`` at every start, and only
the applicant of an active project within its term gets an answer — the project's gateway
token, which the portal keeps encrypted and the hub never stores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals.states import State
from portal import gateway, tokens
from portal.config import PortalSettings
from portal.models import Agreement, Application, DestructionRecord, Sandbox, User
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, InputError, SandboxError, Unavailable
from sandbox.hub.client import HubClient
from sandbox.hub.names import project_of, server_name
from sandbox.hub.settings import shared_secret

HUB_USER = re.compile(r"^user-(\d{1,12})$")


class Status(StrEnum):
    REQUESTED = "requested"   # the hub was asked to start it
    FAILED = "failed"         # the hub could not be asked; the researcher may retry
    STOPPED = "stopped"       # stopped (idle, suspension); the workspace is kept
    DESTROYED = "destroyed"   # term ended: container, workspace and network removed


def hub_username(user: User) -> str:
    return f"user-{user.id}"


def enabled(settings: PortalSettings) -> bool:
    return bool(settings.hub_url)


def hub(settings: PortalSettings, timeout: float = 30) -> HubClient:
    return HubClient(settings.hub_url, shared_secret(settings.secrets_dir, "hub-api.token"),
                     timeout=timeout)


def service_token(settings: PortalSettings) -> str:
    """The token the hub's spawner presents when it asks for a grant."""
    return shared_secret(settings.secrets_dir, "portal-service.token")


def _audit(db: Session, action: AuditAction, actor: str, application_id: int | None,
           details: dict) -> None:
    audit.append(db.connection(), action, actor, f"application:{application_id}", details)


# -- provisioning ---------------------------------------------------------------------

def provision(db: Session, settings: PortalSettings, application: Application,
              actor: str) -> Sandbox:
    """Ask the hub to create the researcher's account and start the project's sandbox.
    A hub that does not answer leaves the sandbox ``failed`` with the reason, never the
    project inactive; the researcher can start it again from the project page."""
    if State(application.state) != State.ACTIVE:
        raise Forbidden("only an active project has a sandbox")
    user, server = hub_username(application.researcher), server_name(application.id)
    record = db.get(Sandbox, application.id) or Sandbox(
        application_id=application.id, hub_user=user, server=server)
    if record.status == Status.DESTROYED:
        raise Forbidden("this project's sandbox was destroyed at the end of its term")
    db.commit()  # no transaction (nor SQLite lock) open while the hub calls back
    try:
        client = hub(settings)
        try:
            client.ensure_user(user)
            client.start(user, server, {"project": application.id})
        finally:
            client.close()
        record.status, record.detail = Status.REQUESTED, ""
    except SandboxError as exc:
        record.status, record.detail = Status.FAILED, exc.reason
    record.updated_at = datetime.now(UTC)
    db.add(record)
    _audit(db, AuditAction.SANDBOX_REQUESTED, actor, application.id,
           {"hub_user": user, "server": server, "status": str(record.status),
            "detail": record.detail})
    db.commit()
    return record


@dataclass(frozen=True)
class View:
    """What the researcher sees of the sandbox."""

    status: str        # requested → starting/ready/stopped live; or failed/destroyed
    url: str = ""
    detail: str = ""


def view(db: Session, settings: PortalSettings, application: Application) -> View | None:
    record = db.get(Sandbox, application.id)
    if record is None or not enabled(settings):
        return None
    if record.status in (Status.FAILED, Status.DESTROYED):
        return View(record.status, detail=record.detail)
    db.commit()
    client = hub(settings, timeout=5)  # a page render never waits long on the hub
    try:
        live = client.status(record.hub_user, record.server)
    except Unavailable as exc:
        return View("unknown", detail=exc.reason)
    finally:
        client.close()
    if live.ready:
        return View("ready", live.url)
    if live.pending:
        return View("starting")
    return View(Status.STOPPED)


# -- what the hub asks ------------------------------------------------------------------

def grant_for(db: Session, settings: PortalSettings, hub_user: str, project: int,
              network: str | None = None) -> dict:
    """The project's gateway token for its applicant, if the project is active and within
    its term; otherwise ``Forbidden`` with the reason. Both outcomes are audited. With
    ``network`` (the sandbox's subnet), the gateway is first told to accept the token from
    that network only."""
    try:
        application = _checked(db, hub_user, project)
        agreement = db.get(Agreement, application.id)
        token = tokens.unseal(settings, agreement.grant_token)
        db.commit()  # no lock held while the gateway is called
        if network:
            gateway.bind_networks(settings, agreement.grant_id, [network])
    except Forbidden as exc:
        _audit(db, AuditAction.SANDBOX_REFUSED, "service:hub", project,
               {"hub_user": hub_user, "reason": exc.reason})
        db.commit()
        raise
    _audit(db, AuditAction.SANDBOX_GRANTED, "service:hub", project,
           {"hub_user": hub_user, "network": network})
    db.commit()
    return {"project": application.id, "token": token,
            "datasets": sorted({f.dataset for f in application.fields}),
            "expires_at": agreement.expires_at.isoformat()}


def _checked(db: Session, hub_user: str, project: int) -> Application:
    match = HUB_USER.match(hub_user)
    application = db.get(Application, project)
    if match is None or application is None or application.researcher_id != int(match[1]):
        raise Forbidden("this sandbox belongs to another researcher's project")
    if State(application.state) != State.ACTIVE:
        raise Forbidden(f"the project is {application.state.replace('_', ' ')}, not active")
    agreement = db.get(Agreement, application.id)
    expires = agreement.expires_at if agreement else None
    if expires is None or aware(expires) <= datetime.now(UTC):
        raise Forbidden("the project's term has ended")
    record = db.get(Sandbox, application.id)
    if record is not None and record.status == Status.DESTROYED:
        raise Forbidden("this project's sandbox was destroyed at the end of its term")
    return application


def record_destruction(db: Session, payload: dict) -> DestructionRecord:
    """Store the spawner's account of what it removed, and audit it."""
    try:
        server = str(payload["server"]) if "server" in payload else \
            server_name(int(payload["project"]))
        project = project_of(server)
        steps = list(payload["steps"])
        started = datetime.fromisoformat(payload["started_at"])
        finished = datetime.fromisoformat(payload["finished_at"])
        user = str(payload["user"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a destruction record: {exc}") from None
    if project is None or db.get(Application, project) is None:
        raise InputError("the destruction record names no known project")
    complete = all(step.get("outcome") in ("removed", "absent") for step in steps)
    record = DestructionRecord(application_id=project, hub_user=user, server=server,
                               started_at=started, finished_at=finished, steps=steps,
                               complete=complete)
    db.add(record)
    _audit(db, AuditAction.SANDBOX_DESTROYED, "service:hub", record.application_id,
           {"hub_user": user, "server": server, "complete": complete, "steps": steps})
    db.commit()
    return record


# -- stop and destroy -----------------------------------------------------------------

def stop(db: Session, settings: PortalSettings, application: Application, actor: str
         ) -> None:
    """Stop the project's sandbox, keeping its workspace (suspension)."""
    _stop(db, settings, application, actor, remove=False)


def destroy(db: Session, settings: PortalSettings, application: Application,
            actor: str) -> None:
    """Stop and delete the project's named server; the hub's spawner removes container,
    workspace volume and network and sends the destruction record."""
    _stop(db, settings, application, actor, remove=True)


def _stop(db: Session, settings: PortalSettings, application: Application, actor: str,
          remove: bool) -> None:
    record = db.get(Sandbox, application.id)
    if record is None or record.status == Status.DESTROYED or not enabled(settings):
        return
    db.commit()  # no transaction open: the hub's spawner reports to the portal meanwhile
    client = hub(settings)
    try:
        client.stop(record.hub_user, record.server, remove=remove)
    except Unavailable as exc:
        record.detail = f"{'destruction' if remove else 'stop'} pending: {exc.reason}"
        db.commit()
        return
    finally:
        client.close()
    record.status, record.detail = (Status.DESTROYED if remove else Status.STOPPED), ""
    record.updated_at = datetime.now(UTC)
    _audit(db, AuditAction.SANDBOX_STOPPED, actor, application.id,
           {"hub_user": record.hub_user, "server": record.server, "removed": remove})
    db.commit()


def destruction_records(db: Session, application: Application) -> list[DestructionRecord]:
    return list(db.scalars(select(DestructionRecord)
                           .where(DestructionRecord.application_id == application.id)
                           .order_by(DestructionRecord.id)).all())


def aware(value: datetime) -> datetime:
    """A stored time as UTC (SQLite returns naive values)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
