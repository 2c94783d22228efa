"""Consent intake: a controller records a patient's withdrawal by pseudonym, or by resident
ID number — pseudonymised at once with the controller's keyed HMAC and never stored. The
gateway applies it before its next answer; the report names the active projects whose
scope included the patient (their datasets hold the patient's records)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from approvals.states import State
from portal import gateway
from portal.config import PortalSettings
from portal.models import Application
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.data import idcard, pseudonym
from sandbox.errors import InputError

RUNNING = (State.ACTIVE, State.SUSPENDED)


@dataclass(frozen=True)
class ProjectInScope:
    id: int
    title: str
    state: str
    purpose: str
    institution: str
    datasets: tuple[str, ...]
    purpose_withdrawn: bool  # the withdrawal covers this project's purpose


@dataclass(frozen=True)
class WithdrawalReport:
    pseudonym: str
    purposes: list[str] | None  # None: every purpose
    datasets: list[dict]
    projects: list[ProjectInScope]


def pseudonym_of(settings: PortalSettings, id_number: str) -> str:
    """The pseudonym the onboarding gave this ID number (same key, same HMAC)."""
    number = id_number.strip().upper()
    if not idcard.is_valid(number):
        raise InputError("not a valid resident ID number (18 characters, check digit)")
    key = pseudonym.load_key(settings.pseudonym_key_file)
    return pseudonym.pseudonymise(pl.Series([number]), key)[0]


def record_withdrawal(db: Session, settings: PortalSettings, actor: str, *,
                      patient: str | None = None, id_number: str | None = None,
                      purposes: list[str] | None = None) -> WithdrawalReport:
    """Record the withdrawal on the gateway and report the projects it touches."""
    if (patient is None) == (id_number is None):
        raise InputError("give either the pseudonym or the ID number, not both")
    subject = patient.strip().lower() if patient else pseudonym_of(settings, id_number)
    answer = gateway.withdraw(settings, subject, purposes)
    holding = {d["id"] for d in answer.get("containing", [])}
    projects = [_in_scope(a, purposes) for a in projects_holding(db, RUNNING, holding)]
    audit.append(db.connection(), AuditAction.CONSENT_RECORDED, actor,
                 f"patient:{subject}", {"purposes": purposes, "by": "id_number" if id_number
                                        else "pseudonym", "datasets": sorted(holding),
                                        "projects": [p.id for p in projects]})
    db.commit()
    return WithdrawalReport(subject, purposes, answer.get("containing", []), projects)


def projects_holding(db: Session, states: Iterable[State], datasets: set[str]
                     ) -> list[Application]:
    """Projects in ``states`` whose requested fields come from one of ``datasets``."""
    return [a for a in db.scalars(
        select(Application).where(Application.state.in_(list(states)))
        .options(selectinload(Application.fields), selectinload(Application.researcher))
        .order_by(Application.id)) if {f.dataset for f in a.fields} & datasets]


def _in_scope(application: Application, purposes: list[str] | None) -> ProjectInScope:
    researcher = application.researcher
    institution = researcher.profile.institution_label if researcher.profile else ""
    return ProjectInScope(application.id, application.title, application.state,
                          application.purpose, institution,
                          tuple(sorted({f.dataset for f in application.fields})),
                          purposes is None or application.purpose in purposes)
