"""The institution registry and institution claims, stored and audited.

Admins add and edit entries (pages and ``sandboxctl portal institution``); people pick an
entry, or type an institution as "other" — which resolves to an entry when it is one of its
spellings, and otherwise becomes a claim a chair confirms (mapped to an entry, added as a
new one) or rejects. Rules come from ``approvals.institutions``; every change is audited.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals import institutions as rules
from approvals.errors import DuplicateInstitution
from approvals.institutions import ClaimAction, ClaimState
from approvals.states import Role
from portal.models import (
    FormerInstitution,
    Institution,
    InstitutionClaim,
    InstitutionKey,
    Profile,
    User,
)
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError, NotFound

OTHER = "other"  # the form value of "my institution is not in the list"


def entry(row: Institution) -> rules.Institution:
    return rules.Institution(row.id, row.name_zh, row.name_en, tuple(row.aliases or ()))


def registry(db: Session) -> list[rules.Institution]:
    return [entry(row) for row in listing(db)]


def listing(db: Session) -> list[Institution]:
    return list(db.scalars(select(Institution).order_by(Institution.name_zh)))


def resolve(db: Session, text: str) -> Institution | None:
    """The entry ``text`` names in any of its spellings (one indexed lookup). The key table
    holds skeletons, so the row found may be an entry ``text`` only looks like: that one is
    not ``text``'s institution (see ``look_alike``)."""
    found = db.get(InstitutionKey, rules.skeleton(text)) if rules.key(text) else None
    row = db.get(Institution, found.institution_id) if found else None
    return row if row is not None and rules.key(text) in entry(row).folded() else None


def look_alike(db: Session, text: str) -> Institution | None:
    """The entry ``text`` imitates with look-alike characters of another script (a claim a
    chair should map to it, not add beside it), or None."""
    for form in rules.skeletons(text):
        found = db.get(InstitutionKey, form)
        row = db.get(Institution, found.institution_id) if found else None
        if row is not None and rules.key(text) not in entry(row).folded():
            return row
    return None


def _store_keys(db: Session, row: Institution) -> None:
    db.execute(delete(InstitutionKey).where(InstitutionKey.institution_id == row.id))
    db.flush()
    for form in entry(row).skeletons():
        db.add(InstitutionKey(key=form, institution_id=row.id))
    try:
        db.flush()
    except IntegrityError:
        # Another admin added the same spelling meanwhile: the key table holds each once.
        db.rollback()
        raise DuplicateInstitution("one of these names was just added to the registry",
                                   zh="其中一个名称刚刚被加入机构名录") from None


def add(db: Session, actor: str, name_zh: str, name_en: str, aliases: Iterable[str] = (),
        details: dict | None = None) -> Institution:
    """A new registry entry; refused when one of its names spells an existing entry's."""
    row = _add(db, actor, name_zh, name_en, aliases, details)
    db.commit()
    return row


def _add(db: Session, actor: str, name_zh: str, name_en: str, aliases: Iterable[str],
         details: dict | None) -> Institution:
    checked = rules.check_entry(name_zh, name_en, aliases, registry(db))
    row = Institution(name_zh=checked.name_zh, name_en=checked.name_en,
                      aliases=list(checked.aliases))
    db.add(row)
    db.flush()
    _store_keys(db, row)
    audit.append(db.connection(), AuditAction.INSTITUTION_ADDED, actor, f"institution:{row.id}",
                 {"name_zh": row.name_zh, "name_en": row.name_en, "aliases": row.aliases,
                  **(details or {})})
    return row


def edit(db: Session, actor: str, row: Institution, name_zh: str, name_en: str,
         aliases: Iterable[str], ip: str | None = None) -> Institution:
    """Rename an entry or change its aliases (the people who chose it keep it)."""
    before = {"name_zh": row.name_zh, "name_en": row.name_en, "aliases": list(row.aliases)}
    checked = rules.check_entry(name_zh, name_en, aliases, registry(db), editing=row.id)
    row.name_zh, row.name_en = checked.name_zh, checked.name_en
    row.aliases = list(checked.aliases)
    _store_keys(db, row)
    audit.append(db.connection(), AuditAction.INSTITUTION_CHANGED, actor,
                 f"institution:{row.id}",
                 {"before": before, "after": {"name_zh": row.name_zh, "name_en": row.name_en,
                                              "aliases": row.aliases}, "ip": ip})
    db.commit()
    return row


def label(profile: Profile | None) -> str:
    return profile.institution_label if profile is not None else ""


def names(profile: Profile | None) -> tuple[str, str]:
    """(zh, en) names of a confirmed institution, for reasons."""
    if profile is None or profile.institution is None:
        return ("", "")
    return (profile.institution.name_zh, profile.institution.name_en)


# -- a person's institution ------------------------------------------------------------

def _set(db: Session, user: User, profile: Profile, row: Institution | None) -> None:
    """Name ``row`` as the person's institution, keeping the one they leave: conflicts of
    interest look back at it (``portal.conflicts``)."""
    if profile.institution_id is not None and (row is None or row.id != profile.institution_id):
        db.add(FormerInstitution(user_id=user.id, institution_id=profile.institution_id,
                                 left_at=datetime.now(UTC)))
    profile.institution = row


