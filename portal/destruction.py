"""Destruction certificates: when a project closes its researcher gets a task — a form to
fill in and upload signed — which a controller verifies or rejects with reasons; a task
left open past its due date becomes a blacklist proposal. The platform's own sandbox
destruction record is attached to the form. Rules in ``approvals.destruction``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import destruction as rules
from approvals import states
from approvals.destruction import TaskAction, TaskState
from approvals.states import Action, Role, State
from portal import notify, sandboxes
from portal.config import PortalSettings
from portal.models import Application, DestructionTask, User
from portal.pdf import TextPdf
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError, NotFound


def open_task(db: Session, settings: PortalSettings, application: Application,
              actor: str, now: datetime | None = None) -> DestructionTask:
    """Give the researcher of a closing project their destruction task (once)."""
    existing = db.get(DestructionTask, application.id)
    if existing is not None:
        return existing
    now = now or datetime.now(UTC)
    task = DestructionTask(application_id=application.id, state=TaskState.OPEN,
                           created_at=now,
                           due_at=rules.due(now, settings.destruction_due_days), reasons="")
    db.add(task)
    _audit(db, AuditAction.DESTRUCTION_REQUESTED, actor, application,
           {"due_at": task.due_at.isoformat()})
    db.commit()
    _mail(settings, application, f"请在 {task.due_at:%Y-%m-%d} 前提交销毁证明 / submit the "
                                 f"destruction certificate by {task.due_at:%Y-%m-%d}")
    return task


def form(db: Session, application: Application) -> bytes:
    """The certificate form (PDF) to fill in, with the platform's destruction record."""
    task = _task(db, application)
    researcher = application.researcher
    doc = TextPdf(f"Destruction certificate {application.id}")
    doc.line("数据销毁证明 / Data destruction certificate", 16, 10)
    doc.line(f"项目 / Project #{application.id}: {application.title}")
    doc.line(f"使用方 / User: {researcher.name} "
             f"({researcher.profile.institution_label if researcher.profile else ''})")
    doc.line(f"截止日期 / Due: {sandboxes.aware(task.due_at):%Y-%m-%d}")
    doc.space(4)
    doc.line("平台销毁记录 / The platform's own destruction record:", 11)
    records = sandboxes.destruction_records(db, application)
    for record in records:
        for step in record.steps:
            doc.line(f"   {step['kind']} {step.get('id', '')[:24]} — {step['outcome']} "
                     f"({step.get('at', '')[:19]})", 9)
    if not records:
        doc.line("   （无沙箱）/ (no sandbox)", 9)
    doc.space(4)
    doc.line("请填写并签字 / Fill in and sign:", 11)
    for zh, en in (("曾存在的导出副本及存放位置", "Exported copies that existed, and where"),
                   ("销毁方式", "Method of destruction"), ("销毁日期", "Date of destruction"),
                   ("签字", "Signature"), ("日期", "Date")):
        doc.line(f"{zh} / {en}: ______________________________________")
        doc.space(3)
    return doc.bytes()


def submit(db: Session, settings: PortalSettings, application: Application,
           researcher: User, certificate: bytes) -> DestructionTask:
    """The researcher uploads the signed certificate (a PDF)."""
    if application.researcher_id != researcher.id:
        raise NotFound("no such destruction task")
    task = _task(db, application)
    if not certificate.startswith(b"%PDF-"):
        raise InputError("upload the signed certificate as a PDF file")
    if len(certificate) > settings.max_upload_bytes:
        raise InputError("the certificate is too large")
    task.state = rules.check(TaskState(task.state), TaskAction.SUBMIT, Role.RESEARCHER)
    task.certificate, task.certificate_sha256 = certificate, \
        hashlib.sha256(certificate).hexdigest()
    task.submitted_at = datetime.now(UTC)
    _audit(db, AuditAction.DESTRUCTION_SUBMITTED, f"user:{researcher.id}", application,
           {"sha256": task.certificate_sha256})
    db.commit()
    return task


def decide(db: Session, settings: PortalSettings, application: Application,
           controller: User, verified: bool, reasons: str = "") -> DestructionTask:
    """Verify the certificate (the project closes) or reject it with reasons (the task is
    open again)."""
    task = _task(db, application)
    action = TaskAction.VERIFY if verified else TaskAction.REJECT
    task.state = rules.check(TaskState(task.state), action, Role(controller.role), reasons)
    task.decided_by, task.decided_at, task.reasons = controller.id, datetime.now(UTC), \
        reasons.strip()
    if verified:
        application.state = states.check(State(application.state), Action.CLOSE,
                                         Role(controller.role))
    _audit(db, AuditAction.DESTRUCTION_VERIFIED if verified else
           AuditAction.DESTRUCTION_REJECTED, f"user:{controller.id}", application,
           {"reasons": task.reasons, "sha256": task.certificate_sha256})
    db.commit()
    _mail(settings, application, "销毁证明已核验，项目关闭 / certificate verified, project "
                                 "closed" if verified else
          f"销毁证明被退回 / certificate rejected — {task.reasons}")
    return task


@dataclass(frozen=True)
class Proposal:
    application_id: int
    title: str
    researcher_id: int
    researcher: str
    due_at: datetime


def overdue(db: Session, now: datetime | None = None) -> list[Proposal]:
    """Open tasks past their due date: blacklist proposals for a controller to confirm."""
    now = now or datetime.now(UTC)
    found = []
    for task in db.scalars(select(DestructionTask).where(
            DestructionTask.state == TaskState.OPEN).order_by(DestructionTask.due_at)):
        if rules.overdue(TaskState(task.state), sandboxes.aware(task.due_at), now):
            application = db.get(Application, task.application_id)
            found.append(Proposal(application.id, application.title,
                                  application.researcher_id, application.researcher.email,
                                  sandboxes.aware(task.due_at)))
    return found


def _task(db: Session, application: Application) -> DestructionTask:
    task = db.get(DestructionTask, application.id)
    if task is None:
        raise NotFound("this project has no destruction task (it has not closed)")
    return task


def _audit(db: Session, action: AuditAction, actor: str, application: Application,
           details: dict) -> None:
    audit.append(db.connection(), action, actor, f"application:{application.id}", details)


def _mail(settings: PortalSettings, application: Application, what: str) -> None:
    notify.about_application(settings, [application.researcher.email], application.id,
                             application.title, what)
