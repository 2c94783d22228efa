"""A researcher's applications: draft with per-field justification, eligibility shown with
reasons, submission. Rules come from ``approvals``."""

from __future__ import annotations

import logging

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
from sqlalchemy import select

from approvals import eligibility, states
from approvals import exports as export_rules
from approvals.eligibility import Applicant, EligibilityPolicy
from approvals.errors import Ineligible
from approvals.exports import ExportAction, ExportState
from approvals.states import Action, Role, State
from portal import catalog as datasets
from portal import credentials, destruction, exports, sandboxes, signin, workflow
from portal.agreement import CLAUSES
from portal.models import Agreement, Application, DestructionTask, ExportRequest
from portal.views import stepup
from portal.views.auth import login_required, reason_of
from sandbox.errors import InputError, SandboxError
from sandbox.purposes import PURPOSES

bp = Blueprint("researcher", __name__, url_prefix="/applications")
log = logging.getLogger("portal.researcher")


def policy() -> EligibilityPolicy:
    return credentials.policy(current_app.extensions["portal.settings"])


def applicant() -> Applicant:
    """The signed-in researcher as eligibility sees them (each claim with its basis)."""
    return credentials.applicant(g.db, g.user)


def own(application_id: int) -> Application:
    app = g.db.get(Application, application_id)
    if app is None or app.researcher_id != g.user.id:
        abort(404)
    return app


@bp.route("/")
@login_required(Role.RESEARCHER)
def mine() -> ResponseReturnValue:
    apps = g.db.scalars(select(Application).where(Application.researcher_id == g.user.id)
                        .order_by(Application.id.desc())).all()
    return render_template("researcher/list.html", applications=apps)


@bp.route("/new", methods=["GET", "POST"])
@login_required(Role.RESEARCHER)
def new() -> ResponseReturnValue:
    entries = {e["id"]: e for e in datasets.load(
        current_app.extensions["portal.settings"].datasets_dir)}
    chosen = request.values.get("dataset") or next(iter(entries), None)
    entry = entries.get(chosen)
    form = request.form
    problems: list[str] = []
    if request.method == "POST" and entry is not None:
        picked = [f["name"] for f in datasets.fields(entry) if form.get(f"field:{f['name']}")]
        if not form.get("title", "").strip():
            problems.append(_("Give the project a title."))
        if not picked:
            problems.append(_("Request at least one field."))
        for name in picked:
            if not form.get(f"why:{name}", "").strip():
                problems.append(_("Justify why you need the field %(name)s.", name=name))
        try:
            epsilon = float(form.get("epsilon", "1"))
            term = int(form.get("term_months", "12"))
            if not (0 < epsilon <= 10 and 1 <= term <= 60):
                raise ValueError
        except ValueError:
            problems.append(_("ε must be between 0 and 10 and the term 1 to 60 months."))
            epsilon, term = 1.0, 12
        pdf = request.files.get("ethics")
        data = pdf.read() if pdf and pdf.filename else None
        if data is not None and not data.startswith(b"%PDF-"):
            problems.append(_("The ethics approval must be a PDF file."))
        draft = workflow.Draft(
            entry["id"], form.get("title", ""), form.get("summary", ""),
            form.get("purpose", ""), bool(form.get("non_profit")), epsilon, term,
            [t.strip() for t in form.get("team", "").split(",") if t.strip()],
            [(name, form.get(f"why:{name}", "")) for name in picked], data)
        if not problems:
            context = workflow.Context(g.db, g.user,
                                       current_app.extensions["portal.settings"],
                                       request.remote_addr)
            try:
                application = workflow.create_draft(context, entry, draft)
            except InputError as exc:
                g.db.rollback()
                problems.append(exc.reason)
            else:
                return redirect(url_for("researcher.show", application_id=application.id))
    return render_template("researcher/new.html", entries=entries, entry=entry,
                           fields=datasets.fields(entry) if entry else [], form=form,
                           problems=problems, purposes=PURPOSES,
                           reasons=eligibility.reasons(applicant(), "medical_research", True,
                                                       policy())), 422 if problems else 200


