"""Professional titles and credit grades: self-declared until an admin verifies them
against an evidence file, and the eligibility that says which it relied on.

Evidence is accepted only when it parses as what it must be — a PDF (pypdf reads its pages)
or a PNG or JPEG image (Pillow decodes it) — whatever its name says; it is stored with its
SHA-256. A verification vouches for the value it saw: a profile that later claims another
title or grade is self-declared again. Every verification is audited.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader
from pypdf.errors import PdfReadError
from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import eligibility
from approvals.eligibility import Applicant, Assessment, Basis, EligibilityPolicy
from approvals.errors import NotPermitted
from approvals.states import Role
from portal.config import PortalSettings
from portal.models import Application, CredentialVerification, User
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError

KINDS = ("title", "credit_grade")
IMAGE_TYPES = {"PNG": "png", "JPEG": "jpeg"}


def evidence_type(content: bytes) -> str:
    """``pdf``, ``png`` or ``jpeg`` — decided by parsing the content, never by its name."""
    if content.startswith(b"%PDF-"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reader = PdfReader(io.BytesIO(content), strict=False)
                if len(reader.pages) >= 1:
                    return "pdf"
        except (PdfReadError, ValueError, KeyError, TypeError, OSError):
            pass
    else:
        try:
            with Image.open(io.BytesIO(content)) as image:
                kind = IMAGE_TYPES.get(image.format or "")
                image.load()  # decodes the pixels: a truncated or forged body fails here
                if kind:
                    return kind
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            pass
    raise InputError("evidence must be a PDF, PNG or JPEG file, and this one is not",
                     zh="证明材料须为 PDF、PNG 或 JPEG 文件，该文件不是")


def current(db: Session, user: User) -> dict[str, CredentialVerification | None]:
    """The verification each claim of ``user`` rests on now (None: self-declared)."""
    profile = user.profile
    claimed = {"title": profile.title if profile else "",
               "credit_grade": profile.credit_grade if profile else ""}
    out: dict[str, CredentialVerification | None] = dict.fromkeys(KINDS)
    for row in db.scalars(select(CredentialVerification).where(
            CredentialVerification.user_id == user.id).order_by(CredentialVerification.id)):
        if claimed.get(row.kind) and row.value == claimed[row.kind]:
            out[row.kind] = row
    return out


def applicant(db: Session, user: User) -> Applicant:
    """What eligibility looks at about ``user``, with the basis of each claim."""
    p = user.profile
    found = current(db, user)

    def basis(kind: str) -> Basis:
        return Basis.VERIFIED if found[kind] is not None else Basis.SELF_DECLARED

    return Applicant(Role(user.role), p.title if p else "", p.years_experience if p else 0,
                     p.research_field if p else "", p.credit_grade if p else "",
                     p.blacklisted if p else False, basis("title"), basis("credit_grade"))


def policy(settings: PortalSettings) -> EligibilityPolicy:
    return EligibilityPolicy(min_title_grade=settings.min_title_grade,
                             min_years_experience=settings.min_years_experience)


@dataclass(frozen=True)
class Standing:
    """An application's eligibility as the committee sees it: the assessment, and the
    verification behind each claim."""

    assessment: Assessment
    claims: dict[str, tuple[str, CredentialVerification | None]]  # kind → (value, proof)


def standing(db: Session, settings: PortalSettings, application: Application) -> Standing:
    researcher = application.researcher
    person = applicant(db, researcher)
    found = current(db, researcher)
    return Standing(eligibility.assess(person, application.purpose, application.non_profit,
                                       policy(settings)),
                    {"title": (person.title, found["title"]),
                     "credit_grade": (person.credit_grade, found["credit_grade"])})


def standing_json(found: Standing) -> dict:
    """The JSON form of a standing (API)."""
    a = found.assessment

    def claim(kind: str) -> dict:
        value, proof = found.claims[kind]
        return {"value": value, "basis": str(a.relied_on[kind]),
                "verified_at": proof.verified_at.isoformat() if proof else None,
                "verified_by": proof.verified_by if proof else None,
                "evidence_sha256": proof.evidence_sha256 if proof else None}

    return {"eligible": a.eligible, "approvable": a.approvable,
            "reasons": [{"code": r.code, "zh": r.zh, "en": r.en} for r in a.reasons],
            "unverified": [{"code": r.code, "zh": r.zh, "en": r.en} for r in a.unverified],
            "relied_on": {kind: claim(kind) for kind in KINDS}}


def verify(db: Session, admin: User, subject: User, kind: str, seen: str, evidence: bytes,
           ip: str | None = None) -> CredentialVerification:
    """An admin vouches for ``subject``'s ``kind`` claim as the admin saw it (``seen``), on
    ``evidence``. Refused when the claim is no longer ``seen``: the researcher may change it
    while the admin looks at the evidence, and a verification covers only what was seen."""
    if Role(admin.role) != Role.ADMIN:
        raise NotPermitted("only an admin verifies credentials")
    if kind not in KINDS:
        raise InputError(f"verify one of: {', '.join(KINDS)}")
    profile = subject.profile
    value = (getattr(profile, kind) if profile else "") or ""
    if not value:
        raise InputError("there is no claim to verify: the profile names none",
                         zh="该用户未填写此项，无可核验内容")
    if not seen.strip():
        raise InputError("say which value you verify: reload the page and use its button",
                         zh="请说明核验的是哪一项内容：请刷新页面后使用页面上的按钮")
    if seen.strip() != value:
        raise InputError(f"the claim is now {value!r}, not {seen.strip()!r} as shown to you: "
                         f"nothing was verified; reload the page and check the evidence "
                         f"against the claim as it is now",
                         zh=f"该项现为“{value}”，而非页面所示的“{seen.strip()}”：未作核验；请刷新页面，"
                            f"按当前内容核对证明材料")
    if not evidence:
        raise InputError("attach the evidence file", zh="请上传证明材料")
    kind_of_file = evidence_type(evidence)
    digest = hashlib.sha256(evidence).hexdigest()
    row = CredentialVerification(user_id=subject.id, kind=kind, value=value, evidence=evidence,
                                 evidence_sha256=digest, evidence_type=kind_of_file,
                                 verified_by=admin.id)
    db.add(row)
    db.flush()
    audit.append(db.connection(), AuditAction.CREDENTIAL_VERIFIED, f"user:{admin.id}",
                 f"user:{subject.id}", {"kind": kind, "value": value, "sha256": digest,
                                        "type": kind_of_file, "verification": row.id,
                                        "ip": ip})
    db.commit()
    return row
