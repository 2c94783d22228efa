"""The data committee: the chair assigns a conflict-free panel, confirms institutions typed
as "other", and decides; experts score the five dimensions. Both see the applicant's
eligibility beside what it relied on (self-declared or verified claims). All rules come
from ``approvals`` through ``portal.workflow``, ``portal.institutions`` and
``portal.credentials``."""

from __future__ import annotations

from flask import (
    Blueprint,
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

from approvals import assignment
from approvals.decisions import Decision, Verdict
from approvals.errors import ConflictOfInterest, InvalidDecision, NotPermitted
from approvals.institutions import ClaimAction
from approvals.scoring import LABELS, Dimension
from approvals.states import Role, State
from portal import conflicts, credentials, institutions, workflow
from portal.models import Application, Assignment, User
from portal.views.auth import login_required, reason_of
from sandbox.errors import SandboxError

bp = Blueprint("committee", __name__, url_prefix="/committee")
PER_PAGE = 50


def ctx() -> workflow.Context:
    return workflow.Context(g.db, g.user, current_app.extensions["portal.settings"],
                            request.remote_addr)


def application_or_404(application_id: int) -> Application:
    app = g.db.get(Application, application_id)
    if app is None or app.state == State.DRAFT:
        abort(404)
    return app


@bp.route("/")
@login_required(Role.CHAIR, Role.EXPERT)
def queue() -> ResponseReturnValue:
    page = max(1, request.args.get("page", 1, type=int) or 1)
    if g.user.role == Role.CHAIR:
        query = select(Application).where(Application.state.in_(
            [State.SUBMITTED, State.UNDER_REVIEW]))
    else:
        query = select(Application).join(Assignment).where(
            Assignment.expert_id == g.user.id, Application.state == State.UNDER_REVIEW)
    apps = g.db.scalars(query.order_by(Application.id).limit(PER_PAGE + 1)
                        .offset((page - 1) * PER_PAGE)).all()
    return render_template("committee/queue.html", applications=apps[:PER_PAGE], page=page,
                           more=len(apps) > PER_PAGE)


@bp.route("/applications/<int:application_id>", methods=["GET"])
@login_required(Role.CHAIR)
def show(application_id: int) -> ResponseReturnValue:
    app = application_or_404(application_id)
    settings = current_app.extensions["portal.settings"]
    config = workflow.rubric(settings)
    pool = g.db.scalars(select(User).where(User.role == Role.EXPERT).order_by(User.name)).all()
    case = conflicts.case_of(g.db, settings, app)
    found = {e.id: assignment.conflict(conflicts.expert_of(g.db, settings, e, app), case)
             for e in pool}
    panel = workflow.panel(g.db, settings, app)
    profile = app.researcher.profile
    claim = profile.institution_claim if profile else None
    return render_template(
        "committee/show.html", app=app, pool=pool, conflicts=found, config=config,
        labels=LABELS, dimensions=list(Dimension),
        assigned=workflow.assigned_experts(g.db, app),
        reviews=panel.reviews, excluded=panel.excluded, summary=panel.summary,
        decision=workflow.latest_decision(g.db, app),
        standing=credentials.standing(g.db, settings, app),
        changes=conflicts.changes(g.db, app),
        chair_conflict=conflicts.chair_conflict(g.db, settings, g.user, app),
        claim=claim, registry=institutions.listing(g.db),
        alike={claim.id: institutions.look_alike(g.db, claim.text)} if claim else {})


@bp.route("/applications/<int:application_id>/assign", methods=["POST"])
@login_required(Role.CHAIR)
def assign(application_id: int) -> ResponseReturnValue:
    app = application_or_404(application_id)
    ids = [int(i) for i in request.form.getlist("expert") if i.isdigit()]
    experts = [g.db.get(User, i) for i in ids]
    try:
        workflow.assign(ctx(), app, [e for e in experts if e is not None])
    except SandboxError as exc:
        g.db.rollback()
        return render_template("error.html", status=422, reason=reason_of(exc)), 422
    flash(_("Experts assigned; review has started."))
    return redirect(url_for("committee.show", application_id=app.id))


@bp.route("/applications/<int:application_id>/review", methods=["GET", "POST"])
@login_required(Role.EXPERT)
def review(application_id: int) -> ResponseReturnValue:
    app = application_or_404(application_id)
    if g.user.id not in {e.id for e in workflow.assigned_experts(g.db, app)}:
        abort(403)
    settings = current_app.extensions["portal.settings"]
    if request.method == "POST":
        try:
            values = {d.value: int(request.form.get(d.value, "0")) for d in Dimension}
        except ValueError:
            values = {}
        try:
            workflow.score(ctx(), app, values, request.form.get("comments", ""),
                           request.form.getlist("remove"))
        except ConflictOfInterest as exc:  # arose after assignment; the refusal is audited
            return render_template("error.html", status=403, reason=reason_of(exc)), 403
        except (InvalidDecision, NotPermitted) as exc:
            g.db.rollback()
            return render_template("error.html", status=422, reason=reason_of(exc)), 422
        flash(_("Thank you, your scores are recorded."))
        return redirect(url_for("committee.queue"))
    conflict = conflicts.conflict(g.db, settings, g.user, app)
    return render_template("committee/review.html", app=app, labels=LABELS,
                           dimensions=list(Dimension), conflict=conflict,
                           standing=credentials.standing(g.db, settings, app))


@bp.route("/applications/<int:application_id>/decide", methods=["POST"])
@login_required(Role.CHAIR)
def decide(application_id: int) -> ResponseReturnValue:
    app = application_or_404(application_id)
    form = request.form
    try:
        verdict = Verdict(form.get("verdict", ""))
        epsilon = float(form["epsilon"]) if form.get("epsilon") else None
        delta = float(form.get("delta") or 0)
        term = int(form["term_months"]) if form.get("term_months") else None
    except ValueError:
        return render_template("error.html", status=422,
                               reason=_("Check the verdict, ε, δ and term.")), 422
    decision = Decision(verdict, form.get("reasons", ""), frozenset(form.getlist("remove")),
                        epsilon, delta, term)
    try:
        workflow.decide(ctx(), app, decision)
    except SandboxError as exc:
        g.db.rollback()
        return render_template("error.html", status=exc.http_status,
                               reason=reason_of(exc)), exc.http_status
    flash(_("Decision recorded and the applicant notified."))
    return redirect(url_for("committee.show", application_id=app.id))


@bp.route("/institutions")
@login_required(Role.CHAIR)
def claims() -> ResponseReturnValue:
    """Institutions typed as "other", waiting for a chair."""
    pending = institutions.pending_claims(g.db)
    return render_template("committee/claims.html", claims=pending,
                           registry=institutions.listing(g.db),
                           alike={c.id: institutions.look_alike(g.db, c.text) for c in pending})


@bp.route("/institutions/claims/<int:claim_id>", methods=["POST"])
@login_required(Role.CHAIR)
def confirm_claim(claim_id: int) -> ResponseReturnValue:
    """Map a claim to a registry entry, add it as a new entry, or reject it."""
    claim = institutions.claim_or_404(g.db, claim_id)
    form = request.form
    try:
        action = ClaimAction(form.get("action", ""))
        target = form.get("institution", "")
        institutions.confirm(g.db, g.user, claim, action,
                             institution_id=int(target) if target.isdigit() else None,
                             name_zh=form.get("name_zh", ""), name_en=form.get("name_en", ""),
                             reasons=form.get("reasons", ""), ip=request.remote_addr)
    except ValueError:
        return render_template("error.html", status=422,
                               reason=_("Choose map, add or reject.")), 422
    except SandboxError as exc:
        g.db.rollback()
        return render_template("error.html", status=exc.http_status,
                               reason=reason_of(exc)), exc.http_status
    flash(_("Institution confirmed.") if action != ClaimAction.REJECT else
          _("Institution rejected; the person will choose again."))
    back = form.get("back", "")
    if back.isdigit():
        return redirect(url_for("committee.show", application_id=int(back)))
    return redirect(url_for("committee.claims"))
