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
from approvals.decisions import ACTION, Decision, Terms, Verdict, check_decision
from approvals.errors import ConflictOfInterest, Ineligible, InvalidDecision, NotPermitted, Reason
from approvals.scoring import Dimension, RubricConfig, Score
from approvals.states import Action, Role, State
from portal import (
    agreement,
    conflicts,
    credentials,
    gateway,
    institutions,
    notify,
    sandboxes,
    tokens,
)
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
    if application.submitted_at is None:  # conflicts look back to the first submission
        profile = ctx.actor.profile
        application.submitted_at = datetime.now(UTC)
        application.submitted_institution_id = profile.institution_id if profile else None
    ctx.audit(AuditAction.APPLICATION_SUBMITTED, application, {"action": str(action)})
    ctx.db.commit()
    chairs = list(ctx.db.scalars(select(User).where(User.role == Role.CHAIR)))
    ctx.mail(chairs, application, "新申请待处理 / submitted for review")


def assign(ctx: Context, application: Application, experts: list[User]) -> None:
    """The chair assigns a conflict-free panel and review starts; during review, the chair
    adds experts (to replace scores that no longer count)."""
    if any(e.role != Role.EXPERT for e in experts):
        raise InvalidDecision("only members of the expert pool can be assigned",
                              zh="只能分配专家库中的专家")
    case = conflicts.case_of(ctx.db, ctx.settings, application)
    on_panel = {e.id for e in assigned_experts(ctx.db, application)}

    def seen(expert: User) -> assignment.Expert:
        return conflicts.expert_of(ctx.db, ctx.settings, expert, application)

    if State(application.state) == State.UNDER_REVIEW:
        experts = [e for e in experts if e.id not in on_panel]
        if not experts:
            raise InvalidDecision("choose at least one expert not yet on the panel",
                                  zh="请至少选择一位尚未参与评审的专家")
        for expert in experts:
            assignment.check_can_assign(seen(expert), case)
        action = Action.ADD_EXPERTS
    else:
        assignment.check_panel([seen(e) for e in experts], case)
        action = Action.START_REVIEW
    _move(ctx, application, action, Role(ctx.actor.role))
    for expert in experts:
        if expert.id not in on_panel:  # a panel re-formed after a revision keeps its rows
            ctx.db.add(Assignment(application_id=application.id, expert_id=expert.id,
                                  institution_id=expert.profile.institution_id
                                  if expert.profile else None))
    ctx.audit(AuditAction.APPLICATION_ASSIGNED, application,
              {"experts": [e.id for e in experts], "action": str(action)})
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
    # Institutions and declarations change after assignment: check again before scoring.
    reason = conflicts.conflict(ctx.db, ctx.settings, ctx.actor, application)
    if reason is not None:
        ctx.audit(AuditAction.APPLICATION_SCORE_REFUSED, application, {"conflict": reason.code})
        ctx.db.commit()
        raise ConflictOfInterest(reason.en, zh=reason.zh, conflict=reason.code)
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


@dataclass(frozen=True)
class Panel:
    """The scores as the chair decides on them: every review for the side-by-side table,
    and the summary of those that still count — a score whose expert is conflicted *now*
    (docs/adr/0008) is shown but excluded."""

    reviews: list[Review]
    excluded: dict[int, Reason]  # expert id → why their score no longer counts
    summary: scoring.Summary


def panel(db: Session, settings: PortalSettings, application: Application) -> Panel:
    config = rubric(settings)
    everyone = reviews(db, application)
    case = conflicts.case_of(db, settings, application)
    excluded = {int(expert_id): reason for expert_id, reason in assignment.conflicted(
        [conflicts.expert_of(db, settings, r.expert, application) for r in everyone],
        case).items()}
    counted = [Score(str(r.expert_id), {Dimension(k): v for k, v in r.scores.items()},
                     r.comments, frozenset(r.remove_fields))
               for r in everyone if r.expert_id not in excluded]
    return Panel(everyone, excluded, scoring.summarise(counted, config))


def summary(db: Session, settings: PortalSettings,
            application: Application) -> scoring.Summary:
    return panel(db, settings, application).summary


def decide(ctx: Context, application: Application, decision: Decision) -> Terms | None:
    """Conflicts are checked again now — a conflicted expert's score does not count, a
    conflicted chair may not decide — and an approval needs the applicant eligible on
    verified title and credit grade."""
    requested = [f.field for f in application.fields]
    case = conflicts.case_of(ctx.db, ctx.settings, application)
    if case.institution is None:
        raise InvalidDecision("the applicant's institution awaits a chair's confirmation",
                              zh="申请人的单位尚待主任委员确认")
    reason = conflicts.chair_conflict(ctx.db, ctx.settings, ctx.actor, application)
    if reason is not None:
        ctx.audit(AuditAction.APPLICATION_DECISION_REFUSED, application,
                  {"conflict": reason.code})
        ctx.db.commit()
        raise ConflictOfInterest(reason.en, zh=reason.zh, conflict=reason.code)
    found = panel(ctx.db, ctx.settings, application)
    if found.excluded and not found.summary.quorum_met:
        raise InvalidDecision(
            f"the quorum has not scored: {len(found.excluded)} score(s) no longer count "
            f"because of a conflict of interest; add experts",
            zh=f"评分未达法定人数：{len(found.excluded)} 份评分因利益冲突不再计入，请增补专家")
    terms = check_decision(decision, requested, found.summary)
    standing = credentials.standing(ctx.db, ctx.settings, application)
    if decision.verdict == Verdict.APPROVE and not standing.assessment.approvable:
        raise Ineligible(standing.assessment.reasons + standing.assessment.unverified)
    _move(ctx, application, ACTION[decision.verdict], Role(ctx.actor.role))
    ctx.db.add(DecisionRecord(
        application_id=application.id, verdict=decision.verdict, reasons=decision.reasons,
        fields=list(terms.fields) if terms else [], epsilon=terms.epsilon if terms else None,
        delta=terms.delta if terms else 0.0, term_months=terms.term_months if terms else None,
        decided_by=ctx.actor.id))
    ctx.audit(AuditAction.APPLICATION_DECIDED, application,
              {"verdict": decision.verdict, "reasons": decision.reasons,
               "removed_fields": sorted(decision.removed_fields),
               "excluded_scores": {str(k): r.code for k, r in found.excluded.items()},
               "relied_on": {k: str(v) for k, v in
                             standing.assessment.relied_on.items()}})
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
                           institutions.label(ctx.actor.profile),
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
        gateway.change_grant(ctx.settings, grant_id, application.id, "revoke",
                             "activation failed in the portal")
        raise
    ctx.mail([application.researcher], application, "项目已启用 / project active")
    if sandboxes.enabled(ctx.settings):
        sandboxes.provision(ctx.db, ctx.settings, application, f"user:{ctx.actor.id}")
    return record


def grant_token(settings: PortalSettings, record: Agreement) -> str:
    return tokens.unseal(settings, record.grant_token)
