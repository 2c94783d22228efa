"""Conflicts of interest that look back, attacked over HTTP against the served portal.

A person's institution is their own pick on their profile, effective at once. Adversaries:

- an **expert** who leaves the applicant's institution on their profile *before* the
  application is submitted, or who is assigned from elsewhere, joins the applicant's
  institution and leaves it again while assigned;
- an **applicant** who leaves their institution after submitting, so that a colleague from
  it can be assigned;
- a **chair** from the applicant's institution who decides the application.

Every institution held since the look-back date (submission less
``conflict_lookback_days``) conflicts as the one held now; the chair's page lists the
changes. These tests fail on the code before the look-back (ab8a222)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from portal.models import User
from sandbox import audit
from tests import committee
from tests.attacks.conftest import Visitor, person

JSON = {"X-Requested-With": "attack-test"}
SCORES = {"legality": 5, "consistency": 5, "value": 5, "leakage_risk": 1, "cost": 5}
APPROVE = {"verdict": "approve", "reasons": "同意", "epsilon": 1, "term_months": 6}


def _entry(sessions, name: str, name_en: str):
    with sessions() as db:
        row = committee.entry(db, name, name_en)
        return row.id, row.label


def _uid(sessions, email: str) -> int:
    with sessions() as db:
        return db.scalar(select(User.id).where(User.email == email))


def _people(stack, sessions, *emails: str) -> dict[str, Visitor]:
    out = {}
    for email in emails:
        out[email] = Visitor(stack.url)
        out[email].sign_in(sessions, email)
    return out


def _researcher(sessions, institution: str = "岭南大学") -> str:
    email = person(sessions, "researcher", institution)
    with sessions() as db:  # title and grade verified: an approval could go through
        committee.verify(db, db.scalar(select(User).where(User.email == email)))
    return email


def _submitted(visitor: Visitor) -> int:
    drafted = visitor.http.post("/api/v1/applications", headers=JSON, json={
        "dataset": "emr-visits", "title": "回看冲突", "purpose": "medical_research",
        "non_profit": True, "epsilon": 1, "term_months": 6,
        "fields": [{"field": "sex", "justification": "按性别分层"}]})
    assert drafted.status_code == 201, drafted.text
    number = drafted.json()["id"]
    assert visitor.http.post(f"/api/v1/applications/{number}/submit", headers=JSON,
                             json={}).status_code == 200
    return number


def _move(visitor: Visitor, institution: int) -> None:
    moved = visitor.form("/profile", {"institution": str(institution), "institution_other": ""})
    assert moved.status_code == 302


def _assign(chair: Visitor, number: int, ids: list[int]):
    return chair.http.post(f"/api/v1/applications/{number}/assign", headers=JSON,
                           json={"experts": ids})


def _score(expert: Visitor, number: int):
    return expert.http.post(f"/api/v1/applications/{number}/scores", headers=JSON,
                            json={"scores": SCORES, "comments": "同意"})


def _audited(stack, sessions, action: str, number: int) -> list[dict]:
    with sessions() as db:
        rows = db.execute(select(audit.audit_log).where(
            audit.audit_log.c.action == action,
            audit.audit_log.c.subject == f"application:{number}")).all()
    return [json.loads(r.details) | {"actor": r.actor} for r in rows]


def test_an_expert_who_left_before_the_submission_is_still_conflicted(served):
    """The red team's attack in the other order: the colleague leaves first, the applicant
    submits afterwards. A departure older than the look-back no longer counts."""
    stack, sessions = served
    zhongshan, _ = _entry(sessions, "中山医院", "Zhongshan Hospital")
    lingnan, _ = _entry(sessions, "岭南大学", "Lingnan University")
    researcher = _researcher(sessions)
    colleague = person(sessions, "expert", "岭南大学")
    others = [person(sessions, "expert", "南方医院"), person(sessions, "expert", "珠江医院")]
    chair = person(sessions, "chair", "岭南卫健委")
    people = _people(stack, sessions, researcher, colleague, chair)
    _move(people[colleague], zhongshan)
    number = _submitted(people[researcher])

    refused = _assign(people[chair], number, [_uid(sessions, e) for e in (colleague, *others)])
    assert refused.status_code == 403, refused.text
    assert refused.json()["conflict"] == "former_institution"
    assert "岭南大学" in refused.json()["zh"] and "Lingnan University" in refused.json()["reason"]
    page = people[chair].http.get(f"/committee/applications/{number}").text
    listed = page.split(_name(sessions, colleague), 1)[1].split("</label>")[0]
    assert "曾隶属岭南大学" in listed or "belonged to Lingnan University" in listed

    from portal.models import FormerInstitution  # (the table the look-back keeps)
    long_gone = person(sessions, "expert", "中山医院")
    with sessions() as db:  # left the applicant's institution two years ago
        db.add(FormerInstitution(user_id=_uid(sessions, long_gone), institution_id=lingnan,
                                 left_at=datetime.now(UTC) - timedelta(days=730)))
        db.commit()
    assigned = _assign(people[chair], number, [_uid(sessions, e) for e in (long_gone, *others)])
    assert assigned.status_code == 200, assigned.text


def _name(sessions, email: str) -> str:
    with sessions() as db:
        return db.scalar(select(User.name).where(User.email == email))


def test_an_expert_who_joins_and_leaves_while_assigned_stays_conflicted(served):
    stack, sessions = served
    zhongshan, zhongshan_label = _entry(sessions, "中山医院", "Zhongshan Hospital")
    lingnan, lingnan_label = _entry(sessions, "岭南大学", "Lingnan University")
    researcher = _researcher(sessions)
    mover = person(sessions, "expert", "中山医院")
    others = [person(sessions, "expert", "南方医院"), person(sessions, "expert", "珠江医院")]
    chair = person(sessions, "chair", "岭南卫健委")
    people = _people(stack, sessions, researcher, mover, *others, chair)
    number = _submitted(people[researcher])
    assert _assign(people[chair], number,
                   [_uid(sessions, e) for e in (mover, *others)]).status_code == 200
    for expert in (mover, *others):
        assert _score(people[expert], number).status_code == 200

    _move(people[mover], lingnan)  # joins the applicant's institution ...
    assert _score(people[mover], number).json()["conflict"] == "institution"
    _move(people[mover], zhongshan)  # ... and leaves it again
    again = _score(people[mover], number)
    assert again.status_code == 403 and again.json()["conflict"] == "former_institution"

    summary = people[chair].http.get(f"/api/v1/applications/{number}/summary").json()
    assert [(e["expert"], e["code"]) for e in summary["excluded"]] == [
        (_uid(sessions, mover), "former_institution")]
    assert not summary["quorum_met"]
    short = people[chair].http.post(f"/api/v1/applications/{number}/decision", headers=JSON,
                                    json=APPROVE)
    assert short.status_code == 422 and "no longer count" in short.json()["reason"]
    page = people[chair].http.get(f"/committee/applications/{number}").text
    changes = page.split('id="institution-changes"')[1].split("</section>")[0]
    assert f'data-user="{_uid(sessions, mover)}" data-role="expert"' in changes
    assert f"{zhongshan_label} → {lingnan_label} → {zhongshan_label}" in changes
    assert [e["conflict"] for e in _audited(stack, sessions, "application.score_refused",
                                            number)] == ["institution", "former_institution"]


def test_an_applicant_who_leaves_after_submitting_keeps_their_colleagues_conflicted(served):
    stack, sessions = served
    _, lingnan_label = _entry(sessions, "岭南大学", "Lingnan University")
    elsewhere, elsewhere_label = _entry(sessions, "珠江研究所", "Zhujiang Institute")
    researcher = _researcher(sessions)
    colleague = person(sessions, "expert", "岭南大学")
    others = [person(sessions, "expert", "南方医院"), person(sessions, "expert", "中山医院")]
    chair = person(sessions, "chair", "岭南卫健委")
    people = _people(stack, sessions, researcher, chair)
    number = _submitted(people[researcher])
    _move(people[researcher], elsewhere)  # matches nobody on the panel now

    refused = _assign(people[chair], number, [_uid(sessions, e) for e in (colleague, *others)])
    assert refused.status_code == 403, refused.text
    assert refused.json()["conflict"] == "former_institution"
    page = people[chair].http.get(f"/committee/applications/{number}").text
    changes = page.split('id="institution-changes"')[1].split("</section>")[0]
    assert f'data-user="{_uid(sessions, researcher)}" data-role="applicant"' in changes
    assert f"{lingnan_label} → {elsewhere_label}" in changes


def test_a_chair_from_the_applicants_institution_cannot_decide(served):
    stack, sessions = served
    researcher = _researcher(sessions)
    panel = [person(sessions, "expert", h) for h in ("中山医院", "南方医院", "珠江医院")]
    insider = person(sessions, "chair", "岭南大学")  # the applicant's institution
    chair = person(sessions, "chair", "岭南卫健委")
    people = _people(stack, sessions, researcher, *panel, insider, chair)
    number = _submitted(people[researcher])
    assert _assign(people[chair], number, [_uid(sessions, e) for e in panel]).status_code == 200
    for expert in panel:
        assert _score(people[expert], number).status_code == 200

    page = people[insider].http.get(f"/committee/applications/{number}").text
    assert 'id="chair-conflict"' in page
    refused = people[insider].http.post(f"/api/v1/applications/{number}/decision",
                                        headers=JSON, json=APPROVE)
    assert refused.status_code == 403, refused.text
    assert refused.json()["conflict"] == "institution"
    assert "与申请人同属岭南大学" in refused.json()["zh"]
    state = people[chair].http.get(f"/api/v1/applications/{number}").json()["state"]
    assert state == "under_review"
    assert [(e["conflict"], e["actor"]) for e in _audited(
        stack, sessions, "application.decision_refused", number)] == [
        ("institution", f"user:{_uid(sessions, insider)}")]
    assert 'id="chair-conflict"' not in people[chair].http.get(
        f"/committee/applications/{number}").text
    decided = people[chair].http.post(f"/api/v1/applications/{number}/decision",
                                      headers=JSON, json=APPROVE)
    assert decided.status_code == 200, decided.text
    assert decided.json()["application"]["state"] == "approved"
