"""JSON API for the same actions as the pages, with the same authorisation (the session of
``POST /api/v1/session``: password and TOTP code, every account). Bodies are validated
with pydantic; every error is ``{"error": code, "reason": text}`` with a 4xx status.
State-changing calls must be JSON and same-origin (see ``portal.security
.cross_site_problem``). Described in OpenAPI at ``/api/v1/openapi.json`` (built from these
models)."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from approvals import eligibility
from approvals import states as workflow_states
from approvals.decisions import Decision, Verdict
from approvals.errors import NotPermitted
from approvals.states import Role, State
from portal import catalog as datasets
from portal import credentials, csrf, limiter, signin, workflow
from portal.models import Application, Assignment, User
from portal.views.auth import end_session, passed_mfa, start_session
from portal.views.researcher import applicant, policy
from sandbox.errors import InputError, NotFound, Unauthenticated

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionIn(_Body):
    email: str = Field(max_length=200)
    password: str = Field(max_length=200)
    code: str | None = Field(default=None, max_length=10,
                             description="TOTP code (every account; each code works once)")


class FieldRequest(_Body):
    field: str = Field(min_length=1, max_length=64)
    justification: str = Field(min_length=1, max_length=2000)


class ApplicationIn(_Body):
    dataset: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=300)
    summary: str = Field(default="", max_length=10_000)
    purpose: str
    non_profit: bool
    epsilon: float = Field(gt=0, le=10)
    term_months: int = Field(ge=1, le=60)
    team: list[str] = Field(default_factory=list, max_length=50)
    fields: list[FieldRequest] = Field(min_length=1, max_length=100)


class AssignIn(_Body):
    experts: list[int] = Field(min_length=1, max_length=20)


class ScoresIn(_Body):
    scores: dict[Literal["legality", "consistency", "value", "leakage_risk", "cost"],
                 int]
    comments: str = Field(default="", max_length=5000)
    remove_fields: list[str] = Field(default_factory=list, max_length=100)


class DecisionIn(_Body):
    verdict: Literal["approve", "revise", "reject"]
    reasons: str = Field(max_length=5000)
    remove_fields: list[str] = Field(default_factory=list, max_length=100)
    epsilon: float | None = Field(default=None, gt=0, le=10)
    delta: float = Field(default=0.0, ge=0, lt=1e-3)
    term_months: int | None = Field(default=None, ge=1, le=60)


class AgreementIn(_Body):
    accept: bool


BODIES: dict[str, type[BaseModel]] = {
    "SessionIn": SessionIn, "ApplicationIn": ApplicationIn, "AssignIn": AssignIn,
    "ScoresIn": ScoresIn, "DecisionIn": DecisionIn, "AgreementIn": AgreementIn,
}


def _body(model: type[BaseModel]) -> Any:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InputError("send a JSON object (Content-Type: application/json)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(map(str, e['loc'])) or 'body'}: "
                 f"{str(e['msg']).removeprefix('Value error, ')}"
                 for e in exc.errors(include_url=False)]
        raise InputError("; ".join(parts)) from None


def _user(*roles: Role) -> User:
    if g.user is None:
        raise Unauthenticated("sign in first: POST /api/v1/session")
    if not passed_mfa():
        raise Unauthenticated("give your TOTP code too: POST /api/v1/session with code")
    if roles and g.user.role not in roles:
        raise NotPermitted(f"a {g.user.role} may not do this")
    return g.user


def _application(application_id: int, user: User) -> Application:
    app = g.db.get(Application, application_id)
    if app is None:
        raise NotFound(f"no application {application_id}")
    if user.role == Role.RESEARCHER and app.researcher_id != user.id:
        raise NotFound(f"no application {application_id}")
    if user.role == Role.EXPERT and g.db.scalar(select(Assignment).where(
            Assignment.application_id == app.id, Assignment.expert_id == user.id)) is None:
        raise NotFound(f"no application {application_id}")
    if user.role in (Role.CHAIR, Role.EXPERT) and app.state == State.DRAFT:
        raise NotFound(f"no application {application_id}")
    return app


def _out(app: Application) -> dict:
    return {"id": app.id, "title": app.title, "summary": app.summary, "state": app.state,
            "purpose": app.purpose, "non_profit": app.non_profit,
            "epsilon": app.epsilon_requested, "term_months": app.term_months,
            "team": app.team, "researcher": app.researcher_id,
            "fields": [{"dataset": f.dataset, "field": f.field,
                        "justification": f.justification} for f in app.fields]}


def _ctx() -> workflow.Context:
    return workflow.Context(g.db, g.user, current_app.extensions["portal.settings"],
                            request.remote_addr)


@bp.post("/session")
@limiter.limit(lambda: current_app.extensions["portal.settings"].login_rate)
def sign_in() -> ResponseReturnValue:
    body = _body(SessionIn)
    settings = current_app.extensions["portal.settings"]
    user = signin.check_credentials(g.db, settings, body.email, body.password)
    if not user.totp_enabled:
        raise Unauthenticated("enrol an authenticator first: sign in once on the portal's "
                              "sign-in page")
    signin.check_code(g.db, settings, user, body.code or "", signin.Purpose.SIGN_IN)
    start_session(user, mfa_done=True)
    return jsonify(id=user.id, name=user.name, role=user.role)


@bp.delete("/session")
def sign_out() -> ResponseReturnValue:
    end_session()
    return jsonify(signed_out=True)


@bp.get("/catalog")
def catalog() -> ResponseReturnValue:
    entries = datasets.load(current_app.extensions["portal.settings"].datasets_dir)
    query = request.args.get("q", "")
    return jsonify([{"id": e["id"], "version": e["version"], "grade": e["grade"],
                     "title": e["title"], "description": e["description"],
                     "sample_size": e["sample_size"], "years": e["years"],
                     "application_conditions": e["application_conditions"],
                     "fields": datasets.fields(e)} for e in datasets.search(entries, query)])


@bp.get("/applications")
def list_applications() -> ResponseReturnValue:
    user = _user(Role.RESEARCHER, Role.CHAIR, Role.EXPERT)
    try:
        page = max(1, int(request.args.get("page", 1)))
        per_page = min(500, max(1, int(request.args.get("per_page", 100))))
    except ValueError:
        raise InputError("page and per_page are whole numbers") from None
    query = (select(Application).options(selectinload(Application.fields))
             .order_by(Application.id).limit(per_page).offset((page - 1) * per_page))
    if user.role == Role.RESEARCHER:
        query = query.where(Application.researcher_id == user.id)
    elif user.role == Role.EXPERT:
        query = query.join(Assignment).where(Assignment.expert_id == user.id)
    else:
        query = query.where(Application.state != State.DRAFT)
    return jsonify([_out(a) for a in g.db.scalars(query)])


@bp.post("/applications")
def create_application() -> ResponseReturnValue:
    _user(Role.RESEARCHER)
    body = _body(ApplicationIn)
    entries = {e["id"]: e for e in datasets.load(
        current_app.extensions["portal.settings"].datasets_dir)}
    entry = entries.get(body.dataset)
    if entry is None:
        raise InputError(f"unknown dataset {body.dataset!r}")
    app = workflow.create_draft(_ctx(), entry, workflow.Draft(
        body.dataset, body.title, body.summary, body.purpose, body.non_profit, body.epsilon,
        body.term_months, body.team, [(f.field, f.justification) for f in body.fields]))
    return jsonify(_out(app)), 201


@bp.get("/applications/<int:application_id>")
def get_application(application_id: int) -> ResponseReturnValue:
    user = _user(Role.RESEARCHER, Role.CHAIR, Role.EXPERT)
    app = _application(application_id, user)
    out = _out(app)
    if user.role == Role.RESEARCHER:
        out["eligibility"] = [{"code": r.code, "zh": r.zh, "en": r.en} for r in
                              eligibility.reasons(applicant(), app.purpose, app.non_profit,
                                                  policy())]
    # What eligibility relied on (self-declared or verified claims), for everyone who sees
    # the application — the committee above all.
    out["applicant"] = {
        "institution": app.researcher.profile.institution_label
        if app.researcher.profile else "",
        "institution_id": app.researcher.profile.institution_id
        if app.researcher.profile else None,
        "eligibility": credentials.standing_json(credentials.standing(
            g.db, current_app.extensions["portal.settings"], app))}
    out["actions"] = [str(a) for a in workflow_states.actions(State(app.state),
                                                               Role(user.role))]
    return jsonify(out)


@bp.post("/applications/<int:application_id>/submit")
def submit(application_id: int) -> ResponseReturnValue:
    user = _user(Role.RESEARCHER)
    app = _application(application_id, user)
    workflow.submit(_ctx(), app, applicant(), policy())
    return jsonify(_out(app))


@bp.post("/applications/<int:application_id>/assign")
def assign(application_id: int) -> ResponseReturnValue:
    user = _user(Role.CHAIR)
    app = _application(application_id, user)
    body = _body(AssignIn)
    experts = [g.db.get(User, i) for i in body.experts]
    if any(e is None for e in experts):
        raise InputError("unknown expert id")
    workflow.assign(_ctx(), app, experts)
    return jsonify(_out(app))


@bp.post("/applications/<int:application_id>/scores")
def score(application_id: int) -> ResponseReturnValue:
    user = _user(Role.EXPERT)
    app = _application(application_id, user)
    body = _body(ScoresIn)
    review = workflow.score(_ctx(), app, dict(body.scores), body.comments, body.remove_fields)
    return jsonify(application=app.id, scores=review.scores, comments=review.comments,
                   remove_fields=review.remove_fields)


@bp.get("/applications/<int:application_id>/summary")
def summary(application_id: int) -> ResponseReturnValue:
    user = _user(Role.CHAIR)
    app = _application(application_id, user)
    settings = current_app.extensions["portal.settings"]
    config = workflow.rubric(settings)
    panel = workflow.panel(g.db, settings, app)
    result = panel.summary
    return jsonify(excluded=[{"expert": expert, "code": r.code, "zh": r.zh, "en": r.en}
                             for expert, r in panel.excluded.items()],
                   per_expert=result.per_expert,
                   per_dimension={str(k): v for k, v in result.per_dimension.items()},
                   overall=result.overall, quorum_met=result.quorum_met,
                   recommendation=result.recommendation, field_removals=result.field_removals,
                   config={"weights": {str(k): v for k, v in config.weights.items()},
                           "quorum": config.quorum, "aggregation": config.aggregation})


@bp.post("/applications/<int:application_id>/decision")
def decide(application_id: int) -> ResponseReturnValue:
    user = _user(Role.CHAIR)
    app = _application(application_id, user)
    body = _body(DecisionIn)
    terms = workflow.decide(_ctx(), app, Decision(
        Verdict(body.verdict), body.reasons, frozenset(body.remove_fields), body.epsilon,
        body.delta, body.term_months))
    return jsonify(application=_out(app), terms=None if terms is None else {
        "fields": list(terms.fields), "epsilon": terms.epsilon, "delta": terms.delta,
        "term_months": terms.term_months})


@bp.post("/applications/<int:application_id>/agreement")
def sign(application_id: int) -> ResponseReturnValue:
    user = _user(Role.RESEARCHER)
    app = _application(application_id, user)
    if not _body(AgreementIn).accept:
        raise InputError("accept must be true to sign")
    agreement = workflow.sign(_ctx(), app)
    return jsonify(application=_out(app), sha256=agreement.sha256,
                   grant=agreement.grant_id,
                   expires_at=agreement.expires_at.isoformat() if agreement.expires_at
                   else None)


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    from portal.openapi import document

    return jsonify(document())
