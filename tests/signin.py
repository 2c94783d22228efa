"""Signing the tests' accounts in: TOTP codes that are always fresh. The portal accepts a
code only for a time step later than the account's last accepted one (replay refusal), so
a test that signs in or steps up several times within 30 seconds takes the next step's
code (the portal accepts one step of clock drift) or waits for it."""

from __future__ import annotations

import time

import pyotp
from sqlalchemy import select

from portal.models import User


def code_after(secret: str, last_step: int | None) -> str:
    """A code for the first step after ``last_step`` that the portal accepts now."""
    return pyotp.TOTP(secret).generate_otp(next_step(secret, last_step))


def fresh_code(sessions, email: str) -> str:
    """A code the account ``email`` has not used yet (reads its secret and last step)."""
    with sessions() as db:
        user = db.scalar(select(User).where(User.email == email))
        return code_after(user.totp_secret, getattr(user, "totp_last_step", None))


def wrong_code(sessions, email: str) -> str:
    """A six-digit code that is no step's code in the accepted window."""
    with sessions() as db:
        secret = db.scalar(select(User.totp_secret).where(User.email == email))
    totp, now = pyotp.TOTP(secret), time.time()
    taken = {totp.at(now + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in (f"{n:06d}" for n in range(123456, 999999, 7919))
                if c not in taken)


def next_step(secret: str, last_step: int | None) -> int:
    """The first step after ``last_step`` the portal accepts now (waiting if need be)."""
    totp = pyotp.TOTP(secret)
    step = max(totp.timecode(time.time()), (last_step or 0) + 1)
    while step > totp.timecode(time.time()) + 1:
        time.sleep(0.25)
    return step


class Authenticators:
    """The tests' authenticator app: each account's secret, and the last step it gave a
    code for (the portal takes each step once)."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.last: dict[str, int] = {}
        self.used: dict[str, str] = {}  # the last code given, for replay attempts

    def __contains__(self, email: str) -> bool:
        return email in self.secrets

    def add(self, email: str, secret: str) -> None:
        self.secrets[email] = secret

    def code(self, email: str) -> str:
        step = next_step(self.secrets[email], self.last.get(email))
        self.last[email] = step
        self.used[email] = pyotp.TOTP(self.secrets[email]).generate_otp(step)
        return self.used[email]

    def wrong(self, email: str) -> str:
        """A code no step in the accepted window has."""
        totp, now = pyotp.TOTP(self.secrets[email]), time.time()
        taken = {totp.at(now + d) for d in (-60, -30, 0, 30, 60)}
        return next(c for c in (f"{n:06d}" for n in range(123456, 999999, 7919))
                    if c not in taken)
