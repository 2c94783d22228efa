"""Accounts: registration, sign-in (password, then a TOTP code — enrolled at the first
sign-in — with lockout and rate limits), sign-out that ends the server-side session, the
language switch. Rules in ``portal.signin`` and ``portal.security``."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import wraps
from urllib.parse import urlsplit

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
from portal import credentials, i18n, institutions, limiter, signin
from portal.models import Profile, User
from portal.security import (
    hash_password,
    local_path,
    password_problem,
    totp_qr_data_uri,
)
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError, SandboxError, Unauthenticated

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
    """Require a signed-in user who has also given a TOTP code in this session, optionally
    of some roles."""
    def wrap(view):
        @wraps(view)
        def inner(*args, **kwargs):
            if g.user is None:
                here = request.full_path if request.query_string else request.path
                return redirect(url_for("auth.login", next=here))
            if not passed_mfa():
                return redirect(url_for("auth.mfa"))
            if roles and g.user.role not in roles:
                abort(403)
            return view(*args, **kwargs)
        return inner
    return wrap


def passed_mfa() -> bool:
    """Whether this request's session has passed the TOTP step."""
    record = getattr(g, "signin", None)
    return record is not None and record.mfa_at is not None


def start_session(user: User, *, mfa_done: bool) -> None:
    """A fresh server-side session for ``user`` in a fresh cookie (keeping the chosen
    language and where to go next): a session id is never carried across a sign-in step,
    so one planted before sign-in is worth nothing after it."""
    keep = {k: session[k] for k in ("lang", "next") if k in session}
    old = getattr(g, "signin", None)
    if old is not None:
        old.ended_at, old.ended_why = datetime.now(UTC), "renewed"
        old.pending_totp_secret = None
    session.clear()
    session_id = signin.open_session(g.db, user, mfa_done=mfa_done)
    session.update(sid=session_id, **keep)
    g.user, g.signin = user, signin.find(g.db, session_id)


def end_session() -> None:
    """Sign out: the server-side record ends, so the cookie (and any copy) is dead."""
    record = getattr(g, "signin", None)
    if record is not None:
        signin.end(g.db, record, "signed_out")
    language = session.get("lang")
    session.clear()
    if language:
        session["lang"] = language
    g.user, g.signin = None, None


@bp.route("/lang/<code>")
def language(code: str):
    if code in i18n.LANGUAGES:
        session["lang"] = code
    back = urlsplit(request.referrer or "")
    here = back.path + (f"?{back.query}" if back.query else "")
    same_site = back.netloc == request.host and local_path(here)
    return redirect(here if same_site else url_for("catalog.index"))


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
        idle = request.args.get("idle", type=int)
        if idle:
            flash(_("Your session was locked after %(minutes)d minutes without activity.",
                    minutes=idle))
        if request.args.get("expired") == "lifetime":
            flash(_("Your session ended %(hours)g hours after sign-in; please sign in again.",
                    hours=settings().session_hours))
        elif request.args.get("expired") == "locked":
            flash(_("This account is locked. Try again later."))
        return render_template("auth/login.html")
    try:
        user = signin.check_credentials(g.db, settings(), request.form.get("email", ""),
                                        request.form.get("password", ""))
    except signin.AccountLocked:
        return render_template("auth/login.html",
                               error=_("This account is locked. Try again later.")), 403
    except Unauthenticated:
        return render_template("auth/login.html",
                               error=_("Wrong e-mail or password.")), 401
    session.pop("next", None)
    target = local_path(request.args.get("next"))
    if target:
        session["next"] = target
    start_session(user, mfa_done=False)
    return redirect(url_for("auth.mfa"))


def _mfa_page(user: User, error: str | None = None, status: int = 200):
    """The code page; for an account without an authenticator, with the QR code and key of
    the secret drawn for this sign-in session (never the account's own)."""
    secret = None if user.totp_enabled else signin.enrolment_secret(g.db, g.signin)
    return render_template("auth/mfa.html", user=user, error=error, secret=secret,
                           qr=secret and totp_qr_data_uri(secret, user.email)), status


@bp.route("/mfa", methods=["GET", "POST"])
@limiter.limit(lambda: settings().login_rate, methods=["POST"])
def mfa():
    """The second step of every sign-in; an account without an authenticator enrols one
    here (QR code and key, drawn for this sign-in), at its first sign-in or its next one."""
    user = g.user
    if user is None:
        return redirect(url_for("auth.login"))
    if passed_mfa():
        return redirect(session.pop("next", None) or url_for("catalog.index"))
    if request.method == "GET":
        return _mfa_page(user)
    code = request.form.get("code", "")
    try:
        if not user.totp_enabled:
            signin.enrol(g.db, settings(), g.signin, code)
        elif g.signin.pending_totp_secret:  # this sign-in showed a key, now void
            signin.void_enrolment(g.db, g.signin)
        else:
            signin.check_code(g.db, settings(), user, code, signin.Purpose.SIGN_IN)
    except signin.AccountLocked:
        end_session()
        return render_template("auth/login.html",
                               error=_("This account is locked. Try again later.")), 403
    except signin.AlreadyEnrolled:
        return _mfa_page(user, _("This account has just enrolled an authenticator in "
                                 "another sign-in. Enter the code of that authenticator; "
                                 "if it is not yours, tell an administrator."), 401)
    except signin.CodeRefused as exc:
        return _mfa_page(user, _("This code was already used; wait for the next one.")
                         if "already used" in exc.reason else _("Wrong code."), 401)
    start_session(user, mfa_done=True)
    return redirect(session.pop("next", None) or url_for("catalog.index"))


@bp.route("/logout", methods=["POST"])
def logout():
    end_session()
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
