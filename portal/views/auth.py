"""Accounts: registration, login with lockout and rate limit, TOTP enrolment and
verification, idle lock, language switch."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import wraps

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from sqlalchemy import select

from approvals.states import Role
from portal import credentials, i18n, institutions, limiter
from portal.models import Profile, User
from portal.security import (
    after_failure,
    check_password,
    check_totp,
    hash_password,
    is_locked,
    needs_mfa,
    new_totp_secret,
    password_problem,
    totp_qr_data_uri,
)
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, InputError, SandboxError, Unauthenticated

bp = Blueprint("auth", __name__)


def settings():
    return current_app.extensions["portal.settings"]


def record(action: AuditAction, subject: str, details: dict | None = None,
           actor: str | None = None) -> None:
    """Append an audit entry in the request's transaction and commit it, so the action and
    its entry land together."""
    who = actor or (f"user:{g.user.id}" if getattr(g, "user", None) else "anonymous")
    audit.append(g.db.connection(), action, who, subject,
                 {**(details or {}), "ip": request.remote_addr})
    g.db.commit()


def reason_of(exc: SandboxError) -> str:
    """The reason of a domain error in the page's language, when it has both."""
    zh = exc.details.get("zh")
    return zh if zh and i18n.current_language() == "zh" else exc.reason


def render_error(status: int, reason: str):
    return render_template("error.html", status=status, reason=reason), status


def login_required(*roles: Role):
    """Require a signed-in user (with MFA done where needed), optionally of some roles."""
    def wrap(view):
        @wraps(view)
        def inner(*args, **kwargs):
            if g.user is None:
                here = request.full_path if request.query_string else request.path
                return redirect(url_for("auth.login", next=here))
            if needs_mfa(g.user.role) and not session.get("mfa_ok"):
                return redirect(url_for("auth.mfa"))
            if roles and g.user.role not in roles:
                abort(403)
            return view(*args, **kwargs)
        return inner
    return wrap


