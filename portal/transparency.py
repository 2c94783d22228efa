"""Transparency report for a patient or their guardian (the guide lets guardians read the
data-use logs): for a pseudonym, the approved projects that had a dataset holding the
patient's records in scope — purpose, institution, period — as a bilingual PDF. Generating
one is audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from approvals.states import State
from portal import consent, gateway
from portal.config import PortalSettings
from portal.labels import PURPOSE_NAMES
from portal.models import Agreement
from portal.pdf import TextPdf
from sandbox import audit
from sandbox.audit import AuditAction

# Projects that received access (an agreement was signed).
HAD_ACCESS = (State.ACTIVE, State.SUSPENDED, State.CLOSING, State.CLOSED)


@dataclass(frozen=True)
class Use:
    project: int
    title: str
    purpose: str
    institution: str
    datasets: tuple[str, ...]
    start: datetime
    end: datetime | None


def uses(db: Session, settings: PortalSettings, patient: str) -> tuple[list[dict], list[Use]]:
    """(datasets holding the patient, projects that had one of them in scope)."""
    holding = gateway.datasets_holding(settings, patient)
    ids = {d["id"] for d in holding}
    found = []
    for application in consent.projects_holding(db, HAD_ACCESS, ids):
        scope = {f.dataset for f in application.fields} & ids
        agreement = db.get(Agreement, application.id)
        if agreement is None:
            continue
        profile = application.researcher.profile
        found.append(Use(application.id, application.title, application.purpose,
                         profile.institution_label if profile else "", tuple(sorted(scope)),
                         agreement.signed_at, agreement.expires_at))
    return holding, found


def report(db: Session, settings: PortalSettings, patient: str, actor: str) -> bytes:
    """The PDF for the patient or guardian; the request is audited."""
    holding, found = uses(db, settings, patient)
    audit.append(db.connection(), AuditAction.TRANSPARENCY_REPORTED, actor,
                 f"patient:{patient}", {"projects": [u.project for u in found]})
    db.commit()
    doc = TextPdf("数据使用报告 / Data use report")
    doc.line("数据使用透明度报告 / Data use transparency report", 16, 10)
    doc.line(f"患者假名 / Patient pseudonym: {patient[:16]}…")
    doc.line(f"生成时间 / Generated: {datetime.now(UTC).isoformat(timespec='seconds')}")
    doc.line("数据集 / Datasets holding your records: "
             + (", ".join(f"{d['id']} {d['version']}" for d in holding) or "无 / none"))
    doc.space(4)
    if not found:
        doc.line("没有获批项目使用过包含您记录的数据集。")
        doc.line("No approved project has had a dataset holding your records in scope.")
    for use in found:
        zh, en = PURPOSE_NAMES.get(use.purpose, (use.purpose, use.purpose))
        end = use.end.date().isoformat() if use.end else "—"
        doc.line(f"项目 / Project #{use.project}: {use.title}", 11)
        doc.line(f"   目的 / Purpose: {zh} / {en}")
        doc.line(f"   机构 / Institution: {use.institution}")
        doc.line(f"   期间 / Period: {use.start.date().isoformat()} – {end}")
        doc.line(f"   数据集 / Datasets: {', '.join(use.datasets)}")
    doc.space(4)
    doc.line("研究者只能在隔离沙箱中获得差分隐私统计结果，不能看到您的个人记录。", 9)
    doc.line("Researchers receive only differentially private statistics inside an isolated "
             "sandbox; they never see your individual records.", 9)
    return doc.bytes()
