"""Conflicts of interest attacked over HTTP against the served portal (pages and JSON API).

Adversary: an **expert** who wants to score a colleague's application (or an applicant who
wants a friendly expert from their own institution). The registry makes sure that no
*spelling* of the applicant's institution passes for another one — but which entry a
person belongs to is their own pick on their profile page, effective at once, checked by
nobody. One click moves the expert out of the applicant's institution; the chair's
assignment, the expert's score and the chair's decision then all see no conflict, and the
score counts. The only trace is a ``profile.changed`` entry in the audit log that no page
puts in front of the chair.

The second attack is on the registry itself: a claim typed as "other" with a Cyrillic
``а`` in "Lingnan" folds to a different key, so a chair who adds it (the form pre-fills
the typed names) creates a second, visually identical "Lingnan University" — which the
registry promises it cannot hold.

The third is on credentials: the admin's verify button names the value shown, but the
form carries only the kind of claim, so the value recorded as verified is whatever the
profile says when the POST arrives.

**All three fail today.**"""

from __future__ import annotations

import uuid

import pyotp
from sqlalchemy import select

from portal.models import (
    CredentialVerification,
    Institution,
    InstitutionClaim,
    Profile,
    User,
)
from portal.security import hash_password
from tests import committee
from tests.attacks.conftest import PASSWORD, TOKEN, Visitor, person

JSON = {"X-Requested-With": "attack-test"}


def _institution(sessions, name: str, name_en: str) -> int:
    with sessions() as db:
        return committee.entry(db, name, name_en).id


def _uid(sessions, email: str) -> int:
    with sessions() as db:
        return db.scalar(select(User.id).where(User.email == email))


def test_an_expert_cannot_step_out_of_the_applicants_institution_to_score(served):
    stack, sessions = served
    lingnan = _institution(sessions, "岭南大学", "Lingnan University")
    zhongshan = _institution(sessions, "中山医院", "Zhongshan Hospital")
    researcher = person(sessions, "researcher", "岭南大学")
    with sessions() as db:  # the applicant's title and grade verified by an admin
        committee.verify(db, db.scalar(select(User).where(User.email == researcher)))
    colleague = person(sessions, "expert", "岭南大学")  # the applicant's own institution
    others = [person(sessions, "expert", "中山医院"), person(sessions, "expert", "南方医科大学")]
    chair = person(sessions, "chair", "岭南卫健委")
    people = {e: Visitor(stack.url) for e in (researcher, colleague, *others, chair)}
    for email, visitor in people.items():
        visitor.sign_in(sessions, email)

    drafted = people[researcher].http.post("/api/v1/applications", headers=JSON, json={
        "dataset": "emr-visits", "title": "同事的申请", "purpose": "medical_research",
        "non_profit": True, "epsilon": 1, "term_months": 6,
        "fields": [{"field": "sex", "justification": "按性别分层"}]})
    assert drafted.status_code == 201, drafted.text
    number = drafted.json()["id"]
    assert people[researcher].http.post(f"/api/v1/applications/{number}/submit",
                                        headers=JSON, json={}).status_code == 200
    panel = [_uid(sessions, e) for e in (colleague, *others)]
    refused = people[chair].http.post(f"/api/v1/applications/{number}/assign",
                                      headers=JSON, json={"experts": panel})
    assert refused.status_code == 403 and refused.json()["conflict"] == "institution"

    # the colleague picks another registry entry on their profile: effective at once
    moved = people[colleague].form("/profile", {"institution": str(zhongshan),
                                                "institution_other": ""})
    assert moved.status_code == 302
    with sessions() as db:
        assert db.scalar(select(Profile.institution_id).join(User).where(
            User.email == colleague)) == zhongshan != lingnan

    assigned = people[chair].http.post(f"/api/v1/applications/{number}/assign",
                                       headers=JSON, json={"experts": panel})
    scores = {"legality": 5, "consistency": 5, "value": 5, "leakage_risk": 1, "cost": 5}
    for expert in (colleague, *others):
        scored = people[expert].http.post(f"/api/v1/applications/{number}/scores",
                                          headers=JSON,
                                          json={"scores": scores, "comments": "同意"})
        # 404: the expert is on no panel of this application (the assignment was refused)
        assert scored.status_code in (200, 403, 404), scored.text
    summary = people[chair].http.get(f"/api/v1/applications/{number}/summary").json()
    decided = people[chair].http.post(f"/api/v1/applications/{number}/decision",
                                      headers=JSON, json={"verdict": "approve",
                                                          "reasons": "同意", "epsilon": 1,
                                                          "term_months": 6})
    assert decided.status_code in (200, 403, 422), decided.text
    counted = str(_uid(sessions, colleague)) in summary.get("per_expert", {})
    assert not (assigned.status_code == 200 and counted and decided.status_code == 200), (
        "an expert refused for sharing the applicant's institution picked another entry "
        "on their own profile, was assigned, scored, and the approval counted the score "
        f"(summary: excluded={summary.get('excluded')}, per_expert="
        f"{summary.get('per_expert')})")


