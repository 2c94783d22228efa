"""The portal's tables (SQLAlchemy 2 ORM). Workflow rules live in ``approvals``; these are
only the records."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last TOTP time step accepted for this account (sign-in or step-up): a code of
    # that step or an earlier one is a replay, whoever types it.
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    profile: Mapped[Profile | None] = relationship(back_populates="user", uselist=False)


class SignInSession(Base):
    """A signed-in session, kept server-side: its cookie only names it, so signing out, an
    idle lock, the absolute lifetime or an account lock end it for every copy of the cookie.
    Only the SHA-256 of the session id is stored."""

    __tablename__ = "signin_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    mfa_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_why: Mapped[str] = mapped_column(String(20), default="")
    # The TOTP secret this session shows an account that has no authenticator yet: drawn
    # for this sign-in only, written to the account with its first valid code (so a secret
    # someone else saw in their own session is never the one enrolled), cleared with it.
    pending_totp_secret: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship()
class Institution(Base):
    """An entry of the institution registry (admin-maintained); conflicts of interest
    compare these ids. Names follow ``approvals.institutions``."""

    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name_zh: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    aliases: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def label(self) -> str:
        return self.name_zh if self.name_zh == self.name_en else \
            f"{self.name_zh} / {self.name_en}"


class InstitutionKey(Base):
    """Each skeleton of an entry's names, held once: the database itself refuses a second
    entry under a spelling, or a look-alike, of an existing one
    (``approvals.institutions.skeletons``)."""

    __tablename__ = "institution_keys"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)


class FormerInstitution(Base):
    """An institution a person's profile named until ``left_at``: conflicts of interest look
    back at it, so that leaving an institution on one's profile clears nobody
    (docs/adr/0008)."""

    __tablename__ = "former_institutions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    left_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InstitutionClaim(Base):
    """An institution a person typed as "other", until a chair maps it to a registry entry,
    adds it, or rejects it (states in ``approvals.institutions``)."""

    __tablename__ = "institution_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    text: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), index=True)
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reasons: Mapped[str] = mapped_column(Text, default="")

    user: Mapped[User] = relationship(foreign_keys=[user_id])


class CredentialVerification(Base):
    """An admin's check of a claimed professional title or credit grade against an evidence
    file (stored, with its SHA-256). It vouches for ``value`` only: once the profile claims
    something else, the claim is self-declared again."""

    __tablename__ = "credential_verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # "title" | "credit_grade"
    value: Mapped[str] = mapped_column(String(50))
    evidence: Mapped[bytes] = mapped_column(LargeBinary)
    evidence_sha256: Mapped[str] = mapped_column(String(64))
    evidence_type: Mapped[str] = mapped_column(String(10))  # pdf | png | jpeg
    verified_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    verified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    verifier: Mapped[User] = relationship(foreign_keys=[verified_by])


class Profile(Base):
    __tablename__ = "profiles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    # A registry entry, or (until a chair confirms it) a pending claim — never bare text.
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"),
                                                       index=True)
    institution_claim_id: Mapped[int | None] = mapped_column(
        ForeignKey("institution_claims.id"))
    title: Mapped[str] = mapped_column(String(50), default="")
    years_experience: Mapped[int] = mapped_column(Integer, default=0)
    research_field: Mapped[str] = mapped_column(String(200), default="")
    credit_grade: Mapped[str] = mapped_column(String(5), default="")
    blacklisted: Mapped[bool] = mapped_column(Boolean, default=False)
    declared_conflicts: Mapped[list] = mapped_column(JSON, default=list)

    user: Mapped[User] = relationship(back_populates="profile")
    institution: Mapped[Institution | None] = relationship()
    institution_claim: Mapped[InstitutionClaim | None] = relationship()

    @property
    def institution_label(self) -> str:
        """The institution for display: the registry's names, or the typed text marked as
        awaiting confirmation."""
        if self.institution is not None:
            return self.institution.label
        if self.institution_claim is not None:
            return f"{self.institution_claim.text}（待确认 / unconfirmed）"
        return ""


class Application(Base):
    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    researcher_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(Text, default="")
    purpose: Mapped[str] = mapped_column(String(40))
    non_profit: Mapped[bool] = mapped_column(Boolean, default=False)
    epsilon_requested: Mapped[float] = mapped_column(Float, default=1.0)
    term_months: Mapped[int] = mapped_column(Integer, default=12)
    team: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(30), default="draft", index=True)
    ethics_pdf: Mapped[bytes | None] = mapped_column(LargeBinary)
    ethics_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # First submission, and the applicant's institution then: conflicts look back to it.
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_institution_id: Mapped[int | None] = mapped_column(
        ForeignKey("institutions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)

    researcher: Mapped[User] = relationship()
    submitted_institution: Mapped[Institution | None] = relationship()
    fields: Mapped[list[RequestedField]] = relationship(
        back_populates="application", cascade="all, delete-orphan",
        order_by="RequestedField.id")


class RequestedField(Base):
    __tablename__ = "requested_fields"
    __table_args__ = (UniqueConstraint("application_id", "dataset", "field"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    dataset: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(64))
    justification: Mapped[str] = mapped_column(Text)

    application: Mapped[Application] = relationship(back_populates="fields")


class Assignment(Base):
    """An expert asked to score an application."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("application_id", "expert_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The expert's institution when assigned: it conflicts for as long as the panel sits.
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))

    expert: Mapped[User] = relationship()
    institution: Mapped[Institution | None] = relationship()


