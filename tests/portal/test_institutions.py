"""The institution registry (admin pages and ``sandboxctl portal institution``), people
choosing from it or naming an "other" that a chair confirms, and admins verifying titles
and credit grades against evidence files whose type is checked by content."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from portal.models import CredentialVerification, Institution, InstitutionClaim, User
from sandbox import audit
from tests import committee
from tests.conftest import ROOT
from tests.portal.conftest import PASSWORD, make_user, sign_in

CTL = str(Path(sys.executable).parent / "sandboxctl")


def staff(app, role: str, **profile):
    address = f"{role}-{uuid.uuid4().hex[:6]}@example.cn"
    user = make_user(app, address, role=role, **profile)
    client = app.test_client()
    sign_in(client, address)
    return client, user


def entries(app, action: str) -> list[dict]:
    import json
    with app.extensions["portal.engine"].connect() as conn:
        rows = conn.execute(select(audit.audit_log).where(audit.audit_log.c.action == action)
                            .order_by(audit.audit_log.c.seq)).all()
    return [json.loads(r.details) | {"actor": r.actor, "subject": r.subject} for r in rows]


def image(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(out, kind)
    return out.getvalue()


def test_admins_keep_the_registry_and_spellings_of_an_entry_are_refused(app):
    admin, _ = staff(app, "admin")
    name = f"珠江大学{uuid.uuid4().hex[:4]}"
    english = f"Pearl River University {uuid.uuid4().hex[:4]}"
    added = admin.post("/admin/institutions", data={"name_zh": name, "name_en": english,
                                                    "aliases": "PRU\n珠江大學"})
    assert added.status_code == 302
    page = admin.get("/admin/institutions").get_data(as_text=True)
    assert name in page and english in page
    for zh, en in ((f"新{name}", english.upper()), ("另一所", "ｐｒｕ"),
                   (name.replace("大学", " 大 学"), "Other")):
        refused = admin.post("/admin/institutions", data={"name_zh": zh, "name_en": en})
        assert refused.status_code == 409, (zh, en)
        assert "already in the registry" in refused.get_data(as_text=True) or \
            "已在机构名录中" in refused.get_data(as_text=True)
    with app.extensions["portal.sessions"]() as db:
        row = db.scalar(select(Institution).where(Institution.name_zh == name))
        assert db.scalar(select(func.count()).select_from(Institution).where(
            Institution.name_en.ilike(english))) == 1
    edited = admin.post(f"/admin/institutions/{row.id}", data={
        "name_zh": name, "name_en": english, "aliases": "PRU\n珠江大學\nPearl River Univ."})
    assert edited.status_code == 302
    with app.extensions["portal.sessions"]() as db:
        assert db.get(Institution, row.id).aliases == ["PRU", "珠江大學", "Pearl River Univ."]
    assert any(e["name_zh"] == name for e in entries(app, "institution.added"))
    changed = [e for e in entries(app, "institution.changed")
               if e["subject"] == f"institution:{row.id}"]
    assert changed and changed[-1]["after"]["aliases"][-1] == "Pearl River Univ."
    # Only admins: the chair may not add to the registry.
    chair, _ = staff(app, "chair")
    assert chair.post("/admin/institutions", data={"name_zh": "x", "name_en": "y"}
                      ).status_code == 403


def test_the_registry_from_the_command_line(portal_settings, app):
    env = os.environ | {"SANDBOX_PORTAL_DATABASE_URL": portal_settings.database_url,
                        "SANDBOX_PORTAL_STATE_DIR": str(portal_settings.state_dir)}

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CTL, "portal", *args], env=env, capture_output=True,
                              text=True, cwd=ROOT, timeout=120)

    tag = uuid.uuid4().hex[:4]
    added = ctl("institution", "add", "--zh", f"岭南医院{tag}", "--en",
                f"Lingnan Hospital {tag}", "--alias", f"LH{tag}")
    assert added.returncode == 0, added.stderr
    assert f"岭南医院{tag} / Lingnan Hospital {tag}" in added.stdout
    again = ctl("institution", "add", "--zh", f"别名{tag}", "--en", f"LINGNAN  HOSPITAL {tag}")
    assert again.returncode != 0 and "already in the registry" in again.stderr
    assert "Traceback" not in again.stderr
    listed = ctl("institution", "list")
    assert f"岭南医院{tag}\tLingnan Hospital {tag}\tLH{tag}" in listed.stdout
    person = f"e-{tag}@example.cn"
    created = ctl("create-user", "--email", person, "--name", "专家", "--role", "expert",
                  "--institution", f"ｌｈ{tag}", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    unknown = ctl("create-user", "--email", f"x-{tag}@example.cn", "--name", "x", "--role",
                  "expert", "--institution", "Nowhere Institute", "--password", PASSWORD)
    assert unknown.returncode != 0 and "no institution" in unknown.stderr
    with app.extensions["portal.sessions"]() as db:
        user = db.scalar(select(User).where(User.email == person))
        assert user.profile.institution.name_zh == f"岭南医院{tag}"
        assert db.scalar(select(User).where(User.email == f"x-{tag}@example.cn")) is None
    assert any(e["actor"].startswith("cli:") and e["name_zh"] == f"岭南医院{tag}"
               for e in entries(app, "institution.added"))


def register(client, address: str, **choice) -> object:
    return client.post("/register", data={
        "name": "王芳", "email": address, "password": PASSWORD, "title": "副主任医师",
        "years_experience": "8", "research_field": "心血管", "credit_grade": "A", **choice})


def test_other_names_resolve_to_the_registry_or_wait_for_a_chair(app):
    tag = uuid.uuid4().hex[:4]
    with app.extensions["portal.sessions"]() as db:
        known = committee.entry(db, f"南海大学{tag}", f"Nanhai University {tag}").id
    client = app.test_client()
    assert register(client, f"a-{tag}@example.cn").status_code == 422  # nothing chosen
    assert register(client, f"a-{tag}@example.cn", institution="other").status_code == 422
    assert register(client, f"a-{tag}@example.cn", institution="南海大学").status_code == 422
    # A spelling of an entry is that entry, at once.
    assert register(client, f"a-{tag}@example.cn", institution="other",
                    institution_other=f"  NANHAI university {tag}").status_code == 302
    # An unknown name waits for a chair.
    assert register(client, f"b-{tag}@example.cn", institution="other",
                    institution_other=f"南海大學{tag}").status_code == 302
    assert register(client, f"c-{tag}@example.cn", institution="other",
                    institution_other=f"Unheard-of Institute {tag}").status_code == 302
    with app.extensions["portal.sessions"]() as db:
        def who(prefix: str) -> User:
            return db.scalar(select(User).where(User.email == f"{prefix}-{tag}@example.cn"))
        assert who("a").profile.institution_id == known
        b, c = who("b"), who("c")
        assert b.profile.institution_id is None and b.profile.institution_claim.state == \
            "pending"
        b_claim, c_claim = b.profile.institution_claim_id, c.profile.institution_claim_id

    chair, chair_user = staff(app, "chair")
    listed = chair.get("/committee/institutions").get_data(as_text=True)
    assert f"南海大學{tag}" in listed and f"Unheard-of Institute {tag}" in listed
    # Folding cannot equate traditional and simplified characters: the chair maps it.
    mapped = chair.post(f"/committee/institutions/claims/{b_claim}",
                        data={"action": "map", "institution": str(known)})
    assert mapped.status_code == 302
    # Adding a claim whose names spell an existing entry is refused; map instead.
    clash = chair.post(f"/committee/institutions/claims/{c_claim}", data={
        "action": "add", "name_zh": f"南海大学{tag}", "name_en": "x"})
    assert clash.status_code == 409
    assert chair.post(f"/committee/institutions/claims/{c_claim}",
                      data={"action": "reject"}).status_code == 422  # reasons required
    assert chair.post(f"/committee/institutions/claims/{c_claim}", data={
        "action": "reject", "reasons": "不是一个机构"}).status_code == 302
    assert chair.post(f"/committee/institutions/claims/{c_claim}", data={
        "action": "map", "institution": str(known)}).status_code == 403  # decided already
    with app.extensions["portal.sessions"]() as db:
        b, c = (db.scalar(select(User).where(User.email == f"{p}-{tag}@example.cn"))
                for p in ("b", "c"))
        assert b.profile.institution_id == known and b.profile.institution_claim_id is None
        assert c.profile.institution_id is None and c.profile.institution_claim_id is None
        assert db.get(InstitutionClaim, c_claim).reasons == "不是一个机构"
    c_client = app.test_client()
    sign_in(c_client, f"c-{tag}@example.cn")
    assert "不是一个机构" in c_client.get("/profile").get_data(as_text=True)
    added = c_client.post("/profile", data={"institution": "other",
                                            "institution_other": f"New Lab {tag}"})
    assert added.status_code == 302
    with app.extensions["portal.sessions"]() as db:
        c = db.scalar(select(User).where(User.email == f"c-{tag}@example.cn"))
        new_claim = c.profile.institution_claim_id
    assert chair.post(f"/committee/institutions/claims/{new_claim}", data={
        "action": "add", "name_zh": f"新实验室{tag}", "name_en": f"New Lab {tag}"}
    ).status_code == 302
    with app.extensions["portal.sessions"]() as db:
        c = db.scalar(select(User).where(User.email == f"c-{tag}@example.cn"))
        assert c.profile.institution.name_zh == f"新实验室{tag}"
    confirmed = entries(app, "institution.confirmed")
    assert {e["action"] for e in confirmed} >= {"map", "add"}
    assert all(e["actor"] == f"user:{chair_user.id}" for e in confirmed[-2:])
    assert any(e["text"] == f"Unheard-of Institute {tag}"
               for e in entries(app, "institution.rejected"))
    assert any(e["text"] == f"南海大學{tag}" for e in entries(app, "institution.claimed"))


@pytest.mark.parametrize(("name", "content", "accepted"), [
    ("title.pdf", (committee.EVIDENCE).read_bytes(), "pdf"),
    ("scan.png", image("PNG"), "png"),
    ("scan.jpg", image("JPEG"), "jpeg"),
    ("renamed-zip.pdf", b"PK\x03\x04" + b"\x00" * 200, None),
    ("header-only.pdf", b"%PDF-1.7\nnot really a pdf", None),
    ("truncated.png", image("PNG")[:60], None),
    ("notes.png", "职称证书".encode() * 20, None),
    ("animation.gif", b"GIF89a" + image("GIF")[6:], None),
])
def test_evidence_is_checked_by_its_content(app, name, content, accepted):
    admin, admin_user = staff(app, "admin")
    address = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    subject = make_user(app, address, institution="岭南大学", title="主任医师",
                        credit_grade="A", years_experience=10)
    before = len(entries(app, "credential.verified"))
    response = admin.post(f"/admin/credentials/{subject.id}", data={
        "kind": "title", "value": "主任医师", "evidence": (io.BytesIO(content), name)},
        content_type="multipart/form-data")
    with app.extensions["portal.sessions"]() as db:
        stored = db.scalars(select(CredentialVerification).where(
            CredentialVerification.user_id == subject.id)).all()
    if accepted:
        assert response.status_code == 302
        assert [(r.kind, r.value, r.evidence_type) for r in stored] == [
            ("title", "主任医师", accepted)]
        assert stored[0].evidence_sha256 == hashlib.sha256(content).hexdigest()
        assert stored[0].verified_by == admin_user.id
        logged = entries(app, "credential.verified")[-1]
        assert logged["sha256"] == stored[0].evidence_sha256 and logged["value"] == "主任医师"
        fetched = admin.get(f"/admin/evidence/{stored[0].id}")
        assert fetched.data == content
        assert fetched.headers["X-Content-SHA256"] == stored[0].evidence_sha256
    else:
        assert response.status_code == 422
        assert "PDF, PNG or JPEG" in response.get_data(as_text=True) or \
            "PDF、PNG 或 JPEG" in response.get_data(as_text=True)
        assert stored == [] and len(entries(app, "credential.verified")) == before


def test_a_verification_covers_the_value_it_saw(app):
    address = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, address, institution="岭南大学", title="副主任医师", credit_grade="A",
              years_experience=10, verified=True)
    client = app.test_client()
    sign_in(client, address)
    page = client.get("/profile").get_data(as_text=True)
    assert page.count('data-basis="verified"') == 2
    assert client.post("/profile", data={"title": "主任医师", "credit_grade": "A"}
                       ).status_code == 302
    page = client.get("/profile").get_data(as_text=True)
    assert 'data-basis="self_declared" data-claim="title"' in page
    assert 'data-basis="verified" data-claim="credit_grade"' in page
    changed = entries(app, "profile.changed")[-1]
    assert changed["title"] == {"before": "副主任医师", "after": "主任医师"}


def test_a_look_alike_waits_for_a_chair_who_sees_what_it_imitates(app):
    """A name typed with a Cyrillic а is not the entry it imitates (nor a new one): it is a
    claim, the chair's page names the entry it looks like, and neither a chair nor an admin
    can add it beside that entry."""
    tag = uuid.uuid4().hex[:4]
    english = f"Nanling University {tag}"
    look_alike = english.replace("a", "\u0430", 1)
    with app.extensions["portal.sessions"]() as db:
        known = committee.entry(db, f"南岭大学{tag}", english)
    address = f"l-{tag}@example.cn"
    make_user(app, address)
    client = app.test_client()
    sign_in(client, address)
    assert client.post("/profile", data={"institution": "other",
                                         "institution_other": look_alike}).status_code == 302
    with app.extensions["portal.sessions"]() as db:
        claim = db.scalar(select(InstitutionClaim).where(InstitutionClaim.text == look_alike))
        assert claim.state == "pending"
    chair, _ = staff(app, "chair")
    listed = chair.get("/committee/institutions").get_data(as_text=True)
    hint = listed.split(f'id="claim-{claim.id}"')[1].split("</section>")[0]
    assert f'class="warnings look-alike" data-institution="{known.id}"' in hint
    refused = chair.post(f"/committee/institutions/claims/{claim.id}", data={
        "action": "add", "name_zh": look_alike, "name_en": look_alike})
    assert refused.status_code == 409
    assert "字形相同" in refused.get_data(as_text=True) or \
        "looks the same" in refused.get_data(as_text=True)
    admin, _ = staff(app, "admin")
    assert admin.post("/admin/institutions", data={
        "name_zh": f"新{tag}", "name_en": look_alike.upper(), "aliases": ""}).status_code == 409
    with app.extensions["portal.sessions"]() as db:
        assert db.scalar(select(func.count()).select_from(Institution).where(
            Institution.name_en.like(f"%{tag}%"))) == 1
    assert chair.post(f"/committee/institutions/claims/{claim.id}", data={
        "action": "map", "institution": str(known.id)}).status_code == 302


def test_a_verification_names_the_value_the_admin_saw(app):
    """The form posts the value it showed; a claim changed since is refused with the reason
    and nothing is recorded."""
    admin, _ = staff(app, "admin")
    address = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    subject = make_user(app, address, institution="岭南大学", title="副研究员",
                        credit_grade="A", years_experience=10)
    page = admin.get(f"/admin/credentials?q={address}").get_data(as_text=True)
    assert '<input type="hidden" name="value" value="副研究员">' in page

    def post(value: str | None):
        data = {"kind": "title", "evidence": (io.BytesIO(committee.EVIDENCE.read_bytes()),
                                              "certificate.pdf")}
        if value is not None:
            data["value"] = value
        return admin.post(f"/admin/credentials/{subject.id}", data=data,
                          content_type="multipart/form-data")

    before = len(entries(app, "credential.verified"))
    for shown, reason in (("研究员", "而非页面所示的“研究员”：未作核验"),
                          (None, "请说明核验的是哪一项内容"), ("", "请说明核验的是哪一项内容")):
        refused = post(shown)
        assert refused.status_code == 422 and reason in refused.get_data(as_text=True), \
            refused.get_data(as_text=True)
    with app.extensions["portal.sessions"]() as db:
        assert db.scalars(select(CredentialVerification).where(
            CredentialVerification.user_id == subject.id)).all() == []
    assert len(entries(app, "credential.verified")) == before
    assert post("副研究员").status_code == 302
    with app.extensions["portal.sessions"]() as db:
        assert [r.value for r in db.scalars(select(CredentialVerification).where(
            CredentialVerification.user_id == subject.id))] == ["副研究员"]
