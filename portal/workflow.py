"""Transitions of an application, each checked against ``approvals``, audited, and
announced by e-mail to the people concerned. Views call these; they never change state
themselves."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import assignment, eligibility, scoring, states
from approvals.decisions import ACTION, Decision, Terms, check_decision
from approvals.errors import Ineligible, InvalidDecision, NotPermitted
from approvals.scoring import Dimension, RubricConfig, Score
from approvals.states import Action, Role, State
from portal import agreement, gateway, notify, sandboxes, tokens
from portal import catalog as datasets
from portal.config import PortalSettings
from portal.models import (
    Agreement,
    Application,
    Assignment,
    DecisionRecord,
    RequestedField,
    Review,
    User,
)
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError


@dataclass
class Context:
    """Who acts, through which database session, under which settings."""

    db: Session
    actor: User
    settings: PortalSettings
    ip: str | None = None

    def audit(self, action: AuditAction, application: Application, details: dict) -> None:
        audit.append(self.db.connection(), action, f"user:{self.actor.id}",
                     f"application:{application.id}", {**details, "ip": self.ip})

    def mail(self, to: list[User], application: Application, what: str) -> None:
        notify.about_application(self.settings, [u.email for u in to], application.id,
                                 application.title, what)


def rubric(settings: PortalSettings) -> RubricConfig:
    return RubricConfig(quorum=settings.quorum, aggregation=settings.aggregation)


def _move(ctx: Context, application: Application, action: Action, role: Role) -> None:
    application.state = states.check(State(application.state), action, role)


def _case(application: Application) -> assignment.Case:
    researcher = application.researcher
    return assignment.Case(str(application.id), str(researcher.id),
                           researcher.profile.institution if researcher.profile else "",
                           frozenset(application.team), researcher.name)


def _expert(user: User) -> assignment.Expert:
    profile = user.profile
    return assignment.Expert(str(user.id), user.name, profile.institution if profile else "",
                             frozenset(profile.declared_conflicts or []) if profile
                             else frozenset())


@dataclass(frozen=True)
class Draft:
    """What a researcher asks for, from the form or the API."""

    dataset: str
    title: str
    summary: str
    purpose: str
    non_profit: bool
    epsilon: float
    term_months: int
    team: list[str]
    fields: list[tuple[str, str]]  # (field, justification)
    ethics_pdf: bytes | None = None


def create_draft(ctx: Context, entry: dict, draft: Draft) -> Application:
    """Record a draft application against the catalog ``entry``; refuses fields the
    dataset does not have, a field asked for twice, an unknown purpose, a non-PDF."""
    known = {f["name"] for f in datasets.fields(entry)}
    names = [name for name, _ in draft.fields]
    unknown = sorted(set(names) - known)
    if unknown:
        raise InputError(f"unknown fields {unknown}; the dataset has: "
                         f"{', '.join(sorted(known))}")
    if len(set(names)) != len(names):
        raise InputError("a field is requested twice")
    if draft.purpose not in eligibility.KNOWN_PURPOSES:
        raise InputError(f"unknown purpose {draft.purpose!r}")
    if draft.ethics_pdf is not None and not draft.ethics_pdf.startswith(b"%PDF-"):
        raise InputError("the ethics approval must be a PDF file")
    pdf = draft.ethics_pdf
    application = Application(
        researcher_id=ctx.actor.id, title=draft.title.strip(), summary=draft.summary.strip(),
        purpose=draft.purpose, non_profit=draft.non_profit,
        epsilon_requested=draft.epsilon, term_months=draft.term_months, team=draft.team,
        state=State.DRAFT, ethics_pdf=pdf,
        ethics_sha256=hashlib.sha256(pdf).hexdigest() if pdf else None,
        fields=[RequestedField(dataset=entry["id"], field=name,
                               justification=why.strip()) for name, why in draft.fields])
    ctx.db.add(application)
    ctx.db.flush()
    ctx.audit(AuditAction.APPLICATION_CREATED, application, {"fields": names})
    ctx.db.commit()
    return application


def submit(ctx: Context, application: Application, applicant: eligibility.Applicant,
           policy: eligibility.EligibilityPolicy) -> None:
    """The researcher submits a draft, or resubmits after a revision request; an
    ineligible application is refused with every reason."""
    failed = eligibility.reasons(applicant, application.purpose, application.non_profit,
                                 policy)
    if failed:
        ctx.audit(AuditAction.APPLICATION_REFUSED, application,
                  {"reasons": [r.code for r in failed]})
        ctx.db.commit()
        raise Ineligible(failed)
    action = (Action.RESUBMIT if State(application.state) == State.REVISION_REQUESTED
              else Action.SUBMIT)
    _move(ctx, application, action, Role.RESEARCHER)
    ctx.audit(AuditAction.APPLICATION_SUBMITTED, application, {"action": str(action)})
    ctx.db.commit()
    chairs = list(ctx.db.scalars(select(User).where(User.role == Role.CHAIR)))
    ctx.mail(chairs, application, "新申请待处理 / submitted for review")


def assign(ctx: Context, application: Application, experts: list[User]) -> None:
    """The chair assigns a conflict-free panel; review starts."""
    if any(e.role != Role.EXPERT for e in experts):
        raise InvalidDecision("only members of the expert pool can be assigned")
    assignment.check_panel([_expert(e) for e in experts], _case(application))
    _move(ctx, application, Action.START_REVIEW, Role(ctx.actor.role))
    for expert in experts:
        ctx.db.add(Assignment(application_id=application.id, expert_id=expert.id))
    ctx.audit(AuditAction.APPLICATION_ASSIGNED, application,
              {"experts": [e.id for e in experts]})
    ctx.db.commit()
    ctx.mail(experts, application, "请评审 / please review")


def assigned_experts(db: Session, application: Application) -> list[User]:
    return list(db.scalars(select(User).join(Assignment, Assignment.expert_id == User.id)
                           .where(Assignment.application_id == application.id)))


def score(ctx: Context, application: Application, values: dict[str, int], comments: str,
          remove_fields: list[str]) -> Review:
    if State(application.state) != State.UNDER_REVIEW:
        raise InvalidDecision("this application is not under review")
    if ctx.actor.id not in {e.id for e in assigned_experts(ctx.db, application)}:
        raise NotPermitted("you are not assigned to this application")
    requested = {f.field for f in application.fields}
    Score(str(ctx.actor.id), {Dimension(k): v for k, v in values.items()},
          comments, frozenset(remove_fields))  # validates
    if not set(remove_fields) <= requested:
        raise InvalidDecision("recommend removing only requested fields")
    review = ctx.db.scalar(select(Review).where(Review.application_id == application.id,
                                                Review.expert_id == ctx.actor.id))
    if review is None:
        review = Review(application_id=application.id, expert_id=ctx.actor.id, scores={})
        ctx.db.add(review)
    review.scores, review.comments, review.remove_fields = values, comments, remove_fields
    review.submitted_at = datetime.now(UTC)
    ctx.audit(AuditAction.APPLICATION_SCORED, application, {"scores": values})
    ctx.db.commit()
    return review


def reviews(db: Session, application: Application) -> list[Review]:
    return list(db.scalars(select(Review).where(Review.application_id == application.id)
                           .order_by(Review.id)))


def summary(db: Session, application: Application, config: RubricConfig) -> scoring.Summary:
    return scoring.summarise(
        [Score(str(r.expert_id), {Dimension(k): v for k, v in r.scores.items()}, r.comments,
               frozenset(r.remove_fields)) for r in reviews(db, application)], config)


def decide(ctx: Context, application: Application, decision: Decision) -> Terms | None:
    config = rubric(ctx.settings)
    requested = [f.field for f in application.fields]
    terms = check_decision(decision, requested, summary(ctx.db, application, config))
    _move(ctx, application, ACTION[decision.verdict], Role(ctx.actor.role))
    ctx.db.add(DecisionRecord(
        application_id=application.id, verdict=decision.verdict, reasons=decision.reasons,
        fields=list(terms.fields) if terms else [], epsilon=terms.epsilon if terms else None,
        delta=terms.delta if terms else 0.0, term_months=terms.term_months if terms else None,
        decided_by=ctx.actor.id))
    ctx.audit(AuditAction.APPLICATION_DECIDED, application,
              {"verdict": decision.verdict, "reasons": decision.reasons,
               "removed_fields": sorted(decision.removed_fields)})
    ctx.db.commit()
    ctx.mail([application.researcher], application,
             {"approve": "已批准，请签署数据使用协议 / approved: please sign the DUA",
              "revise": "需要修改 / revision requested",
              "reject": "未获批准 / rejected"}[decision.verdict] + f" — {decision.reasons}")
    return terms


def latest_decision(db: Session, application: Application) -> DecisionRecord | None:
    return db.scalar(select(DecisionRecord).where(DecisionRecord.application_id ==
                                                  application.id)
                     .order_by(DecisionRecord.id.desc()))


def sign(ctx: Context, application: Application) -> Agreement:
    """The researcher signs the DUA: the PDF is stored with its SHA-256, the gateway creates
    the grant, and only then does the project become active."""
    if application.researcher_id != ctx.actor.id:
        raise NotPermitted("only the applicant signs the agreement")
    if State(application.state) != State.APPROVED:
        raise InvalidDecision("only an approved application has an agreement to sign")
    decision = latest_decision(ctx.db, application)
    now = datetime.now(UTC)
    datasets = sorted({f.dataset for f in application.fields})
    pdf = agreement.render(application.title, ctx.actor.name,
                           ctx.actor.profile.institution if ctx.actor.profile else "",
                           datasets, decision.fields, application.purpose, decision.epsilon,
                           decision.delta, decision.term_months, now)
    expires = now + timedelta(days=30 * decision.term_months)
    grant_id, token = gateway.create_grant(ctx.settings, application.id, application.purpose,
                                           decision, datasets, expires)
    record = Agreement(application_id=application.id, pdf=pdf,
                       sha256=hashlib.sha256(pdf).hexdigest(), signed_by=ctx.actor.id,
                       signed_at=now, grant_id=grant_id, expires_at=expires,
                       grant_token=tokens.seal(ctx.settings, token))
    ctx.db.add(record)
    _move(ctx, application, Action.ACTIVATE, Role.RESEARCHER)
    ctx.audit(AuditAction.AGREEMENT_SIGNED, application,
              {"sha256": record.sha256, "grant": grant_id})
    try:
        ctx.db.commit()
    except Exception:
        # The project did not become active here, so its grant must not stay usable there.
        gateway.change_grant(ctx.settings, grant_id, "revoke",
                            "activation failed in the portal")
        raise
    ctx.mail([application.researcher], application, "项目已启用 / project active")
    if sandboxes.enabled(ctx.settings):
        sandboxes.provision(ctx.db, ctx.settings, application, f"user:{ctx.actor.id}")
    return record


def grant_token(settings: PortalSettings, record: Agreement) -> str:
    return tokens.unseal(settings, record.grant_token)