def choose(db: Session, user: User, choice: str, other: str, actor: str,
           ip: str | None = None) -> None:
    """Set ``user``'s institution from a form: a registry id, or ``OTHER`` with a name.
    An "other" name that spells an entry *is* that entry; anything else becomes a pending
    claim. A pending claim the person no longer stands by is withdrawn. Not committed."""
    profile = user.profile
    if profile is None:
        profile = user.profile = Profile()
    before = label(profile)
    picked: Institution | None = None
    text = other.strip()
    if choice == OTHER:
        if not text:
            raise InputError("name your institution, or choose it from the list",
                             zh="请填写所在机构名称，或从列表中选择")
        if len(text) > rules.MAX_NAME:
            raise InputError(f"an institution name is at most {rules.MAX_NAME} characters",
                             zh=f"机构名称最多 {rules.MAX_NAME} 个字符")
        picked = resolve(db, text)
    elif choice.isdigit():
        picked = db.get(Institution, int(choice))
        if picked is None:
            raise InputError("choose an institution from the list",
                             zh="请从列表中选择所在机构")
    else:
        raise InputError("choose an institution from the list, or choose other and name it",
                         zh="请从列表中选择所在机构，或选择“其他”并填写名称")
    pending = profile.institution_claim
    if pending is not None and (picked is not None or pending.text != text):
        _decide(db, pending, ClaimAction.WITHDRAW, Role.SYSTEM, actor, None, "", ip)
        profile.institution_claim = None
    if picked is not None:
        _set(db, user, profile, picked)
        profile.institution_claim = None
    elif pending is None or pending.text != text:
        claim = InstitutionClaim(user_id=user.id, text=text, state=ClaimState.PENDING)
        db.add(claim)
        db.flush()
        _set(db, user, profile, None)
        profile.institution_claim = claim
        audit.append(db.connection(), AuditAction.INSTITUTION_CLAIMED, actor,
                     f"institution-claim:{claim.id}",
                     {"user": user.id, "text": text, "ip": ip})
    db.flush()
    after = label(profile)
    if after != before:
        audit.append(db.connection(), AuditAction.PROFILE_CHANGED, actor, f"user:{user.id}",
                     {"institution": {"before": before, "after": after},
                      "institution_id": profile.institution_id, "ip": ip})


def pending_claims(db: Session) -> list[InstitutionClaim]:
    return list(db.scalars(select(InstitutionClaim).where(
        InstitutionClaim.state == ClaimState.PENDING).order_by(InstitutionClaim.id)))


def confirm(db: Session, chair: User, claim: InstitutionClaim, action: ClaimAction, *,
            institution_id: int | None = None, name_zh: str = "", name_en: str = "",
            reasons: str = "", ip: str | None = None) -> Institution | None:
    """A chair's decision on a claim: map it to an entry, add a new entry, or reject it.
    Adding is refused when the names spell an existing entry — map to that one instead."""
    actor = f"user:{chair.id}"
    rules.check(ClaimState(claim.state), action, Role(chair.role), reasons)
    target: Institution | None = None
    if action == ClaimAction.MAP:
        target = db.get(Institution, institution_id) if institution_id else None
        if target is None:
            raise InputError("choose the registry entry this institution is",
                             zh="请选择该机构对应的名录条目")
    elif action == ClaimAction.ADD:
        target = _add(db, actor, name_zh or claim.text, name_en or claim.text,
                      [claim.text], {"claim": claim.id, "ip": ip})
    _decide(db, claim, action, Role(chair.role), actor, target, reasons, ip)
    profile = claim.user.profile
    if profile is not None and profile.institution_claim_id == claim.id:
        profile.institution_claim = None
        # None when rejected: the person must choose again
        _set(db, claim.user, profile, target)
    db.commit()
    return target


def _decide(db: Session, claim: InstitutionClaim, action: ClaimAction, role: Role,
            actor: str, target: Institution | None, reasons: str, ip: str | None) -> None:
    claim.state = rules.check(ClaimState(claim.state), action, role, reasons)
    claim.institution_id = target.id if target else None
    claim.decided_at = datetime.now(UTC)
    claim.decided_by = int(actor.split(":")[1]) if actor.startswith("user:") else None
    claim.reasons = reasons.strip()
    kind = {ClaimAction.REJECT: AuditAction.INSTITUTION_REJECTED,
            ClaimAction.WITHDRAW: AuditAction.INSTITUTION_WITHDRAWN}.get(
        action, AuditAction.INSTITUTION_CONFIRMED)
    audit.append(db.connection(), kind, actor, f"institution-claim:{claim.id}",
                 {"user": claim.user_id, "text": claim.text, "action": str(action),
                  "institution": claim.institution_id, "reasons": claim.reasons, "ip": ip})


def claim_or_404(db: Session, claim_id: int) -> InstitutionClaim:
    claim = db.get(InstitutionClaim, claim_id)
    if claim is None:
        raise NotFound(f"no institution claim {claim_id}")
    return claim


def institution_or_404(db: Session, institution_id: int) -> Institution:
    row = db.get(Institution, institution_id)
    if row is None:
        raise NotFound(f"no institution {institution_id}")
    return row


def last_rejected(db: Session, user: User) -> InstitutionClaim | None:
    """The claim a chair rejected, while the person has chosen nothing since."""
    profile = user.profile
    if profile is None or profile.institution_id or profile.institution_claim_id:
        return None
    return db.scalar(select(InstitutionClaim).where(
        InstitutionClaim.user_id == user.id, InstitutionClaim.state == ClaimState.REJECTED)
        .order_by(InstitutionClaim.id.desc()).limit(1))