def test_a_look_alike_other_institution_is_not_added_beside_the_real_one(served):
    stack, sessions = served
    _institution(sessions, "岭南大学", "Lingnan University")
    look_alike = "Lingn\u0430n University"  # Cyrillic а
    applicant = f"r-{uuid.uuid4().hex[:8]}@lingnan.cn"
    with sessions() as db:
        db.add(User(email=applicant, name="新申请人", role="researcher",
                    password_hash=hash_password(PASSWORD), totp_enabled=True,
                    totp_secret=pyotp.random_base32(), profile=Profile()))
        db.commit()
    visitor = Visitor(stack.url)
    visitor.sign_in(sessions, applicant)
    assert visitor.form("/profile", {"institution": "other",
                                     "institution_other": look_alike}).status_code == 302
    with sessions() as db:
        claim = db.scalar(select(InstitutionClaim).where(InstitutionClaim.text == look_alike))
        assert claim is not None, "a look-alike spelling became a claim for a chair"
    chair = person(sessions, "chair", "岭南卫健委")
    judge = Visitor(stack.url)
    judge.sign_in(sessions, chair)
    judge.form(f"/committee/institutions/claims/{claim.id}",
               {"action": "add", "name_zh": look_alike, "name_en": look_alike},
               page="/committee/institutions")
    with sessions() as db:
        same_looking = [r.name_en for r in db.scalars(select(Institution)) if
                        r.name_en.replace("\u0430", "a") == "Lingnan University"]
    assert len(same_looking) == 1, (
        f"the registry now holds {len(same_looking)} entries that read 'Lingnan "
        f"University': {same_looking!r}")


def test_a_verification_covers_the_value_the_admin_saw(served):
    """Adversary: a researcher who sent evidence for one title and claims a higher one
    while the admin looks at it. The admin's page shows "Verify 副研究员"; the form posts
    only the kind of claim, and the portal verifies whatever the profile says when the
    POST arrives. **Fails today**: the higher, unseen title is recorded as verified."""
    stack, sessions = served
    researcher = person(sessions, "researcher", "岭南大学")
    with sessions() as db:
        db.scalar(select(User).where(User.email == researcher)).profile.title = "副研究员"
        db.commit()
    admin = Visitor(stack.url)
    admin.sign_in(sessions, person(sessions, "admin", "岭南卫健委"))
    page = admin.http.get("/admin/credentials", params={"q": researcher}).text
    assert "副研究员" in page
    token = TOKEN.search(page).group(1)
    uid = _uid(sessions, researcher)

    owner = Visitor(stack.url)  # meanwhile, the researcher raises the claim
    owner.sign_in(sessions, researcher)
    assert owner.form("/profile", {"title": "研究员", "credit_grade": "A"}).status_code == 302

    verified = admin.http.post(f"/admin/credentials/{uid}", data={
        "csrf_token": token, "kind": "title"}, files={
        "evidence": ("certificate.pdf", committee.EVIDENCE.read_bytes(), "application/pdf")})
    with sessions() as db:
        values = list(db.scalars(select(CredentialVerification.value).where(
            CredentialVerification.user_id == uid, CredentialVerification.kind == "title")))
    assert "研究员" not in values, (
        f"the admin was shown 副研究员 and verified {values} (HTTP {verified.status_code})")
