"""The whole sandbox stack, for real (tests and bench/sandboxes.py): the project's Docker
engine, the sandbox image built offline, the gateway (on loopback, as deployed),
a real SMTP server, the portal served over HTTP, and JupyterHub with the hardened spawner
and its firewall.

Projects are approved through the portal's own workflow functions (quorum of one), in this
process and on the same database the served portal uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
import nbformat
import pyotp

from approvals.decisions import Decision
from approvals.eligibility import Applicant, EligibilityPolicy
from approvals.states import Role
from portal import create_app, credentials, workflow
from portal.config import PortalSettings
from portal.models import Application, Profile, User
from portal.security import hash_password
from sandbox.hub.client import HubClient
from sandbox.hub.names import server_name
from sandbox.hub.settings import shared_secret
from tests import committee
from tests.mail import start_smtp
from tests.services import ROOT, GatewayProcess, free_port
from tests.services import portal_env as portal_env_of
from tests.signin import Authenticators

CTL = str(Path(sys.executable).parent / "sandboxctl")
FIELDS = ["sex", "age_band", "visit_type", "total_cost"]


def _wait(url: str, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120,
          ready: tuple[int, ...] = (200, 302, 404)) -> None:
    """Until ``url`` answers one of ``ready`` (the hub's proxy answers 404 before the hub
    itself is up, so the hub is waited for with 200 only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            if httpx.get(url, timeout=2).status_code in ready:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not answer at {url}")


@dataclass
class Stack:
    docker: docker.DockerClient
    docker_host: str
    gateway: GatewayProcess
    portal_url: str
    hub_url: str
    settings: PortalSettings
    app: object
    inbox: object
    root: Path
    instance: str
    processes: list = field(default_factory=list)
    smtp: object = None
    # every account signs in with a TOTP code: the tests' authenticator for the people
    # made here (``keys.code(email)`` gives a code the portal has not seen yet)
    keys: Authenticators = field(default_factory=Authenticators)
    portal_env: dict[str, str] = field(default_factory=dict)
    demo: str = ""  # what `sandboxctl demo seed` printed

    def seed_demo(self) -> str:
        """Seed the demo accounts and project with the command `make run` uses, while the
        portal has no other account; its output (the accounts table) is kept."""
        seeded = subprocess.run([CTL, "demo", "seed", "--var", str(self.root / "var")],
                                env=os.environ | self.portal_env | {"SANDBOX_DEMO": "1"},
                                capture_output=True, text=True, cwd=ROOT, timeout=900)
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        self.demo = seeded.stdout
        return seeded.stdout

    def close(self) -> None:
        for process in self.processes:  # the hub first: it stops its sandboxes
            process.terminate()
            process.wait(120)
        self.smtp.stop()
        self.gateway.stop()
        mine = {"label": f"med-sandbox.instance={self.instance}"}
        for container in self.docker.containers.list(all=True, filters=mine):
            container.remove(force=True)
        for network in self.docker.networks.list(filters=mine):
            network.remove()
        for volume in self.docker.volumes.list(filters=mine):
            volume.remove(force=True)

    def hub(self) -> HubClient:
        return HubClient(self.hub_url, shared_secret(self.settings.secrets_dir,
                                                     "hub-api.token"))

    def person(self, role: str, institution: str) -> User:
        """An account at ``institution`` (a registry entry, added when missing) with an
        enrolled authenticator (its secret in ``keys``)."""
        secret = pyotp.random_base32()
        with self.app.extensions["portal.sessions"]() as db:
            user = User(email=f"{role}-{uuid.uuid4().hex[:8]}@lingnan.cn",
                        name=f"{role}-{uuid.uuid4().hex[:4]}", role=role,
                        password_hash=hash_password("Hub-test-42"), totp_secret=secret,
                        totp_enabled=True,
                        profile=Profile(title="主任医师", years_experience=12,
                                        credit_grade="A",
                                        institution=committee.entry(db, institution),
                                        research_field="流行病学"))
            db.add(user)
            db.commit()
            self.keys.add(user.email, secret)
            return user

    def approved_project(self, researcher: User | None = None, sign: bool = True,
                         fields: list[str] | None = None) -> tuple[int, User]:
        """An application taken through submit, review, approval and (if ``sign``) the
        DUA — which activates it and, through the portal, provisions its sandbox."""
        researcher = researcher or self.person("researcher", "岭南大学")
        chair = self.person("chair", "岭南卫健委")
        panel = [self.person("expert", f"医院{uuid.uuid4().hex[:4]}") for _ in range(3)]
        expert = panel[0]
        with self.app.extensions["portal.sessions"]() as db:
            def ctx(user: User) -> workflow.Context:
                return workflow.Context(db, db.get(User, user.id), self.settings, "127.0.0.1")

            application = workflow.create_draft(ctx(researcher), self._entry(), workflow.Draft(
                "emr-visits", "门诊费用研究", "", "medical_research", True, 2.0, 6, [],
                [(f, "研究需要") for f in fields or FIELDS]))
            workflow.submit(ctx(researcher), application,
                            Applicant(Role.RESEARCHER, "主任医师", 12, "流行病学", "A", False),
                            EligibilityPolicy(3, 5))
            workflow.assign(ctx(chair), application, [db.get(User, e.id) for e in panel])
            workflow.score(ctx(expert), application, {"legality": 5, "consistency": 5,
                                                      "value": 4, "leakage_risk": 2,
                                                      "cost": 3}, "", [])
            applicant = db.get(User, researcher.id)
            if not all(credentials.current(db, applicant).values()):
                # An approval rests on a title and credit grade an admin verified.
                committee.verify(db, applicant)
            workflow.decide(ctx(chair), application, Decision("approve", "同意", frozenset(),
                                                              2.0, 1e-6, 6))
            if sign:
                workflow.sign(ctx(researcher), db.get(Application, application.id))
            return application.id, researcher

    def _entry(self) -> dict:
        from portal import catalog
        return next(e for e in catalog.load(self.settings.datasets_dir)
                    if e["id"] == "emr-visits")

    def container(self, project: int, researcher: User):
        found = self.docker.containers.list(all=True, filters={"label": [
            f"med-sandbox.instance={self.instance}", f"med-sandbox.user=user-{researcher.id}",
            f"med-sandbox.server={server_name(project)}"]})
        assert len(found) == 1, found
        return found[0]


def start_docker() -> tuple[docker.DockerClient, str, bool]:
    """The project's Docker engine: (client, DOCKER_HOST, whether this call started it)."""
    out = subprocess.run([str(ROOT / "infra" / "scripts" / "docker.sh"), "start"],
                         env=os.environ | {"VAR": str(ROOT / "var")}, capture_output=True,
                         text=True, check=True, timeout=600)
    host, state = out.stdout.split()
    return docker.DockerClient(base_url=host, timeout=300), host, state == "started"


def stop_docker() -> None:
    subprocess.run([str(ROOT / "infra" / "scripts" / "docker.sh"), "stop"],
                   env=os.environ | {"VAR": str(ROOT / "var")}, check=False)


def start_stack(client: docker.DockerClient, host: str, dataset: Path, root: Path,
                **hub_overrides: str) -> Stack:
    """Build the image and start gateway, SMTP, portal and hub; ``Stack.close`` stops them
    and removes this stack's sandboxes."""
    served = root / "datasets"
    served.mkdir()
    os.symlink(dataset, served / "emr-visits")
    build = subprocess.run([CTL, "image", "build", "--docker-host", host, "--datasets-dir",
                            str(served), "--work-dir", str(ROOT / "var" / "image")],
                           capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert build.returncode == 0, build.stderr[-3000:]
    gateway = GatewayProcess(served, root / "gateway", f"sqlite:///{root / 'gw.db'}").start()
    smtp, inbox = start_smtp()
    portal_port, hub_port, api_port, proxy_port = (free_port() for _ in range(4))
    portal_url, hub_url = f"http://127.0.0.1:{portal_port}", f"http://127.0.0.1:{hub_port}"
    secrets = root / "secrets"
    portal_env = portal_env_of(root, served, gateway, inbox.port, portal_url) | {
        "SANDBOX_PORTAL_HUB_URL": hub_url,
        "SANDBOX_PORTAL_SECRETS_DIR": str(secrets),
        "SANDBOX_PORTAL_QUORUM": "1",
    }
    instance = f"t{uuid.uuid4().hex[:8]}"
    hub_env = {
        "SANDBOX_HUB_INSTANCE": instance,
        "SANDBOX_HUB_STATE_DIR": str(root / "hub"),
        "SANDBOX_HUB_SECRETS_DIR": str(secrets),
        "SANDBOX_HUB_DOCKER_HOST": host,
        "SANDBOX_HUB_PORT": str(hub_port),
        "SANDBOX_HUB_API_PORT": str(api_port),
        "SANDBOX_HUB_PROXY_API_PORT": str(proxy_port),
        "SANDBOX_HUB_PUBLIC_URL": hub_url,
        "SANDBOX_HUB_PORTAL_URL": portal_url,
        "SANDBOX_HUB_GATEWAY_PORT": str(gateway.port),
        "SANDBOX_HUB_PROXY_COMMAND": str(ROOT / "var" / "node" / "node_modules" / ".bin"
                                         / "configurable-http-proxy"),
        "SANDBOX_HUB_MEM_LIMIT": "1G",
        "SANDBOX_HUB_PIDS_LIMIT": "128",
    } | hub_overrides
    subprocess.run([str(ROOT / "infra" / "scripts" / "ensure-proxy.sh")], check=True,
                   env=os.environ | {"VAR": str(ROOT / "var")}, cwd=ROOT)
    portal_log, hub_log = root / "portal.log", root / "hub.log"
    with portal_log.open("ab") as out:
        portal = subprocess.Popen([CTL, "portal", "serve", "--port", str(portal_port)],
                                  env=os.environ | portal_env, cwd=ROOT, stdout=out,
                                  stderr=out)
    _wait(portal_url, "portal", portal, portal_log)
    with hub_log.open("ab") as out:
        hub = subprocess.Popen([CTL, "hub", "serve"], env=os.environ | hub_env, cwd=ROOT,
                               stdout=out, stderr=out)
    _wait(f"{hub_url}/hub/api/", "hub", hub, hub_log, ready=(200,))
    settings = PortalSettings(**{k.removeprefix("SANDBOX_PORTAL_").lower(): v
                                 for k, v in portal_env.items()})
    stack = Stack(client, host, gateway, portal_url, hub_url, settings, create_app(settings),
                  inbox, root, instance)
    stack.processes = [hub, portal]
    stack.smtp = smtp
    stack.portal_env = portal_env
    return stack


WORK = "/home/researcher/work"
EXECUTE = """
import sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, kernel_name="python3", timeout=600).execute()
nbformat.write(nb, sys.argv[1].replace(".ipynb", ".executed.ipynb"))
"""


def run_notebook(box, name: str) -> tuple[str, list[dict]]:
    """Execute the workspace's notebook ``name`` inside the sandbox ``box`` — shipped
    identical to the repository's — with the sandbox's own kernel: what it printed, and
    the receipts it listed on its ``RECEIPTS`` line."""
    code, shipped = box.exec_run(["cat", f"{WORK}/{name}"], user="1000:1000")
    assert code == 0
    assert json.loads(shipped) == json.loads((ROOT / "notebooks" / name).read_text())
    code, out = box.exec_run(["python3", "-c", EXECUTE, name], user="1000:1000",
                             workdir=WORK)
    assert code == 0, out.decode(errors="replace")[-3000:]
    _, text = box.exec_run(["cat", name.replace(".ipynb", ".executed.ipynb")],
                           user="1000:1000", workdir=WORK)
    notebook = nbformat.reads(text.decode(), as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    line = next(s for s in printed.splitlines() if s.startswith("RECEIPTS "))
    return printed, json.loads(line.removeprefix("RECEIPTS "))