class Review(Base):
    """One expert's scores on the five dimensions."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("application_id", "expert_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    scores: Mapped[dict] = mapped_column(JSON)
    comments: Mapped[str] = mapped_column(Text, default="")
    remove_fields: Mapped[list] = mapped_column(JSON, default=list)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    expert: Mapped[User] = relationship()


class DecisionRecord(Base):
    """The chair's decision on one round of review."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(20))
    reasons: Mapped[str] = mapped_column(Text)
    fields: Mapped[list] = mapped_column(JSON, default=list)
    epsilon: Mapped[float | None] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    term_months: Mapped[int | None] = mapped_column(Integer)
    decided_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Agreement(Base):
    """The signed data use agreement (DUA) of an approved application, and the grant the
    gateway issued for it."""

    __tablename__ = "agreements"

    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"),
                                                primary_key=True)
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    signed_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    grant_id: Mapped[str | None] = mapped_column(String(32))
    grant_token: Mapped[str | None] = mapped_column(Text)  # encrypted (Fernet)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Sandbox(Base):
    """The project's Jupyter sandbox as the portal last saw it on the hub."""

    __tablename__ = "sandboxes"

    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"),
                                                primary_key=True)
    hub_user: Mapped[str] = mapped_column(String(64))
    server: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))  # see portal.sandboxes.Status
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DestructionRecord(Base):
    """What the platform destroyed of a sandbox at term end: each step with its outcome."""

    __tablename__ = "destruction_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    hub_user: Mapped[str] = mapped_column(String(64))
    server: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    steps: Mapped[list] = mapped_column(JSON)
    complete: Mapped[bool] = mapped_column(Boolean)


class OAuthCode(Base):
    """A one-time authorization code the hub exchanges for a token (stored hashed)."""

    __tablename__ = "oauth_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OAuthToken(Base):
    """An access token issued to the hub for one user (stored hashed)."""

    __tablename__ = "oauth_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    scope: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DestructionTask(Base):
    """The researcher's destruction certificate for a closed project, and its verification
    (states in ``approvals.destruction``)."""

    __tablename__ = "destruction_tasks"

    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"),
                                                primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    certificate: Mapped[bytes | None] = mapped_column(LargeBinary)
    certificate_sha256: Mapped[str | None] = mapped_column(String(64))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reasons: Mapped[str] = mapped_column(Text, default="")


class ExportRequest(Base):
    """Files a project asked to take out of its sandbox (through the gateway), their
    automated checks and their review (states in ``approvals.exports``)."""

    __tablename__ = "export_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    gateway_id: Mapped[str] = mapped_column(String(32), unique=True)
    gateway_created_at: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20))
    round: Mapped[int] = mapped_column(Integer, default=1)
    note: Mapped[str] = mapped_column(Text, default="")
    receipts: Mapped[list] = mapped_column(JSON, default=list)
    checks: Mapped[list] = mapped_column(JSON, default=list)
    verdict: Mapped[str] = mapped_column(String(10), default="")
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    bundle: Mapped[bytes | None] = mapped_column(LargeBinary)  # the signed zip, once released
    files: Mapped[list[ExportFile]] = relationship(cascade="all, delete-orphan",
                                                   order_by="ExportFile.id")


class ExportFile(Base):
    __tablename__ = "export_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_requests.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))


class ExportVote(Base):
    __tablename__ = "export_votes"
    __table_args__ = (UniqueConstraint("request_id", "round", "reviewer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_requests.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    choice: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
