"""The portal's audit chain is anchored outside its database: the served portal keeps a
witness file (entries other processes append — ``sandboxctl portal create-user`` — too),
and its periodic round hands the gateway process its signed checkpoint and records the
gateway's. Whoever can write the portal's database cuts its tail, rewrites an entry and
re-hashes forward, or puts back an older copy; ``sandboxctl audit verify`` names the first
entry that no longer matches — and the controller's audit page shows the same for the
portal's chain and the gateway's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from portal import create_app
from portal.config import PortalSettings
from sandbox import receipts
from sandbox.audit import audit_log
from sandbox.db import make_engine
from tests.audit_attacks import (
    consistent,
    copy_sqlite,
    cut_tail,
    last_seq,
    rewrite,
    verify,
    wait_witnessed,
)
from tests.conftest import ROOT
from tests.mail import start_smtp
from tests.portal.conftest import PASSWORD, sign_in
from tests.services import GatewayProcess, free_port, portal_env, stop_process
from tests.tiers import tier

CTL = str(Path(sys.executable).parent / "sandboxctl")


class Served:
    """``sandboxctl portal serve`` beside a gateway process, with a one-second periodic
    round."""

    def __init__(self, root: Path, datasets: Path) -> None:
        self.root = root
        self.gateway = GatewayProcess(datasets, root / "gateway",
                                      f"sqlite:///{root / 'gw.db'}").start()
        self.smtp, inbox = start_smtp()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | portal_env(root, datasets, self.gateway, inbox.port,
                                           self.url) | {
            "SANDBOX_PORTAL_TERM_CHECK_SECONDS": "1",
            "SANDBOX_PORTAL_AUDIT_WITNESS_MAX_BYTES": "1200"}  # rotates along the way
        self.database_url = self.env["SANDBOX_PORTAL_DATABASE_URL"]
        self.witness = root / "portal" / "audit-witness.jsonl"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([CTL, "portal", "serve", "--port", str(self.port)],
                                     env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "portal.log", "ab"))  # noqa: SIM115
        for _ in range(150):
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the portal did not start")

    def stop(self) -> None:
        stop_process(self.proc)

    def create_user(self, email: str, role: str = "researcher") -> None:
        subprocess.run([CTL, "portal", "create-user", "--email", email, "--name", email,
                        "--role", role, "--password", PASSWORD], env=self.env, check=True,
                       capture_output=True, cwd=ROOT)

    def failed_sign_in(self, email: str) -> None:
        with httpx.Client(base_url=self.url) as client:
            page = client.get("/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            answer = client.post("/login", data={"email": email, "password": "wrong",
                                                 "csrf_token": token})
            assert answer.status_code == 401

    def settled(self, timeout: float = 60) -> int:
        """Until the gateway recorded a checkpoint of the portal's chain covering its last
        entry other than checkpoints, and the witness has every entry; that last entry."""
        engine = make_engine(self.database_url)
        with engine.connect() as conn:
            wanted = conn.execute(select(audit_log.c.seq).where(audit_log.c.action.not_in(
                ("audit.checkpointed", "audit.anchored"))).order_by(audit_log.c.seq.desc())
                .limit(1)).scalar()
        engine.dispose()
        deadline = time.monotonic() + timeout
        while True:
            records = self.gateway.admin("GET", "/v1/admin/audit/anchors?service=portal"
                                         ).json()["records"]
            if max((json.loads(r["details"])["seq"] for r in records), default=0) >= wanted:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway recorded no checkpoint through {wanted}")
            time.sleep(0.3)
        time.sleep(2.5)  # the round that follows changes nothing: the exchange is settled
        return wait_witnessed(self.witness, self.database_url)

    def close(self) -> None:
        self.stop()
        self.smtp.stop()
        self.gateway.stop()


@pytest.fixture(scope="module")
@tier("service")
def history(catalog_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("anchored-portal")
    served = Served(root, catalog_dir)
    try:
        served.create_user("controller@example.cn", "controller")
        served.start()
        served.create_user("first@example.cn")
        served.failed_sign_in("first@example.cn")
        older_last = served.settled()
        served.stop()
        older = copy_sqlite(served.database_url, root / "older.db")
        served.start()  # a restart, over the same database and state
        served.create_user("second@example.cn")
        served.failed_sign_in("second@example.cn")
        last = served.settled()
        yield {"served": served, "older": older, "older_last": older_last, "last": last,
               "peers": ["--service", "portal",
                         "--public-key", root / "gateway" / "audit-peers" / "portal.pem",
                         "--peer-http", served.gateway.url,
                         served.gateway.state_dir / "admin.token"],
               "options": ["--witness", served.witness]}
    finally:
        served.close()


def _copy(history) -> str:
    served = history["served"]
    return copy_sqlite(served.database_url, served.root / f"copy-{time.monotonic_ns()}.db")


def test_an_untouched_chain_verifies_after_a_restart(history):
    assert list(history["served"].witness.parent.glob("audit-witness.0*.jsonl"))
    result = verify(history["served"].database_url, *history["peers"], *history["options"])
    assert result.code == 0, result.stderr
    assert f"through entry {history['last']}" in result.stdout


def test_cutting_the_tail_is_named(history):
    url = _copy(history)
    first = cut_tail(url, 3)
    assert consistent(url)
    result = verify(url, *history["peers"], *history["options"])
    assert result.code == 6, result.stdout
    assert f"entry {first} is missing: the witness file recorded it" in result.stderr
    # without the witness, the gateway's record of the portal's checkpoint still tells
    alone = verify(url, *history["peers"])
    assert alone.code == 6 and "gateway's record of its checkpoint" in alone.stderr, alone


def test_rewriting_an_entry_and_rehashing_forward_is_named(history):
    url = _copy(history)
    engine = make_engine(url)
    with engine.connect() as conn:
        registered = conn.execute(select(audit_log.c.seq).where(
            audit_log.c.action == "user.registered").order_by(audit_log.c.seq)
            .limit(1).offset(1)).scalar()
    engine.dispose()
    rewrite(url, registered, actor="cli:someone-else")
    assert consistent(url)
    result = verify(url, *history["peers"], *history["options"])
    assert result.code == 6, result.stdout
    assert f"entry {registered} no longer matches the witness file" in result.stderr
    assert f"第 {registered} 条记录与见证文件不符" in result.stderr


def test_putting_back_an_older_copy_is_named(history):
    assert consistent(history["older"])
    result = verify(history["older"], *history["peers"], *history["options"])
    assert result.code == 6, result.stdout
    assert f"entry {history['older_last'] + 1} is missing" in result.stderr


def test_the_gateway_keeps_the_portals_first_key_and_refuses_another(history, tmp_path):
    """Someone else with the gateway's admin token cannot pass their checkpoints off as
    the portal's once the gateway knows the portal's key."""
    gateway = history["served"].gateway
    impostor = receipts.Signer(tmp_path / "impostor.pem")
    forged = impostor.sign({"service": "portal", "seq": 2, "hash": "0" * 64,
                            "at": "2025-01-01T00:00:00+00:00"}, receipts.Domain.CHECKPOINT)
    before = gateway.admin("GET", "/v1/admin/audit/anchors?service=portal").json()
    answer = gateway.admin("POST", "/v1/admin/audit/checkpoints", {
        "checkpoint": forged, "public_key": impostor.public_pem.decode()})
    assert answer.status_code == 403 and "another key" in answer.json()["reason"]
    kept = (gateway.state_dir / "audit-peers" / "portal.pem").read_text()
    answer = gateway.admin("POST", "/v1/admin/audit/checkpoints", {
        "checkpoint": forged, "public_key": kept})  # the portal's key, another's signature
    assert answer.status_code == 403 and "checkpoint refused" in answer.json()["reason"]
    after = gateway.admin("GET", "/v1/admin/audit/anchors?service=portal").json()
    assert after["records"] == before["records"]


def test_the_controllers_page_names_the_first_changed_entry_of_both_chains(history):
    """Last, as it changes the live databases: the page's Verify button."""
    served = history["served"]
    settings = PortalSettings(**{k.removeprefix("SANDBOX_PORTAL_").lower(): v
                                 for k, v in served.env.items()
                                 if k.startswith("SANDBOX_PORTAL_")} | {"testing": True})
    app = create_app(settings)
    page = app.test_client()
    sign_in(page, "controller@example.cn")  # password and a fresh TOTP code
    page.post("/controller/audit/verify")
    shown = page.get("/controller/audit?lang=en").get_data(as_text=True)
    assert 'id="verify-result" data-ok="true"' in shown, shown

    # the gateway's tail cut (and its head moved) in its database, the gateway running
    gateway_db = served.gateway.database_url
    wait_witnessed(served.gateway.state_dir / "audit-witness.jsonl", gateway_db)
    first = cut_tail(gateway_db, 2)
    # one of the portal's entries rewritten and re-hashed forward in its database
    k = history["older_last"] - 1
    rewrite(served.database_url, k, actor="user:999")
    page.post("/controller/audit/verify")
    shown = page.get("/controller/audit").get_data(as_text=True)
    result = shown.split('id="verify-result"', 1)[1].split("</p>", 1)[0]
    assert 'data-ok="false"' in result
    assert f"第 {k} 条记录与见证文件不符" in result, result
    assert 'id="gateway-verify" data-ok="false"' in result
    # the running gateway may append again after the cut, which re-fills entry `first`
    # with other content: either way the first changed entry is named
    assert (f"第 {first} 条记录缺失" in result
            or f"第 {first} 条记录与见证文件不符" in result), result
    assert last_seq(gateway_db) >= first - 1
