"""The authenticator secret shown at enrolment, attacked over HTTP against the served portal.

Adversary: someone who learns an account's password before its owner has enrolled an
authenticator — the initial password an admin sets with ``sandboxctl portal create-user``
and passes on, a colleague at a shared screen, a mailbox read once. The threat model
concedes that such a person can *enrol their own* authenticator first ("first sign-in
wins") — which the owner would notice, since the code page then asks them for a code they
do not have. This is quieter:

the secret is drawn once and stored on the account at the first visit of ``/mfa``, shown
to every password-holder who opens that page until enrolment completes, and kept after
it. So the attacker only *looks* at the enrolment page and leaves; the owner then enrols
the very same secret without any sign of trouble; from then on the attacker holds a
working authenticator for the account, and "a stolen password cannot sign in without the
authenticator" no longer holds for them.

**Fails today.**"""

from __future__ import annotations

import re
import uuid

import pyotp
from sqlalchemy import select

from portal.models import Profile, User
from portal.security import hash_password
from tests import committee
from tests.attacks.conftest import PASSWORD, Visitor
from tests.signin import code_after

SECRET = re.compile(r'id="totp-secret">([A-Z2-7]+)<')


def test_a_secret_seen_before_enrolment_is_not_the_one_enrolled(served):
    stack, sessions = served
    email = f"expert-{uuid.uuid4().hex[:8]}@lingnan.cn"
    with sessions() as db:  # as `sandboxctl portal create-user` leaves it: no authenticator
        db.add(User(email=email, name="新专家", role="expert",
                    password_hash=hash_password(PASSWORD), totp_enabled=False,
                    profile=Profile(institution=committee.entry(db, "中山医院"))))
        db.commit()

    attacker = Visitor(stack.url)  # knows the initial password; opens the page and leaves
    assert attacker.password(email).headers["location"].endswith("/mfa")
    seen = SECRET.search(attacker.http.get("/mfa").text).group(1)

    owner = Visitor(stack.url)  # the owner enrols as the page tells them to
    assert owner.password(email).headers["location"].endswith("/mfa")
    shown = SECRET.search(owner.http.get("/mfa").text).group(1)
    enrolled = owner.form("/mfa", {"code": pyotp.TOTP(shown).now()})
    assert enrolled.status_code == 302 and enrolled.headers["location"] == "/"
    with sessions() as db:
        assert db.scalar(select(User.totp_enabled).where(User.email == email))

    later = Visitor(stack.url)  # weeks later, the password and the code from `seen`
    assert later.password(email).headers["location"].endswith("/mfa")
    with sessions() as db:
        last = db.scalar(select(User.totp_last_step).where(User.email == email))
    answer = later.form("/mfa", {"code": code_after(seen, last)})
    assert seen != shown or answer.status_code != 302 or \
        answer.headers["location"].endswith(("/mfa", "/login")), (
        "the secret shown to a password-holder before enrolment is the one the owner "
        "enrolled: the attacker signs in with password and code")
