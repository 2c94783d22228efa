"""Disguised rows sent the real way out: ``gw.export`` from the sandbox client to a running
gateway process (HTTP), the portal collecting the request from the gateway (HTTP) and,
once its author has confirmed it with a fresh code, checking it. Each disguised bundle
comes back to its author with the reason; an honest bundle of the same project goes on to
review."""

from __future__ import annotations

import base64
import shutil

import pytest
from sqlalchemy import select

from approvals.exports import VoteChoice
from portal import create_app, exports
from portal.config import PortalSettings
from portal.models import ExportFile, ExportRequest, User
from portal.security import hash_password
from sandbox.client import Gateway
from sandbox.errors import InputError
from sandbox.exports import bundle
from tests.exports import disguises
from tests.portal.conftest import active_project, confirm_export
from tests.services import GatewayProcess
from tests.tiers import tier


@pytest.fixture(scope="module")
@tier("service")
def world(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-path")
    shutil.copytree(dataset, root / "catalog" / "emr-visits")
    gateway = GatewayProcess(root / "catalog", root / "gateway",
                             f"sqlite:///{root / 'gateway.db'}").start()
    settings = PortalSettings(database_url=f"sqlite:///{root / 'portal.db'}",
                              state_dir=root / "portal", datasets_dir=root / "catalog",
                              testing=True, gateway_url=gateway.url,
                              gateway_token_file=gateway.state_dir / "admin.token")
    yield create_app(settings), settings, gateway
    gateway.stop()


def rows_csv_from(result) -> bytes:
    """Row-level-looking: many more rows than the release, built beside the real one."""
    frame = result.df.to_pandas()
    return (frame.to_csv(index=False) + disguises.rows_csv().decode()).encode()


DISGUISED = [
    ("notes.txt", lambda r: base64.b64encode(rows_csv_from(r)), "rows but the cited releases"),
    ("records.json", lambda r: disguises.patients().to_json(orient="records").encode(),
     "rows but the cited releases"),
    ("analysis.ipynb", lambda r: disguises.notebook(
        lambda: disguises.display(disguises.patients()), "df"), "rows but the cited releases"),
    ("figure.png", lambda r: disguises.figure("png") + disguises.zipped(),
     "after the PNG's end (IEND): application/zip"),
    ("figure.pdf", lambda r: disguises.parquet(), "not a PDF: application/vnd.apache.parquet"),
    ("chart.png", lambda r: disguises.zipped(), "not a PNG image: application/zip"),
]


@pytest.mark.parametrize(("name", "make", "because"), DISGUISED,
                         ids=[d[0] for d in DISGUISED])
def test_a_disguised_bundle_sent_through_the_gateway_is_returned(world, tmp_path, name,
                                                                 make, because):
    app, settings, _ = world
    project = active_project(app, settings, ["sex", "visit_type"])
    gw = Gateway(settings.gateway_url, project.token)
    result = gw.count("emr-visits", group_by=["visit_type"], epsilon=0.2)
    path = tmp_path / name
    path.write_bytes(make(result))
    gw.export([path], [result], note="表1")
    with app.extensions["portal.sessions"]() as db:
        [request_id] = exports.sync(db, settings)
        request = confirm_export(db, settings, request_id)
        assert (request.state, request.verdict) == ("returned", "fail"), request.checks
        reasons = [c["reason"] for c in request.checks if c["outcome"] == "fail"]
        assert any(because in r for r in reasons), reasons


def test_an_honest_bundle_goes_to_review_and_downloads_only_as_reviewed(world, tmp_path):
    app, settings, _ = world
    project = active_project(app, settings, ["sex", "visit_type"])
    gw = Gateway(settings.gateway_url, project.token)
    result = gw.count("emr-visits", group_by=["visit_type"], epsilon=0.2)
    table = tmp_path / "counts.csv"
    table.write_text(result.df.to_pandas().to_csv(index=False))
    figure = tmp_path / "figure.png"
    figure.write_bytes(disguises.figure("png"))
    gw.export([table, figure], [result])
    with app.extensions["portal.sessions"]() as db:
        [request_id] = exports.sync(db, settings)
        request = confirm_export(db, settings, request_id)
        assert (request.state, request.verdict) == ("under_review", "pass"), request.checks

    # released, then downloaded: the copy is marked for its account and verifies …
    with app.extensions["portal.sessions"]() as db:
        reviewers = [User(email=f"c{n}-{request_id}@example.cn", name="管理者",
                          role="controller", password_hash=hash_password("x-password-1"))
                     for n in range(2)]
        db.add_all(reviewers)
        db.commit()
        request = db.get(ExportRequest, request_id)
        for reviewer in reviewers:
            exports.vote(db, settings, request, reviewer, VoteChoice.APPROVE, "")
        exports.release(db, settings, request, "test:controller")
        copy = exports.download(db, settings, request, reviewers[0])
        manifest = bundle.verify(copy, exports.signer(settings).public_pem)
        assert manifest["downloaded_by"]["account"] == reviewers[0].email
        # … and a database administrator who swaps a file after release gets no copy of it
        # signed: the download refuses files other than those reviewed and released
        stored = db.scalars(select(ExportFile).where(ExportFile.request_id == request_id,
                                                     ExportFile.name == "counts.csv")).one()
        stored.content = disguises.rows_csv()
        db.commit()
        with pytest.raises(InputError, match=r"differ from those released: counts\.csv"):
            exports.download(db, settings, db.get(ExportRequest, request_id), reviewers[1])