@bp.route("/<int:application_id>")
@login_required(Role.RESEARCHER)
def show(application_id: int) -> ResponseReturnValue:
    app = own(application_id)
    assessment = eligibility.assess(applicant(), app.purpose, app.non_profit, policy())
    reasons = assessment.reasons
    settings = current_app.extensions["portal.settings"]
    if g.db.get(Agreement, app.id) is not None:  # a project with a sandbox: collect what
        try:  # it sent, so a request waiting for confirmation shows at once
            exports.sync(g.db, settings)
        except SandboxError as exc:  # the gateway is away: the minute's round collects it
            g.db.rollback()
            log.warning("export requests not collected: %s", exc.reason)
    return render_template("researcher/show.html", app=app, reasons=reasons,
                           unverified=assessment.unverified,
                           decision=workflow.latest_decision(g.db, app),
                           sandbox=sandboxes.view(g.db, settings, app),
                           destructions=sandboxes.destruction_records(g.db, app),
                           task=g.db.get(DestructionTask, app.id),
                           exports=g.db.scalars(select(ExportRequest).where(
                               ExportRequest.application_id == app.id)
                               .order_by(ExportRequest.id)).all(),
                           can_submit=not reasons and any(
                               states.can(State(app.state), action, Role.RESEARCHER)
                               for action in (Action.SUBMIT, Action.RESUBMIT)))


@bp.route("/<int:application_id>/submit", methods=["POST"])
@login_required(Role.RESEARCHER)
def submit(application_id: int) -> ResponseReturnValue:
    app = own(application_id)
    context = workflow.Context(g.db, g.user, current_app.extensions["portal.settings"],
                               request.remote_addr)
    try:
        workflow.submit(context, app, applicant(), policy())
    except Ineligible as exc:
        flash(_("This application cannot be submitted yet."))
        return render_template("researcher/show.html", app=app, reasons=exc.reasons,
                               decision=workflow.latest_decision(g.db, app),
                               can_submit=False), 403
    flash(_("Submitted. The committee will review it."))
    return redirect(url_for("researcher.show", application_id=app.id))


@bp.route("/<int:application_id>/agreement")
@login_required(Role.RESEARCHER)
def agreement(application_id: int) -> ResponseReturnValue:
    app = own(application_id)
    decision = workflow.latest_decision(g.db, app)
    if decision is None or decision.verdict != "approve":
        abort(404)
    return render_template("researcher/agreement.html", app=app, decision=decision,
                           signed=g.db.get(Agreement, app.id), clauses=CLAUSES)


@bp.route("/<int:application_id>/sign", methods=["POST"])
@login_required(Role.RESEARCHER)
def sign(application_id: int) -> ResponseReturnValue:
    app = own(application_id)
    if not request.form.get("accept"):
        return render_template("error.html", status=422,
                               reason=_("Tick the box to accept the agreement.")), 422
    context = workflow.Context(g.db, g.user, current_app.extensions["portal.settings"],
                               request.remote_addr)
    try:
        workflow.sign(context, app)
    except SandboxError as exc:
        g.db.rollback()
        return render_template("error.html", status=exc.http_status,
                               reason=exc.reason), exc.http_status
    flash(_("Agreement signed; your project is active."))
    return redirect(url_for("researcher.agreement", application_id=app.id))


@bp.route("/<int:application_id>/agreement.pdf", methods=["GET", "POST"])
@login_required(Role.RESEARCHER)
def agreement_pdf(application_id: int) -> ResponseReturnValue:
    """The signed agreement, after a fresh code (step-up)."""
    app = own(application_id)
    record = g.db.get(Agreement, app.id)
    if record is None:
        abort(404)
    return stepup.download(
        signin.Purpose.AGREEMENT_DOWNLOAD, f"application:{app.id}",
        _("Download the signed agreement (PDF)"),
        lambda: Response(record.pdf, mimetype="application/pdf", headers={
            "Content-Disposition": f"attachment; filename=DUA-{app.id}.pdf",
            "X-Content-SHA256": record.sha256}))


@bp.route("/<int:application_id>/destruction-form.pdf")
@login_required(Role.RESEARCHER)
def destruction_form(application_id: int) -> ResponseReturnValue:
    app = own(application_id)
    return Response(destruction.form(g.db, app), mimetype="application/pdf", headers={
        "Content-Disposition": f"attachment; filename=destruction-form-{app.id}.pdf"})


@bp.route("/<int:application_id>/destruction", methods=["POST"])
@login_required(Role.RESEARCHER)
def destruction_upload(application_id: int) -> ResponseReturnValue:
    app = own(application_id)
    upload = request.files.get("certificate")
    destruction.submit(g.db, current_app.extensions["portal.settings"], app, g.user,
                       upload.read() if upload else b"")
    flash(_("Certificate submitted; a controller will verify it."))
    return redirect(url_for("researcher.show", application_id=app.id))


