"""Export requests end to end with a running gateway (real HTTP): a researcher exports from
the client, the portal collects the bundle, which waits until its author confirms it with a
fresh code, then checks it; two controllers review it blinded to each other, changes are
requested, the corrected bundle is a new round and is approved; a bundle with an ID number
goes straight back to its author."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest
from PIL import Image

from approvals.errors import IllegalTransition
from approvals.exports import VoteChoice
from portal import exports
from portal.models import Application, ExportRequest, User
from portal.security import hash_password
from sandbox.client import Gateway
from sandbox.data import idcard
from sandbox.errors import InputError, NotFound
from sandbox.exports import bundle
from tests.mail import start_smtp
from tests.portal.conftest import active_project, confirm_export
from tests.services import GatewayProcess
from tests.tiers import tier


@pytest.fixture(scope="module")
@tier("service")
def gateway(portal_settings, catalog_dir, tmp_path_factory):
    """A gateway of this portal's own (one per database backend): a gateway serves one
    portal, whose application numbers its projects carry."""
    state = tmp_path_factory.mktemp("exports-gateway")
    process = GatewayProcess(catalog_dir, state / "state",
                             f"sqlite:///{state / 'gateway.db'}").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
@tier("service")
def inbox():
    controller, box = start_smtp()
    yield box
    controller.stop()


def project(app, settings) -> tuple[int, str, str]:
    """An active project with a real grant: (application id, token, researcher e-mail)."""
    made = active_project(app, settings, ["sex", "visit_type"], project_title="导出测试")
    return made.application_id, made.token, made.email


def controllers(app, n: int) -> list[int]:
    ids = []
    with app.extensions["portal.sessions"]() as db:
        for _ in range(n):
            user = User(email=f"c-{uuid.uuid4().hex[:6]}@example.cn", name="管理者",
                        role="controller", password_hash=hash_password("x-password-1"))
            db.add(user)
            db.flush()
            ids.append(user.id)
        db.commit()
    return ids


def test_two_blinded_reviewers_a_returned_round_and_approval(app, portal_settings, gateway,
                                                             inbox, tmp_path):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "smtp_port": inbox.port})
    _, token, email = project(app, settings)
    gw = Gateway(gateway.url, token)
    counts = gw.count("emr-visits", group_by=["visit_type"], epsilon=0.5)
    table = tmp_path / "visits.csv"
    table.write_text("visit_type,n\n" + "\n".join(
        f"{r['visit_type']},{r['count']}" for r in counts.df.to_dicts()))
    figure = tmp_path / "figure.png"
    Image.new("RGB", (320, 200), "white").save(figure)
    gw.export([table, figure], [counts], note="表1 就诊类型")
    first, second = controllers(app, 2)
    with app.extensions["portal.sessions"]() as db:
        [request_id] = exports.sync(db, settings)
        request = confirm_export(db, settings, request_id)
        assert request.state == "under_review" and request.verdict == "pass", request.checks
        assert exports.vote(db, settings, request, db.get(User, first), VoteChoice.APPROVE,
                            "") == "under_review"
        # blinded: the second reviewer sees nothing of the first vote yet
        assert exports.visible_votes(db, settings, request, db.get(User, second)) == []
        assert exports.vote(db, settings, request, db.get(User, second),
                            VoteChoice.REQUEST_CHANGES, "请合并小于10的类别") == "returned"
        assert len(exports.visible_votes(db, settings, request, db.get(User, second))) == 2
    assert any("changes requested" in m["Subject"] for m in inbox.to(email))

    gw.export([table, figure], [counts], note="已合并")  # the corrected bundle: round two
    with app.extensions["portal.sessions"]() as db:
        assert exports.sync(db, settings) == [request_id]
        request = confirm_export(db, settings, request_id)
        assert (request.state, request.round, request.note) == ("under_review", 2, "已合并")
        exports.vote(db, settings, request, db.get(User, second), VoteChoice.APPROVE, "")
        assert exports.vote(db, settings, request, db.get(User, first), VoteChoice.APPROVE,
                            "") == "approved"
        released = exports.release(db, settings, request, "test:controller")
        assert db.get(ExportRequest, request_id).state == "released"
    assert any("approved" in m["Subject"] for m in inbox.to(email))
    manifest = bundle.verify(released, exports.signer(settings).public_pem)
    assert manifest["epsilon_spent"] == 0.5 and manifest["rounds"] == 2
    assert [d["id"] for d in manifest["datasets"]] == ["emr-visits"]
    assert len(manifest["reviewers"]) == 4 and manifest["receipts"] == [counts.receipt]
    with zipfile.ZipFile(io.BytesIO(released)) as archive:
        names = set(archive.namelist())
        marked = Image.open(io.BytesIO(archive.read("files/figure.png")))
        citation = archive.read("CITATION.txt").decode()
    assert {"files/visits.csv", "files/figure.png", "manifest.json"} <= names
    assert marked.tobytes() != Image.new("RGB", (320, 200), "white").tobytes()  # watermarked
    assert "emr-visits" in citation and "ε = 0.5" in citation
    # a bundle altered after release no longer verifies
    tampered = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(released)) as source, \
            zipfile.ZipFile(tampered, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            target.writestr(item, data + b"1" if item == "files/visits.csv" else data)
    with pytest.raises(InputError, match="altered after release"):
        bundle.verify(tampered.getvalue(), exports.signer(settings).public_pem)


def test_a_bundle_failing_the_checks_goes_back_to_its_author(app, portal_settings, gateway,
                                                             tmp_path):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token"})
    _, token, _ = project(app, settings)
    gw = Gateway(gateway.url, token)
    result = gw.count("emr-visits", epsilon=0.2)
    first17 = "44010619850312123"
    notes = tmp_path / "notes.txt"
    notes.write_text(f"患者 {first17 + idcard.check_digit(first17)} 需要随访\n")
    gw.export([notes], [result])
    [reviewer_id] = controllers(app, 1)
    with app.extensions["portal.sessions"]() as db:
        [request_id] = exports.sync(db, settings)
        request = confirm_export(db, settings, request_id)
        assert (request.state, request.verdict) == ("returned", "fail")
        assert any("resident ID number" in c["reason"] for c in request.checks)
        with pytest.raises(InputError, match="not under review"):
            exports.vote(db, settings, request, db.get(User, reviewer_id),
                         VoteChoice.APPROVE, "")
        with pytest.raises(NotFound):  # only its author withdraws it
            exports.withdraw(db, request, db.get(User, reviewer_id))
        author = db.get(Application, request.application_id).researcher
        exports.withdraw(db, request, author)
        assert db.get(ExportRequest, request_id).state == "withdrawn"


def test_a_bundle_from_the_sandbox_waits_for_its_authors_fresh_code(app, portal_settings,
                                                                    gateway, inbox, tmp_path):
    """Collected, a bundle sent from the sandbox is neither checked nor reviewable; its
    author is mailed; nobody else confirms it, and a confirmation needs the step-up."""
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "smtp_port": inbox.port})
    _, token, email = project(app, settings)
    gw = Gateway(gateway.url, token)
    result = gw.count("emr-visits", epsilon=0.2)
    notes = tmp_path / "method.md"
    notes.write_text("Method: one count.\n")
    gw.export([notes], [result], note="方法")
    [reviewer_id] = controllers(app, 1)
    with app.extensions["portal.sessions"]() as db:
        [request_id] = exports.sync(db, settings)
        request = db.get(ExportRequest, request_id)
        assert (request.state, request.verdict, request.checks) == ("unconfirmed", "", [])
        with pytest.raises(InputError, match="not under review"):
            exports.vote(db, settings, request, db.get(User, reviewer_id),
                         VoteChoice.APPROVE, "")
        with pytest.raises(NotFound):  # only its author confirms it
            exports.confirm(db, settings, request, db.get(User, reviewer_id))
        assert db.get(ExportRequest, request_id).state == "unconfirmed"
    assert any("waits for your confirmation" in m["Subject"] for m in inbox.to(email))

    gw.export([notes], [result], note="不是我发的")  # a second one, which the author withdraws
    with app.extensions["portal.sessions"]() as db:
        [other_id] = exports.sync(db, settings)
        other = db.get(ExportRequest, other_id)
        exports.withdraw(db, other, db.get(Application, other.application_id).researcher)
        assert (other.state, other.checks) == ("withdrawn", [])
        with pytest.raises(IllegalTransition):
            exports.confirm(db, settings, other, db.get(Application,
                                                        other.application_id).researcher)
        assert confirm_export(db, settings, request_id).state == "under_review"
