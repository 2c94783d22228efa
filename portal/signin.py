"""Who is signed in, and how they proved it: password, TOTP code, step-up — plain
functions over the portal's tables, no web imports.

Sessions are records in the database; the cookie only names one (by a random id whose
SHA-256 is stored). Signing out, the idle lock, the absolute lifetime and an account lock
end the record, so every copy of the cookie — one left in a shared browser, one copied off
the wire — signs in nobody afterwards.

A TOTP code opens at most one door: the account's last accepted time step is stored and a
code is accepted only for a later step (a conditional update, so two requests racing with
one code cannot both win). Sign-in and step-up share that rule, so the code typed to sign
in cannot also release an export. Wrong codes count toward the same lockout as wrong
passwords — counted by the database in one statement, so parallel failures cannot
overwrite each other's count, and the lock is read from the database again while a code is
checked, so a request loaded before the lock cannot try its code after it. A lock ends
every session of the account. Every outcome is audited.

An account without an authenticator enrols one at sign-in: the secret the code page shows
belongs to that sign-in session alone (drawn for it, kept with its record), and reaches the
account only with the first valid code — so a secret seen by someone else who has the
password, in their own session, is never the one the owner enrols. Once enrolled, the
account's secret is never shown again.

Adversaries: someone with the password but not the authenticator (guesses codes until
locked, in parallel or not; looks at the enrolment page before the owner), someone who saw
or intercepted one code (a replay is refused), someone holding a copied session cookie (it
dies with the session; downloads and exports still need a code they do not have)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NoReturn

from sqlalchemy import case, or_, select, update
from sqlalchemy.orm import Session

from approvals.states import Role
from portal.config import PortalSettings
from portal.models import SignInSession, User
from portal.security import check_password, is_locked, new_totp_secret, totp_steps
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, Unauthenticated


class AccountLocked(Forbidden):
    """Too many failed passwords or codes; the account is locked for a while."""

    code = "locked"


class CodeRefused(Unauthenticated):
    """A TOTP code that is wrong, or whose time step was already used."""

    code = "code_refused"


class AlreadyEnrolled(CodeRefused):
    """The account enrolled an authenticator in another sign-in meanwhile: the secret this
    session showed is void."""

    code = "already_enrolled"


class Purpose(StrEnum):
    """What a code is typed for: signing in, or one of the actions that need a fresh one."""

    SIGN_IN = "sign_in"
    EXPORT_REQUEST = "export_request"
    EXPORT_RELEASE = "export_release"
    BUNDLE_DOWNLOAD = "bundle_download"
    AGREEMENT_DOWNLOAD = "agreement_download"


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _audit(db: Session, action: AuditAction, user_id: int, details: dict) -> None:
    """An entry about an account, in the caller's transaction (the address of the request
    comes from ``audit.ORIGIN``)."""
    audit.append(db.connection(), action, f"user:{user_id}", f"user:{user_id}", details)


# -- passwords ----------------------------------------------------------------------------

def check_credentials(db: Session, settings: PortalSettings, email: str,
                      password: str) -> User:
    """The account these credentials open — counting failures, locking after too many,
    auditing every attempt. Success does not reset the failure count: only a complete
    sign-in (the code too) does, so re-entering a known password never buys more guesses
    at the code."""
    email = email.strip().lower()
    user = db.scalar(select(User).where(User.email == email))
    if user is not None and is_locked(user.locked_until):
        _audit(db, AuditAction.LOGIN_FAILED, user.id, {"why": "locked"})
        db.commit()
        raise AccountLocked("this account is locked; try again later")
    if user is None or not check_password(user.password_hash, password):
        if user is not None:
            _count_failure(db, settings, user)
        audit.append(db.connection(), AuditAction.LOGIN_FAILED, "anonymous",
                     f"email:{email}", {"why": "password"})
        db.commit()
        raise Unauthenticated("wrong e-mail or password")
    _audit(db, AuditAction.PASSWORD_ACCEPTED, user.id, {})
    db.commit()
    return user


def _unlocked(now: datetime):
    """The accounts not locked at ``now`` (as an SQL condition)."""
    return or_(User.locked_until.is_(None), User.locked_until <= now)


def _count_failure(db: Session, settings: PortalSettings, user: User) -> bool:
    """One more failed password or code, counted by the database in one statement (two
    requests failing at once each add one; neither writes back a count it read before the
    other), locking the account in the same statement when the count reaches the limit.
    True if the account is locked now — by this failure or by one that came first."""
    now = datetime.now(UTC)
    reaches = User.failed_logins + 1 >= settings.max_failed_logins
    counted = db.execute(
        update(User).where(User.id == user.id, _unlocked(now))
        .values(failed_logins=case((reaches, 0), else_=User.failed_logins + 1),
                locked_until=case((reaches, now + timedelta(minutes=settings.lockout_minutes)),
                                  else_=None))
        .returning(User.locked_until)
        .execution_options(synchronize_session=False)).first()
    db.expire(user, ["failed_logins", "locked_until"])
    if counted is None:  # already locked by a concurrent failure: nothing more to count
        return True
    if counted.locked_until is None:
        return False
    _audit(db, AuditAction.ACCOUNT_LOCKED, user.id, {"minutes": settings.lockout_minutes})
    end_all(db, user.id, "locked")
    return True


def _locked_now(db: Session, user_id: int) -> bool:
    """The lock as the database holds it now (not as the request loaded the account)."""
    return is_locked(db.scalar(select(User.locked_until).where(User.id == user_id)))


# -- codes --------------------------------------------------------------------------------

def check_code(db: Session, settings: PortalSettings, user: User, code: str,
               purpose: Purpose, subject: str = "", now: float | None = None) -> int:
    """Accept ``code`` for ``user`` (returns its time step) or raise ``CodeRefused`` /
    ``AccountLocked``; counted, audited and committed either way."""
    details = {"purpose": str(purpose)} | ({"subject": subject} if subject else {})
    failed = AuditAction.LOGIN_FAILED if purpose == Purpose.SIGN_IN \
        else AuditAction.STEP_UP_FAILED
    if _locked_now(db, user.id):
        _refuse_locked(db, user.id, failed, details)
    # Only an enrolled account has a secret to check against (see ``enrol``).
    steps = totp_steps(user.totp_secret if user.totp_enabled else None, code, now)
    for step in sorted(steps, reverse=True):
        taken = db.execute(update(User).where(
            User.id == user.id, _unlocked(datetime.now(UTC)),
            or_(User.totp_last_step.is_(None), User.totp_last_step < step))
            .values(totp_last_step=step, failed_logins=0)
            .execution_options(synchronize_session=False)).rowcount
        if taken == 1:
            db.refresh(user)
            _audit(db, AuditAction.LOGIN_SUCCEEDED if purpose == Purpose.SIGN_IN
                   else AuditAction.STEP_UP_PASSED, user.id, details | {"step": step})
            db.commit()
            return step
    _refuse_code(db, settings, user, failed, details, steps)


def _refuse_locked(db: Session, user_id: int, failed: AuditAction,
                   details: dict) -> NoReturn:
    _audit(db, failed, user_id, details | {"why": "locked"})
    end_all(db, user_id, "locked")
    db.commit()
    raise AccountLocked("this account is locked; try again later")


def _refuse_code(db: Session, settings: PortalSettings, user: User, failed: AuditAction,
                 details: dict, steps: list[int]) -> NoReturn:
    """A code that opened nothing: locked meanwhile (refused as such, not counted), a
    replay, or a wrong code — the last two counted toward the lockout."""
    if steps and _locked_now(db, user.id):  # a right code, but the account locked meanwhile
        _refuse_locked(db, user.id, failed, details)
    locked = _count_failure(db, settings, user)  # the row first, then the audit chain
    if steps:
        _audit(db, AuditAction.TOTP_REPLAY_REFUSED, user.id, details | {"step": max(steps)})
        why = "this code was already used; wait for the next one"
    else:
        _audit(db, failed, user.id, details | {"why": "totp"})
        why = "wrong code"
    db.commit()
    if locked:
        raise AccountLocked("too many wrong codes: this account is locked; try again later")
    raise CodeRefused(why)


# -- enrolment ----------------------------------------------------------------------------

def enrolment_secret(db: Session, record: SignInSession) -> str:
    """The secret this sign-in session shows for enrolment: drawn for the session the first
    time it is asked for, the same on every later look within it, never the account's."""
    if not record.pending_totp_secret:
        record.pending_totp_secret = new_totp_secret()
        db.commit()
    return record.pending_totp_secret