@bp.route("/<int:application_id>/exports/<int:export_id>/withdraw", methods=["POST"])
@login_required(Role.RESEARCHER)
def export_withdraw(application_id: int, export_id: int) -> ResponseReturnValue:
    app = own(application_id)
    request_ = g.db.get(ExportRequest, export_id)
    if request_ is None or request_.application_id != app.id:
        abort(404)
    exports.withdraw(g.db, request_, g.user)
    flash(_("Export request withdrawn."))
    return redirect(url_for("researcher.show", application_id=app.id))


@bp.route("/<int:application_id>/exports/<int:export_id>/confirm", methods=["GET", "POST"])
@login_required(Role.RESEARCHER)
def export_confirm(application_id: int, export_id: int) -> ResponseReturnValue:
    """A request sent from the sandbox: what it holds, and its confirmation with a fresh
    code (step-up) — only then do the automated checks and the review start."""
    app = own(application_id)
    request_ = g.db.get(ExportRequest, export_id)
    if request_ is None or request_.application_id != app.id:
        abort(404)
    waiting = export_rules.can(request_.state, ExportAction.CONFIRM, Role.RESEARCHER)

    def page(problem: str | None, status: int) -> ResponseReturnValue:
        return render_template("researcher/export_confirm.html", app=app, request_=request_,
                               waiting=waiting, problem=problem), status

    if request.method == "GET":
        return page(None, 200)
    if not waiting:
        return page(_("This export request does not wait for a confirmation."), 409)
    refused = stepup.check(signin.Purpose.EXPORT_REQUEST, f"export:{export_id}")
    if refused is not None:
        return page(refused, 401)
    exports.confirm(g.db, current_app.extensions["portal.settings"], request_, g.user)
    flash(_("Export request confirmed; automated checks and the controllers' review "
            "follow.") if request_.state != ExportState.RETURNED else
          _("Export request confirmed; it failed the automated checks — see the reasons."))
    return redirect(url_for("researcher.show", application_id=app.id))


@bp.route("/<int:application_id>/exports/<int:export_id>/bundle.zip", methods=["GET", "POST"])
@login_required(Role.RESEARCHER)
def export_bundle(application_id: int, export_id: int) -> ResponseReturnValue:
    """The author's copy of a released bundle, after a fresh code (step-up), marked with
    the author's account and the time like every download."""
    app = own(application_id)
    request_ = g.db.get(ExportRequest, export_id)
    if request_ is None or request_.application_id != app.id or request_.bundle is None:
        abort(404)
    settings = current_app.extensions["portal.settings"]
    return stepup.download(
        signin.Purpose.BUNDLE_DOWNLOAD, f"export:{export_id}",
        _("Download the released bundle"),
        lambda: Response(exports.download(g.db, settings, request_, g.user),
                         mimetype="application/zip", headers={
            "Content-Disposition": f"attachment; filename=export-{export_id}.zip"}))


@bp.route("/<int:application_id>/exports/new", methods=["GET", "POST"])
@login_required(Role.RESEARCHER)
def export_new(application_id: int) -> ResponseReturnValue:
    """Choose files in the running sandbox and releases to ask to take out."""
    app = own(application_id)
    settings = current_app.extensions["portal.settings"]
    problems: list[str] = []
    if request.method == "POST":
        refused = stepup.check(signin.Purpose.EXPORT_REQUEST, f"application:{app.id}")
        if refused is not None:
            return render_template("researcher/export_new.html", app=app,
                                   problems=[refused],
                                   chosen=exports.choices(g.db, settings, app, g.user),
                                   form=request.form), 401
        try:
            exports.request_from_sandbox(g.db, settings, app, g.user,
                                         request.form.getlist("file"),
                                         request.form.getlist("release"),
                                         request.form.get("note", ""))
        except InputError as exc:
            g.db.rollback()
            problems.append(reason_of(exc))
        else:
            flash(_("Export request sent; automated checks and the controllers' review "
                    "follow."))
            return redirect(url_for("researcher.show", application_id=app.id))
    return render_template("researcher/export_new.html", app=app, problems=problems,
                           chosen=exports.choices(g.db, settings, app, g.user),
                           form=request.form), 422 if problems else 200
