"""The controller's pages: the audit log (search, chain verification, CSV), anomaly
alerts, running projects with ε spent against ε granted (suspend, resume, revoke), export
review, and destruction certificates (verify, reject, overdue → blacklist). Rules live in
``portal.*`` and ``sandbox.*`` modules; a refusal from them becomes the error page with its
reason, and the request's uncommitted changes go with its session."""

from __future__ import annotations

import base64
import csv
import io
import json
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
from portal import alerts, anchoring, blacklist, destruction, exports, projects
from portal import gateway as portal_gateway
from portal.models import Agreement, Application, DestructionTask, ExportRequest, User
from portal.views.auth import login_required, reason_of, record
from sandbox.audit import AuditAction, audit_log
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
    entries = [(row, json.loads(row.details)) for row in rows[:PER_PAGE]]
    last = g.db.execute(select(audit_log).where(audit_log.c.action ==
                                                AuditAction.AUDIT_VERIFIED)
                        .order_by(audit_log.c.seq.desc()).limit(1)).first()
    return render_template("controller/audit.html", entries=entries, page=page,
                           last=(last, json.loads(last.details)) if last else None,
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
        details = json.loads(row.details)
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
            "status": grant["status"]}


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


@bp.route("/exports/<int:export_id>")
@login_required(Role.CONTROLLER)
def export_page(export_id: int) -> ResponseReturnValue:
    request_ = _export(export_id)
    settings = _settings()
    voted = any(v.reviewer == f"user:{g.user.id}"
                for v in exports.round_votes(g.db, request_))
    names = {f"user:{u.id}": u.name for u in g.db.scalars(
        select(User).where(User.role == Role.CONTROLLER))}
    return render_template(
        "controller/export.html", request_=request_,
        application=g.db.get(Application, request_.application_id),
        votes=exports.visible_votes(g.db, settings, request_, g.user), voted=voted,
        required=settings.export_reviewers, earlier=exports.earlier(g.db, request_),
        names=names,
        previews={f.id: _preview(f.name, f.content) for f in request_.files})


def _preview(name: str, content: bytes) -> dict:
    """What a reviewer sees of a file: text inline, images inline, others by size."""
    suffix = name.lower().rsplit(".", 1)[-1]
    if suffix in ("png", "jpg", "jpeg"):
        mime = "png" if suffix == "png" else "jpeg"
        return {"image": f"data:image/{mime};base64,{base64.b64encode(content).decode()}"}
    if suffix in ("csv", "tsv", "txt", "md", "py", "r", "json"):
        return {"text": content.decode("utf-8", errors="replace")[:20_000]}
    return {}


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
    exports.release(g.db, _settings(), request_, _actor())
    flash(_("Released: the signed bundle is ready."))
    return redirect(url_for("controller.export_page", export_id=export_id))


@bp.route("/exports/<int:export_id>/bundle.zip")
@login_required(Role.CONTROLLER)
def export_bundle(export_id: int) -> ResponseReturnValue:
    request_ = _export(export_id)
    if request_.bundle is None:
        abort(404)
    return Response(request_.bundle, mimetype="application/zip", headers={
        "Content-Disposition": f"attachment; filename=export-{export_id}.zip"})