def enrol(db: Session, settings: PortalSettings, record: SignInSession, code: str,
          now: float | None = None) -> int:
    """Enrol the authenticator this session showed, with its first valid code (returns the
    code's time step): the secret is written to the account only now, and only while the
    account has none enrolled — a conditional update, so of two sessions racing to enrol,
    one wins and the other's secret is void (``AlreadyEnrolled``). Wrong codes count
    toward the lockout; everything is audited and committed."""
    user = record.user
    details = {"purpose": str(Purpose.SIGN_IN), "enrolment": True}
    if _locked_now(db, user.id):
        _refuse_locked(db, user.id, AuditAction.LOGIN_FAILED, details)
    steps = totp_steps(record.pending_totp_secret, code, now)
    if steps:
        step = max(steps)
        taken = db.execute(update(User).where(
            User.id == user.id, User.totp_enabled.is_(False), _unlocked(datetime.now(UTC)))
            .values(totp_secret=record.pending_totp_secret, totp_enabled=True,
                    totp_last_step=step, failed_logins=0)
            .execution_options(synchronize_session=False)).rowcount
        if taken == 1:
            record.pending_totp_secret = None
            db.refresh(user)
            _audit(db, AuditAction.MFA_ENROLLED, user.id, {})
            _audit(db, AuditAction.LOGIN_SUCCEEDED, user.id, details | {"step": step})
            db.commit()
            return step
        if _locked_now(db, user.id):
            _refuse_locked(db, user.id, AuditAction.LOGIN_FAILED, details)
        db.refresh(user)
        void_enrolment(db, record)
    _refuse_code(db, settings, user, AuditAction.LOGIN_FAILED, details, [])


