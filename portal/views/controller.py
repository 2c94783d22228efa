"""The controller's pages: the audit log (search, chain verification, CSV), anomaly
alerts, running projects with ε spent against ε granted (suspend, resume, revoke), export
review, and destruction certificates (verify, reject, overdue → blacklist). Rules live in
``portal.*`` and ``sandbox.*`` modules; a refusal from them becomes the error page with its
reason, and the request's uncommitted changes go with its session."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from sqlalchemy import Select, or_, select

from approvals.exports import VoteChoice
from approvals.states import Action, Role, State
from portal import (
    alerts,
    anchoring,
    blacklist,
    destruction,
    exports,
    previews,
    projects,
    signin,
)
from portal import gateway as portal_gateway
from portal.models import (
    Agreement,
    Application,
    DestructionTask,
    ExportFile,
    ExportRequest,
    User,
)
from portal.views import stepup
from portal.views.auth import login_required, reason_of, record
from sandbox.audit import AuditAction, audit_log, details_of
from sandbox.errors import SandboxError

bp = Blueprint("controller", __name__, url_prefix="/controller")
PER_PAGE = 100
RUNNING = (State.ACTIVE, State.SUSPENDED, State.CLOSING)


def _settings():
    return current_app.extensions["portal.settings"]


def _actor() -> str:
    return f"user:{g.user.id}"


# -- audit ------------------------------------------------------------------------------

def _filtered() -> Select:
    query = select(audit_log)
    text = request.args.get("q", "").strip()
    if text:
        like = f"%{text}%"
        query = query.where(or_(audit_log.c.actor.like(like), audit_log.c.subject.like(like),
                                audit_log.c.details.like(like)))
    if request.args.get("action"):
        query = query.where(audit_log.c.action == request.args["action"])
    if request.args.get("since"):
        query = query.where(audit_log.c.at >= request.args["since"])
    if request.args.get("until"):
        query = query.where(audit_log.c.at <= request.args["until"] + "T23:59:59.999999")
    return query


@bp.route("/audit")
@login_required(Role.CONTROLLER)
def audit_page() -> ResponseReturnValue:
    page = max(1, request.args.get("page", 1, type=int) or 1)
    rows = g.db.execute(_filtered().order_by(audit_log.c.seq.desc()).limit(PER_PAGE + 1)
                        .offset((page - 1) * PER_PAGE)).all()
    # A malformed entry (named by the chain's verification) is still listed.
    entries = [(row, details_of(row.details) or {}) for row in rows[:PER_PAGE]]
    last = g.db.execute(select(audit_log).where(audit_log.c.action ==
                                                AuditAction.AUDIT_VERIFIED)
                        .order_by(audit_log.c.seq.desc()).limit(1)).first()
    return render_template("controller/audit.html", entries=entries, page=page,
                           last=(last, details_of(last.details) or {}) if last
                           else None,
                           more=len(rows) > PER_PAGE, actions=sorted(a.value for a in
                                                                     AuditAction),
                           args=request.args)


@bp.route("/audit/verify", methods=["POST"])
@login_required(Role.CONTROLLER)
def audit_verify() -> ResponseReturnValue:
    # Both chains against their anchors outside their databases (witness files, signed
    # checkpoints, each other's records of them) — read on connections of their own, so
    # this request's transaction (SQLite: a write lock) ends first.
    g.db.rollback()
    result, at_gateway = anchoring.verify(_settings(), current_app.extensions["portal.engine"])
    # The result is itself audited; the page shows the latest verification from the log.
    record(AuditAction.AUDIT_VERIFIED, "audit:log", {**result, "gateway": at_gateway})
    return redirect(url_for("controller.audit_page"))


@bp.route("/audit.csv")
@login_required(Role.CONTROLLER)
def audit_csv() -> ResponseReturnValue:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["seq", "at", "actor", "action", "subject", "ip", "details", "hash"])
    for row in g.db.execute(_filtered().order_by(audit_log.c.seq)):
        details = details_of(row.details) or {}
        writer.writerow([row.seq, row.at, row.actor, row.action, row.subject,
                         details.get("ip", ""), row.details, row.hash])
    record(AuditAction.AUDIT_EXPORTED, "audit:log", {"filters": dict(request.args)})
    return Response("\ufeff" + out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": "attachment; filename=audit.csv"})


@bp.route("/alerts")
@login_required(Role.CONTROLLER)
def alerts_page() -> ResponseReturnValue:
    hours = min(max(request.args.get("hours", 24, type=float) or 24, 1), 24 * 90)
    found = alerts.scan(g.db, _settings(), hours)
    return render_template("controller/alerts.html", found=found, hours=hours)


# -- projects -----------------------------------------------------------------------------

def _budget(agreement: Agreement | None) -> dict | None:
    """ε granted and spent, from the gateway (None when it cannot be asked)."""
    settings = _settings()
    if agreement is None or not agreement.grant_id:
        return None
    try:
        grant = portal_gateway.grant(settings, agreement.grant_id, timeout=5)
    except SandboxError:
        return None
    return {"total": grant["epsilon_total"], "spent": grant["epsilon_spent"],
            "status": grant["status"],
            # a grant accounting in zCDP: its ρ, converted to the ε spent at this δ
            "rho": grant.get("rho_spent", 0.0), "pooled": grant.get("delta_pooled", 0.0)}


@bp.route("/projects")
@login_required(Role.CONTROLLER)
def projects_page() -> ResponseReturnValue:
    running = g.db.scalars(select(Application).where(Application.state.in_(RUNNING))
                           .order_by(Application.id)).all()
    rows = [(a, _budget(g.db.get(Agreement, a.id))) for a in running]
    return render_template("controller/projects.html", rows=rows)


@bp.route("/projects/<int:application_id>/<action>", methods=["POST"])
@login_required(Role.CONTROLLER)
def control(application_id: int, action: str) -> ResponseReturnValue:
    application = g.db.get(Application, application_id)
    if application is None or action not in ("suspend", "resume", "revoke"):
        abort(404)
    projects.control(g.db, _settings(), application, Action(action), Role.CONTROLLER,
                     _actor(), request.form.get("reason", ""))
    flash(_("Project %(id)d is now %(state)s.", id=application.id,
            state=application.state))
    return redirect(url_for("controller.projects_page"))


# -- destruction and blacklist ------------------------------------------------------------

@bp.route("/destruction")
@login_required(Role.CONTROLLER)
def destruction_page() -> ResponseReturnValue:
    tasks = g.db.scalars(select(DestructionTask).order_by(DestructionTask.due_at)).all()
    return render_template("controller/destruction.html",
                           tasks=[(t, g.db.get(Application, t.application_id)) for t in tasks],
                           proposals=destruction.overdue(g.db), now=datetime.now(UTC))


@bp.route("/destruction/<int:application_id>/certificate.pdf")
@login_required(Role.CONTROLLER)
def certificate(application_id: int) -> ResponseReturnValue:
    task = g.db.get(DestructionTask, application_id)
    if task is None or task.certificate is None:
        abort(404)
    return Response(task.certificate, mimetype="application/pdf", headers={
        "Content-Disposition": f"attachment; filename=destruction-{application_id}.pdf",
        "X-Content-SHA256": task.certificate_sha256 or ""})


@bp.route("/destruction/<int:application_id>/decide", methods=["POST"])
@login_required(Role.CONTROLLER)
def decide(application_id: int) -> ResponseReturnValue:
    application = g.db.get(Application, application_id)
    if application is None:
        abort(404)
    verified = request.form.get("verdict") == "verify"
    destruction.decide(g.db, _settings(), application, g.user, verified,
                       request.form.get("reasons", ""))
    flash(_("Certificate verified; the project is closed.") if verified else
          _("Certificate returned to the researcher."))
    return redirect(url_for("controller.destruction_page"))


@bp.route("/blacklist/<int:user_id>", methods=["POST"])
@login_required(Role.CONTROLLER)
def blacklist_user(user_id: int) -> ResponseReturnValue:
    user = g.db.get(User, user_id)
    if user is None:
        abort(404)
    suspended = blacklist.confirm(g.db, _settings(), user, _actor(),
                                  request.form.get("reason", ""))
    flash(_("%(name)s is blacklisted; %(n)d active project(s) suspended.", name=user.name,
            n=len(suspended)))
    return redirect(url_for("controller.destruction_page"))


# -- exports ------------------------------------------------------------------------------

def _export(export_id: int) -> ExportRequest:
    request_ = g.db.get(ExportRequest, export_id)
    if request_ is None:
        abort(404)
    return request_


@bp.route("/exports")
@login_required(Role.CONTROLLER)
def exports_page() -> ResponseReturnValue:
    problem = None
    try:
        exports.sync(g.db, _settings())
    except SandboxError as exc:
        g.db.rollback()
        problem = reason_of(exc)
    listed = g.db.scalars(select(ExportRequest).order_by(ExportRequest.id.desc())
                          .limit(PER_PAGE)).all()
    return render_template("controller/exports.html", requests=listed, problem=problem)


# The review page shows what researchers wrote: no script runs on it, nothing frames it.
REVIEW_POLICY = ("default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
                 "script-src 'self'; object-src 'none'; frame-src 'none'; base-uri 'none'; "
                 "form-action 'self'; frame-ancestors 'none'")
# A preview served alone is a sandboxed document that may load nothing.
PREVIEW_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"


@bp.route("/exports/<int:export_id>")
@login_required(Role.CONTROLLER)
def export_page(export_id: int) -> ResponseReturnValue:
    return _export_page(_export(export_id))


def _export_page(request_: ExportRequest, problem: str | None = None
                 ) -> ResponseReturnValue:
    settings = _settings()
    voted = any(v.reviewer == f"user:{g.user.id}"
                for v in exports.round_votes(g.db, request_))
    names = {f"user:{u.id}": u.name for u in g.db.scalars(
        select(User).where(User.role == Role.CONTROLLER))}
    page = render_template(
        "controller/export.html", request_=request_,
        application=g.db.get(Application, request_.application_id),
        votes=exports.visible_votes(g.db, settings, request_, g.user), voted=voted,
        required=settings.export_reviewers, earlier=exports.earlier(g.db, request_),
        names=names, problem=problem,
        # once released, the files are read only in a watermarked download
        previews={} if request_.bundle is not None else
        {f.id: previews.preview(f.name, f.content) for f in request_.files})
    return Response(page, status=200 if problem is None else 401,
                    headers={"Content-Security-Policy": REVIEW_POLICY,
                             "X-Content-Type-Options": "nosniff"})


def _export_file(export_id: int, file_id: int) -> ExportFile:
    file = g.db.get(ExportFile, file_id)
    if file is None or file.request_id != export_id:
        abort(404)
    return file


def _sealed(body: bytes, mimetype: str) -> Response:
    return Response(body, mimetype=mimetype, headers={
        "Content-Security-Policy": PREVIEW_POLICY, "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline", "Cache-Control": "no-store"})


@bp.route("/exports/<int:export_id>/files/<int:file_id>/preview.png")
@login_required(Role.CONTROLLER)
def export_file_picture(export_id: int, file_id: int) -> ResponseReturnValue:
    """A figure's pixels, a PDF page, an SVG figure or a notebook's figure, drawn as PNG
    by the server — never the file's own bytes. A released file is not previewed: it
    leaves only in the watermarked bundle, after a fresh code."""
    file = _export_file(export_id, file_id)
    if _export(export_id).bundle is not None:
        abort(404)
    output = request.args.get("output", "")
    try:
        png = previews.picture(file.name, file.content, request.args.get("page", 0, int),
                               request.args.get("cell", type=int),
                               int(output) if output.isdigit() else output or None)
    except previews.NoPicture:
        abort(404)
    return _sealed(png, "image/png")


@bp.route("/exports/<int:export_id>/vote", methods=["POST"])
@login_required(Role.CONTROLLER)
def export_vote(export_id: int) -> ResponseReturnValue:
    request_ = _export(export_id)
    try:
        exports.vote(g.db, _settings(), request_, g.user,
                     VoteChoice(request.form.get("choice", "")),
                     request.form.get("comment", ""))
    except ValueError:
        return render_template("error.html", status=422,
                               reason=_("Choose approve, request changes or reject.")), 422
    flash(_("Vote recorded."))
    return redirect(url_for("controller.export_page", export_id=export_id))


@bp.route("/exports/<int:export_id>/release", methods=["POST"])
@login_required(Role.CONTROLLER)
def export_release(export_id: int) -> ResponseReturnValue:
    request_ = _export(export_id)
    refused = stepup.check(signin.Purpose.EXPORT_RELEASE, f"export:{export_id}")
    if refused is not None:
        return _export_page(request_, refused)
    exports.release(g.db, _settings(), request_, _actor())
    flash(_("Released: the signed bundle is ready."))
    return redirect(url_for("controller.export_page", export_id=export_id))


@bp.route("/exports/<int:export_id>/bundle.zip", methods=["GET", "POST"])
@login_required(Role.CONTROLLER)
def export_bundle(export_id: int) -> ResponseReturnValue:
    """The released bundle, after a fresh code (step-up)."""
    request_ = _export(export_id)
    if request_.bundle is None:
        abort(404)
    return stepup.download(
        signin.Purpose.BUNDLE_DOWNLOAD, f"export:{export_id}",
        _("Download the released bundle"),
        lambda: Response(exports.download(g.db, _settings(), request_, g.user),
                         mimetype="application/zip", headers={
            "Content-Disposition": f"attachment; filename=export-{export_id}.zip"}))