def local_path(target: str | None) -> str | None:
    """``target`` if it is a path on this site (never a redirect elsewhere), else None."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    return target


class AccountLocked(Forbidden):
    """Too many failed sign-ins; the account is locked for a while."""

    code = "locked"


def check_credentials(email: str, password: str) -> User:
    """The account these credentials open — counting failures, locking after too many, and
    auditing every attempt — for the sign-in page and the API alike."""
    cfg = settings()
    email = email.strip().lower()
    user = g.db.scalar(select(User).where(User.email == email))
    if user is not None and is_locked(user.locked_until):
        record(AuditAction.LOGIN_FAILED, f"user:{user.id}", {"why": "locked"})
        raise AccountLocked("this account is locked; try again later")
    if user is None or not check_password(user.password_hash, password):
        if user is not None:
            user.failed_logins, user.locked_until = after_failure(
                user.failed_logins, cfg.max_failed_logins, cfg.lockout_minutes)
            g.db.commit()
            if user.locked_until is not None:
                record(AuditAction.ACCOUNT_LOCKED, f"user:{user.id}")
        record(AuditAction.LOGIN_FAILED, f"email:{email}")
        raise Unauthenticated("wrong e-mail or password")
    user.failed_logins = 0
    g.db.commit()
    return user


def start_session(user: User, *, mfa_done: bool, via: str = "page") -> None:
    """A fresh session for ``user`` (keeping the chosen language), audited."""
    language = session.get("lang")
    session.clear()
    session.update(uid=user.id, seen=datetime.now(UTC).timestamp(), mfa_ok=mfa_done)
    if language:
        session["lang"] = language
    g.user = user
    record(AuditAction.LOGIN_SUCCEEDED, f"user:{user.id}", {"via": via},
           actor=f"user:{user.id}")


def idle_lock(user: User) -> None:
    record(AuditAction.SESSION_IDLE_LOCKED, f"user:{user.id}", actor=f"user:{user.id}")
    session.clear()


@bp.route("/lang/<code>")
def language(code: str):
    if code in i18n.LANGUAGES:
        session["lang"] = code
    return redirect(request.referrer or url_for("catalog.index"))


@bp.route("/register", methods=["GET", "POST"])
def register():
    form = request.form
    if request.method == "POST":
        email = form.get("email", "").strip().lower()
        problems = []
        if "@" not in email:
            problems.append(_("Enter a valid e-mail address."))
        if not form.get("name", "").strip():
            problems.append(_("Enter your name."))
        weak = password_problem(form.get("password", ""))
        if weak:
            problems.append(_("Password: %(problem)s.", problem=weak))
        try:
            years = int(form.get("years_experience", "0"))
        except ValueError:
            years = -1
        if years < 0:
            problems.append(_("Years of experience must be a whole number."))
        if g.db.scalar(select(User).where(User.email == email)) is not None:
            problems.append(_("An account with this e-mail already exists."))
        if problems:
            return render_template("auth/register.html", problems=problems, form=form,
                                   registry=institutions.listing(g.db)), 422
        user = User(email=email, name=form["name"].strip(), role=Role.RESEARCHER,
                    password_hash=hash_password(form["password"]))
        user.profile = Profile(title=form.get("title", "").strip()[:50],
                               years_experience=years,
                               research_field=form.get("research_field", "").strip(),
                               credit_grade=form.get("credit_grade", "").strip().upper()[:5])
        g.db.add(user)
        g.db.flush()
        try:  # the registry's entry, or a named "other" that a chair will confirm
            institutions.choose(g.db, user, form.get("institution", ""),
                                form.get("institution_other", ""), f"user:{user.id}",
                                request.remote_addr)
        except InputError as exc:
            g.db.rollback()
            return render_template("auth/register.html", problems=[reason_of(exc)],
                                   form=form, registry=institutions.listing(g.db)), 422
        g.db.commit()
        record(AuditAction.USER_REGISTERED, f"user:{user.id}", {"role": user.role},
               actor=f"user:{user.id}")
        flash(_("Account created. Please sign in."))
        return redirect(url_for("auth.login"))
    return render_template("auth/register.html", problems=[], form=form,
                           registry=institutions.listing(g.db))


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: settings().login_rate, methods=["POST"])
def login():
    if request.method == "GET":
        if request.args.get("idle"):
            flash(_("Your session was locked after %(minutes)d minutes without activity.",
                    minutes=settings().idle_minutes))
        return render_template("auth/login.html")
    try:
        user = check_credentials(request.form.get("email", ""),
                                 request.form.get("password", ""))
    except AccountLocked:
        return render_template("auth/login.html",
                               error=_("This account is locked. Try again later.")), 403
    except Unauthenticated:
        return render_template("auth/login.html",
                               error=_("Wrong e-mail or password.")), 401
    start_session(user, mfa_done=False)
    if needs_mfa(user.role):
        return redirect(url_for("auth.mfa"))
    return redirect(local_path(request.args.get("next")) or url_for("catalog.index"))


@bp.route("/mfa", methods=["GET", "POST"])
def mfa():
    user = g.user
    if user is None:
        return redirect(url_for("auth.login"))
    if not user.totp_enabled and not user.totp_secret:
        user.totp_secret = new_totp_secret()
        g.db.commit()
    if request.method == "POST":
        if check_totp(user.totp_secret, request.form.get("code", "")):
            if not user.totp_enabled:
                user.totp_enabled = True
                g.db.commit()
                record(AuditAction.MFA_ENROLLED, f"user:{user.id}")
            session["mfa_ok"] = True
            return redirect(url_for("catalog.index"))
        record(AuditAction.LOGIN_FAILED, f"user:{user.id}", {"why": "totp"})
        return render_template("auth/mfa.html", user=user, error=_("Wrong code."),
                               qr=None if user.totp_enabled else
                               totp_qr_data_uri(user.totp_secret, user.email)), 401
    return render_template("auth/mfa.html", user=user, error=None,
                           qr=None if user.totp_enabled else
                           totp_qr_data_uri(user.totp_secret, user.email))


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


PICKS_INSTITUTION = (Role.RESEARCHER, Role.EXPERT)


@bp.route("/profile", methods=["GET", "POST"])
@login_required()
def profile():
    """A user's profile: researchers and experts choose their institution from the registry
    (or name one for a chair to confirm); researchers change their title and credit grade
    (self-declared again until an admin verifies them); experts declare the people,
    institutions or applications they have a conflict of interest with."""
    user = g.user
    if user.profile is None:
        user.profile = Profile()
    form = request.form
    if request.method == "POST" and "institution" in form and user.role in PICKS_INSTITUTION:
        try:
            institutions.choose(g.db, user, form["institution"],
                                form.get("institution_other", ""), f"user:{user.id}",
                                request.remote_addr)
        except InputError as exc:
            g.db.rollback()
            return render_profile(user, [reason_of(exc)]), 422
        g.db.commit()
        flash(_("Your institution is saved.") if user.profile.institution_id else
              _("Your institution is saved; a committee chair will confirm it."))
        return redirect(url_for("auth.profile"))
    if request.method == "POST" and "title" in form and user.role == Role.RESEARCHER:
        p = user.profile
        before = {"title": p.title, "credit_grade": p.credit_grade}
        p.title = form.get("title", "").strip()[:50]
        p.credit_grade = form.get("credit_grade", "").strip().upper()[:5]
        after = {"title": p.title, "credit_grade": p.credit_grade}
        if after != before:
            record(AuditAction.PROFILE_CHANGED, f"user:{user.id}",
                   {k: {"before": before[k], "after": after[k]} for k in before
                    if before[k] != after[k]})
            flash(_("Saved. A changed title or credit grade is self-declared until an "
                    "admin verifies it."))
        return redirect(url_for("auth.profile"))
    if request.method == "POST" and user.role == Role.EXPERT:
        declared = [line.strip()[:200] for line in form.get("conflicts", "").splitlines()
                    if line.strip()][:100]
        user.profile.declared_conflicts = declared
        g.db.commit()
        record(AuditAction.CONFLICTS_DECLARED, f"user:{user.id}", {"conflicts": declared})
        flash(_("Your declared conflicts of interest are saved."))
        return redirect(url_for("auth.profile"))
    return render_profile(user, [])


def render_profile(user: User, problems: list[str]):
    declared = [(line, institutions.resolve(g.db, line))
                for line in (user.profile.declared_conflicts or [])]
    return render_template("auth/profile.html", user=user, problems=problems,
                           registry=institutions.listing(g.db),
                           picks=user.role in PICKS_INSTITUTION,
                           proofs=credentials.current(g.db, user), declared=declared,
                           rejected=institutions.last_rejected(g.db, user))
