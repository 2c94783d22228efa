"""`sandboxctl demo seed` and `sandboxctl demo totp`, run as `make run` runs them: a real
CLI process over a portal database, beside a real gateway process (no hub: the sandbox
path is the end-to-end test's, tests/hub/test_demo.py).

Adversary: whoever runs the seed where it does not belong — outside demo mode, or over a
portal that already serves real people — would create accounts whose passwords are printed
and kept in a file. Both are refused before anything is written."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import create_engine, select

from portal import create_app
from portal.config import PortalSettings
from portal.models import Agreement, Application, User
from portal.security import check_password
from sandbox.audit import audit_head, audit_log
from tests.conftest import CliResult
from tests.mail import start_smtp
from tests.services import ROOT, GatewayProcess, portal_env
from tests.tiers import tier

CTL = str(Path(sys.executable).parent / "sandboxctl")
ROLES = ["researcher", "expert1", "expert2", "expert3", "chair", "controller", "controller2",
         "admin"]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def run(env: dict[str, str], *args: str | Path) -> CliResult:
    proc = subprocess.run([CTL, *map(str, args)], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
@tier("service")
def gateway(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-gateway")
    served = root / "datasets"
    served.mkdir()
    os.symlink(dataset, served / "emr-visits")
    process = GatewayProcess(served, root / "gateway", f"sqlite:///{root / 'gw.db'}").start()
    smtp, inbox = start_smtp()
    yield process, inbox
    smtp.stop()
    process.stop()


def environment(root: Path, gateway) -> dict[str, str]:
    """The environment `make run` gives the seed, without demo mode (each test adds it)."""
    process, inbox = gateway
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SANDBOX_PORTAL_", "SANDBOX_DEMO"))}
    return env | portal_env(root, process.datasets_dir, process, inbox.port,
                            "http://127.0.0.1:8600")


def table(stdout: str) -> dict[str, dict[str, str]]:
    """The accounts table the seed prints, as a reader would take it."""
    lines = stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("role ")))
    rows = {}
    for line in lines[header + 1:header + 1 + len(ROLES)]:
        role, email, password, secret = line.split()
        rows[role] = {"email": email, "password": password, "totp_secret": secret}
    return rows


def state(root: Path) -> tuple:
    """Everything a seed could change in the portal database."""
    engine = create_engine(f"sqlite:///{root / 'portal.db'}")
    with engine.connect() as conn:
        head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
        users = conn.execute(select(User.email, User.password_hash, User.totp_secret,
                                    User.totp_enabled).order_by(User.id)).all()
        apps = conn.execute(select(Application.id, Application.state)).all()
    engine.dispose()
    return tuple(head), users, apps


@pytest.fixture(scope="module")
def seeded(gateway, tmp_path_factory):
    """The demo seeded once, as `make run` does: (root, env, the CLI's result)."""
    root = tmp_path_factory.mktemp("demo")
    env = environment(root, gateway) | {"SANDBOX_DEMO": "1"}
    result = run(env, "demo", "seed", "--var", root / "var")
    assert result.code == 0, result.stderr
    return root, env, result


def test_refused_outside_demo_mode(gateway, tmp_path):
    env = environment(tmp_path, gateway)
    for extra in ({}, {"SANDBOX_DEMO": "0"}):
        result = run(env | extra, "demo", "seed", "--var", tmp_path / "var")
        assert result.code == 4, result
        assert "only in demo mode" in result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written"


def test_refused_beside_someone_elses_account(gateway, tmp_path):
    env = environment(tmp_path, gateway)
    made = run(env, "portal", "create-user", "--email", "zhao.min@lingnan.edu.cn", "--name",
               "赵敏", "--role", "chair", "--password", "Deployed-42-chair")
    assert made.code == 0, made.stderr
    before = state(tmp_path)
    for demo in (["--demo"], []):
        extra = {} if demo else {"SANDBOX_DEMO": "1"}
        result = run(env | extra, "demo", "seed", *demo, "--var", tmp_path / "var")
        assert result.code == 4, result
        assert "1 account(s) that are not the demo's" in result.stderr
    assert state(tmp_path) == before, "no account, application or audit entry added"
    assert not (tmp_path / "var").exists(), "no accounts file written"


def test_seed_makes_every_role_with_totp_enrolled(seeded):
    root, _env, result = seeded
    printed = table(result.stdout)
    assert list(printed) == ROLES
    path = root / "var" / "demo" / "accounts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = {a["key"]: a for a in json.loads(path.read_text())["accounts"]}
    engine = create_engine(f"sqlite:///{root / 'portal.db'}")
    with engine.connect() as conn:
        users = {u.email: u for u in conn.execute(select(User)).all()}
    assert len(users) == len(ROLES)
    for role, row in printed.items():
        assert kept[role] | row == kept[role], "the file holds what was printed"
        user = users[row["email"]]
        assert user.role == role.rstrip("123")
        assert check_password(user.password_hash, row["password"])
        assert len(row["password"]) >= 16
        assert user.totp_enabled and user.totp_secret == row["totp_secret"]
    assert len({r["password"] for r in printed.values()}) == len(ROLES)
    assert "sandboxctl demo totp researcher" in result.stdout
    assert printed["researcher"]["password"] in result.stdout.split("first ten minutes")[1]


def test_the_project_went_through_the_whole_workflow(seeded, gateway):
    root, env, _result = seeded
    engine = create_engine(f"sqlite:///{root / 'portal.db'}")
    with engine.connect() as conn:
        (project, state_), = conn.execute(select(Application.id, Application.state)).all()
        grant = conn.execute(select(Agreement.grant_id)).scalar_one()
        entries = conn.execute(select(audit_log.c.action, audit_log.c.subject)
                               .order_by(audit_log.c.seq)).all()
    assert state_ == "active"
    on_project = [a for a, s in entries if s == f"application:{project}"]
    assert on_project == ["application.created", "application.submitted",
                          "application.assigned", *["application.scored"] * 3,
                          "application.decided", "agreement.signed", "demo.seeded"]
    assert [a for a, _ in entries].count("user.registered") == len(ROLES)
    # the grant exists on the gateway, with the decided terms
    process, _inbox = gateway
    response = process.admin("GET", f"/v1/admin/grants/{grant}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["epsilon_total"], body["datasets"]) == \
        ("active", 3.0, ["emr-visits"])
    assert body["project"] == f"application-{project}"
    verify = run(env, "audit", "verify", "--database-url", f"sqlite:///{root / 'portal.db'}")
    assert verify.code == 0, verify.stderr


def test_seeding_again_prints_the_same_and_changes_nothing(seeded):
    root, env, first = seeded
    path = root / "var" / "demo" / "accounts.json"
    before, kept = state(root), path.read_bytes()
    again = run(env, "demo", "seed", "--var", root / "var")
    assert again.code == 0, again.stderr
    assert again.stdout == first.stdout
    assert state(root) == before
    assert path.read_bytes() == kept


def test_accounts_made_after_the_seed_do_not_stop_it(gateway, tmp_path):
    """Someone registers to try the demo; the next `make run` still prints the accounts
    and changes nothing."""
    env = environment(tmp_path, gateway) | {"SANDBOX_DEMO": "1"}
    first = run(env, "demo", "seed", "--var", tmp_path / "var")
    assert first.code == 0, first.stderr
    made = run(env, "portal", "create-user", "--email", "sun.li@lingnan.edu.cn", "--name",
               "孙立", "--role", "researcher", "--password", "Trying-the-demo-7")
    assert made.code == 0, made.stderr
    before = state(tmp_path)
    again = run(env, "demo", "seed", "--var", tmp_path / "var")
    assert (again.code, again.stdout) == (0, first.stdout), again.stderr
    assert state(tmp_path) == before


def test_the_printed_credentials_sign_in(seeded):
    """Staff roles are asked for a code, never shown a QR code to enrol; the code from
    the printed secret lets them in."""
    _root, env, result = seeded
    settings = PortalSettings(**{k.removeprefix("SANDBOX_PORTAL_").lower(): v
                                 for k, v in env.items() if k.startswith("SANDBOX_PORTAL_")})
    app = create_app(settings)
    for role, row in table(result.stdout).items():
        client = app.test_client()
        token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
        response = client.post("/login", data={"email": row["email"], "csrf_token": token,
                                               "password": row["password"]})
        assert response.status_code == 302, (role, response.status_code)
        if role != "researcher":
            assert response.location.endswith("/mfa"), role
        if response.location.endswith("/mfa"):
            page = client.get("/mfa").get_data(as_text=True)
            assert 'id="totp-secret"' not in page and "<img" not in page, "no enrolment"
            code = pyotp.TOTP(row["totp_secret"]).now()
            token = CSRF.search(page).group(1)
            response = client.post("/mfa", data={"code": code, "csrf_token": token})
            assert response.status_code == 302, (role, response.status_code)
            assert not response.location.endswith(("/mfa", "/login"))
        assert client.get("/profile").status_code == 200, role


def test_totp_prints_the_current_code(seeded):
    root, env, result = seeded
    secret = table(result.stdout)["researcher"]["totp_secret"]
    by_option = run(env, "demo", "totp", "researcher", "--var", root / "var")
    assert by_option.code == 0, by_option.stderr
    assert re.fullmatch(r"\d{6}\n", by_option.stdout)
    assert pyotp.TOTP(secret).verify(by_option.stdout.strip(), valid_window=1)
    by_env = run(env | {"SANDBOX_DEMO_VAR": str(root / "var")}, "demo", "totp", "chair")
    chair = table(result.stdout)["chair"]["totp_secret"]
    assert by_env.code == 0 and pyotp.TOTP(chair).verify(by_env.stdout.strip(),
                                                         valid_window=1)


def test_totp_refuses_an_unknown_role_and_a_missing_file(seeded, tmp_path):
    root, env, _result = seeded
    unknown = run(env, "demo", "totp", "dean", "--var", root / "var")
    assert unknown.code == 2
    assert unknown.stderr.startswith("error: no demo account 'dean'")
    assert ", ".join(ROLES) in unknown.stderr
    assert unknown.stdout == ""
    missing = run(env, "demo", "totp", "researcher", "--var", tmp_path)
    assert missing.code == 2
    assert "no demo accounts at" in missing.stderr and "Traceback" not in missing.stderr
