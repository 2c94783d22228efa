"""Passwords (argon2), TOTP second factors (pyotp), account lockout and safe redirect
targets — plain functions, no web imports."""

from __future__ import annotations

import time
import unicodedata
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from approvals.states import Role

_hasher = PasswordHasher()
# Every human account signs in with a second factor (researchers open sandboxes over
# restricted data; the guide asks for multi-factor sign-in on every account).
MFA_ROLES = frozenset({Role.RESEARCHER, Role.EXPERT, Role.CHAIR, Role.CONTROLLER, Role.ADMIN})
# Codes of the step before and after the current one are accepted (clock drift).
TOTP_WINDOW = 1
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


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def totp_qr_data_uri(secret: str, email: str) -> str:
    """The enrolment QR code as a data URI a browser shows in an <img> (a standalone SVG:
    with its XML namespace, which inline SVG may omit but an image may not)."""
    return segno.make(totp_uri(secret, email), error="m").svg_data_uri(scale=4)


def totp_steps(secret: str | None, code: str, now: float | None = None) -> list[int]:
    """The time steps (within the window around ``now``) whose code ``code`` is — usually
    one, none for a wrong code. A caller accepts only a step later than the last one it
    accepted, which is what makes a code single-use."""
    code = (code or "").strip().replace(" ", "")
    if not secret or not code.isdigit() or len(code) != 6:
        return []
    totp = pyotp.TOTP(secret)
    now = time.time() if now is None else now
    return [totp.timecode(now + offset * totp.interval)
            for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1)
            if totp.verify(code, for_time=now + offset * totp.interval)]


def is_locked(locked_until: datetime | None, now: datetime | None = None) -> bool:
    if locked_until is None:
        return False
    if locked_until.tzinfo is None:
        locked_until = locked_until.replace(tzinfo=UTC)
    return locked_until > (now or datetime.now(UTC))


def local_path(target: str | None) -> str | None:
    """``target`` if it can only lead to a path of this site, else None.

    Browsers drop tabs and line breaks inside URLs and read a backslash as a slash, so
    ``/\t/evil.example`` or ``/\\evil.example`` become ``//evil.example`` — another host.
    Any control or whitespace character, any backslash (raw or percent-encoded, however
    often), a scheme or a host refuses the target."""
    if not target or len(target) > 2000:
        return None
    decoded, seen = target, set()
    while decoded not in seen:  # undo every layer of percent-encoding
        seen.add(decoded)
        decoded = unquote(decoded)
    for text in seen:
        if "\\" in text or any(c.isspace() or unicodedata.category(c)[0] in "CZ"
                                for c in text):
            return None
        if not text.startswith("/") or text.startswith("//"):
            return None
        parts = urlsplit(text)
        if parts.scheme or parts.netloc:
            return None
    return target


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site_problem(method: str, mimetype: str, origin: str | None,
                       requested_with: str | None, host_url: str, public_url: str,
                       bearer: bool) -> str | None:
    """Why a JSON API call must be refused as possibly cross-site, or None.

    A page of another site can make the browser send a form (url-encoded, multipart or
    text/plain) with the portal's cookie, but not a JSON body or a custom header without
    the portal's consent (CORS, which it never gives); and the browser names the page's
    origin in ``Origin``. So a state-changing call needs a JSON body and either an
    ``Origin`` of this portal or, from programs that send none, ``X-Requested-With``."""
    if method.upper() in SAFE_METHODS or bearer:
        return None
    if mimetype != "application/json":
        return "send JSON (Content-Type: application/json)"
    if origin is not None:
        if origin.lower() in {_origin(host_url), _origin(public_url)}:
            return None
        return "the request comes from another site (Origin does not match this portal)"
    if not requested_with:
        return "add the header X-Requested-With (or send the request from the portal)"
    return None
