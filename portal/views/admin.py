"""The admin's pages: the institution registry (add, rename, aliases) and the verification
of researchers' professional titles and credit grades against evidence files. Rules live in
``portal.institutions`` and ``portal.credentials``; a refusal is the error page with its
reason and nothing changes."""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from sqlalchemy import or_, select

from approvals.states import Role
from portal import credentials, institutions
from portal.models import CredentialVerification, User
from portal.views.auth import login_required, reason_of
from sandbox.errors import SandboxError

bp = Blueprint("admin", __name__, url_prefix="/admin")
PER_PAGE = 100
MIME = {"pdf": "application/pdf", "png": "image/png", "jpeg": "image/jpeg"}


def _aliases(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _refused(exc: SandboxError) -> ResponseReturnValue:
    g.db.rollback()
    return render_template("error.html", status=exc.http_status,
                           reason=reason_of(exc)), exc.http_status


@bp.route("/institutions", methods=["GET", "POST"], endpoint="institutions")
@login_required(Role.ADMIN)
def institutions_page() -> ResponseReturnValue:
    if request.method == "POST":
        form = request.form
        try:
            row = institutions.add(g.db, f"user:{g.user.id}", form.get("name_zh", ""),
                                   form.get("name_en", ""), _aliases(form.get("aliases", "")),
                                   {"ip": request.remote_addr})
        except SandboxError as exc:
            return _refused(exc)
        flash(_("Added %(name)s to the registry.", name=row.label))
        return redirect(url_for("admin.institutions"))
    return render_template("admin/institutions.html", registry=institutions.listing(g.db))


@bp.route("/institutions/<int:institution_id>", methods=["GET", "POST"])
@login_required(Role.ADMIN)
def institution(institution_id: int) -> ResponseReturnValue:
    row = institutions.institution_or_404(g.db, institution_id)
    if request.method == "POST":
        form = request.form
        try:
            institutions.edit(g.db, f"user:{g.user.id}", row, form.get("name_zh", ""),
                              form.get("name_en", ""), _aliases(form.get("aliases", "")),
                              request.remote_addr)
        except SandboxError as exc:
            return _refused(exc)
        flash(_("Saved %(name)s.", name=row.label))
        return redirect(url_for("admin.institutions"))
    return render_template("admin/institution.html", row=row)


@bp.route("/credentials", endpoint="credentials")
@login_required(Role.ADMIN)
def credentials_page() -> ResponseReturnValue:
    """Researchers with their claims and what each rests on."""
    text = request.args.get("q", "").strip()
    query = select(User).where(User.role == Role.RESEARCHER)
    if text:
        like = f"%{text}%"
        query = query.where(or_(User.email.like(like), User.name.like(like)))
    people = g.db.scalars(query.order_by(User.id.desc()).limit(PER_PAGE)).all()
    return render_template("admin/credentials.html", q=text,
                           people=[(u, credentials.current(g.db, u)) for u in people])


@bp.route("/credentials/<int:user_id>", methods=["POST"])
@login_required(Role.ADMIN)
def verify(user_id: int) -> ResponseReturnValue:
    subject = g.db.get(User, user_id)
    if subject is None or subject.role != Role.RESEARCHER:
        abort(404)
    upload = request.files.get("evidence")
    try:
        row = credentials.verify(g.db, g.user, subject, request.form.get("kind", ""),
                                 request.form.get("value", ""),
                                 upload.read() if upload else b"", request.remote_addr)
    except SandboxError as exc:
        return _refused(exc)
    flash(_("Verified %(name)s's %(what)s (%(value)s) against the evidence; SHA-256 "
            "%(sha)s.", name=subject.name, value=row.value, sha=row.evidence_sha256,
            what=_("professional title") if row.kind == "title" else _("credit grade")))
    return redirect(url_for("admin.credentials", q=subject.email))


@bp.route("/evidence/<int:verification_id>")
@login_required(Role.ADMIN, Role.CHAIR)
def evidence(verification_id: int) -> ResponseReturnValue:
    row = g.db.get(CredentialVerification, verification_id)
    if row is None:
        abort(404)
    return Response(row.evidence, mimetype=MIME[row.evidence_type], headers={
        "Content-Disposition": f"attachment; filename=evidence-{row.id}.{row.evidence_type}",
        "X-Content-SHA256": row.evidence_sha256, "X-Content-Type-Options": "nosniff"})