def void_enrolment(db: Session, record: SignInSession) -> NoReturn:
    """This session showed a key, but the account enrolled an authenticator in another
    sign-in meanwhile: the key is void (audited, not counted as a wrong code — the owner
    learns that someone enrolled, which may not have been them)."""
    record.pending_totp_secret = None
    _audit(db, AuditAction.LOGIN_FAILED, record.user_id,
           {"purpose": str(Purpose.SIGN_IN), "enrolment": True, "why": "enrolled_elsewhere"})
    db.commit()
    raise AlreadyEnrolled("this account has just enrolled an authenticator in another "
                          "sign-in; enter the code of that authenticator")


# -- sessions -----------------------------------------------------------------------------

def open_session(db: Session, user: User, *, mfa_done: bool,
                 now: datetime | None = None) -> str:
    """A new session record; returns the id the cookie carries (stored only hashed)."""
    moment = _now(now)
    session_id = secrets.token_urlsafe(32)
    db.add(SignInSession(id_hash=_digest(session_id), user_id=user.id, created_at=moment,
                         last_seen=moment, mfa_at=moment if mfa_done else None))
    db.commit()
    return session_id


def find(db: Session, session_id: str | None) -> SignInSession | None:
    """The live record a cookie names, or None (unknown, or ended)."""
    if not session_id or not isinstance(session_id, str):
        return None
    record = db.get(SignInSession, _digest(session_id))
    return record if record is not None and record.ended_at is None else None


def idle_limit(settings: PortalSettings, role: str) -> timedelta:
    minutes = settings.researcher_idle_minutes if role == Role.RESEARCHER \
        else settings.idle_minutes
    return timedelta(minutes=minutes)


def expired(record: SignInSession, settings: PortalSettings,
            now: datetime | None = None) -> str | None:
    """Why the session is over ("idle" or "lifetime"), or None while it lives."""
    moment = _now(now)
    if moment - _aware(record.created_at) > timedelta(hours=settings.session_hours):
        return "lifetime"
    if moment - _aware(record.last_seen) > idle_limit(settings, record.user.role):
        return "idle"
    return None


def touch(db: Session, record: SignInSession, now: datetime | None = None) -> None:
    record.last_seen = _now(now)
    db.commit()


def end(db: Session, record: SignInSession, why: str, now: datetime | None = None) -> None:
    """End one session (signed out, idle, lifetime), audited."""
    record.ended_at, record.ended_why = _now(now), why
    record.pending_totp_secret = None
    action = AuditAction.SESSION_IDLE_LOCKED if why == "idle" else AuditAction.SESSION_ENDED
    _audit(db, action, record.user_id, {"why": why})
    db.commit()


def end_all(db: Session, user_id: int, why: str) -> None:
    """End every live session of an account (in the caller's transaction)."""
    db.execute(update(SignInSession).where(SignInSession.user_id == user_id,
                                           SignInSession.ended_at.is_(None))
               .values(ended_at=datetime.now(UTC), ended_why=why, pending_totp_secret=None))
