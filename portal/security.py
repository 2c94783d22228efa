"""Passwords (argon2), TOTP second factors (pyotp), and account lockout — plain functions,
no web imports."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from approvals.states import Role

_hasher = PasswordHasher()
MFA_ROLES = frozenset({Role.EXPERT, Role.CHAIR, Role.CONTROLLER, Role.ADMIN})
MIN_PASSWORD = 10
ISSUER = "岭南医疗数据沙箱"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is not acceptable, or None."""
    if len(password) < MIN_PASSWORD:
        return f"at least {MIN_PASSWORD} characters"
    if password.isdigit() or password.isalpha():
        return "mix letters with digits or symbols"
    return None


def needs_mfa(role: str) -> bool:
    return role in MFA_ROLES


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def totp_qr_data_uri(secret: str, email: str) -> str:
    svg = segno.make(totp_uri(secret, email), error="m").svg_inline(scale=4)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def check_totp(secret: str | None, code: str) -> bool:
    code = (code or "").strip().replace(" ", "")
    return bool(secret) and code.isdigit() and pyotp.TOTP(secret).verify(code, valid_window=1)


def is_locked(locked_until: datetime | None, now: datetime | None = None) -> bool:
    if locked_until is None:
        return False
    if locked_until.tzinfo is None:
        locked_until = locked_until.replace(tzinfo=UTC)
    return locked_until > (now or datetime.now(UTC))


def after_failure(failed: int, max_failed: int, lockout_minutes: int
                  ) -> tuple[int, datetime | None]:
    """(failed count, locked until) after one more failed login."""
    failed += 1
    if failed >= max_failed:
        return 0, datetime.now(UTC) + timedelta(minutes=lockout_minutes)
    return failed, None
