"""Approval in the portal → a ready sandbox, over the real hub API; the container is
hardened as promised; term end destroys container, workspace and network and leaves a
destruction record on the portal and in the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker.errors
import pytest
from sqlalchemy import select

from approvals.states import Action, Role
from portal import projects, sandboxes, workflow
from portal.models import Agreement, Application, DestructionRecord, Sandbox
from sandbox import audit
from sandbox.errors import Forbidden
from sandbox.hub import network
from sandbox.hub.names import server_name, volume_name


def test_approval_starts_a_hardened_sandbox(stack):
    project, researcher = stack.approved_project()
    hub = stack.hub()
    status = hub.wait_ready(f"user-{researcher.id}", server_name(project))
    assert status.ready, status
    container = stack.container(project, researcher)
    config = container.attrs["HostConfig"]
    assert config["ReadonlyRootfs"] is True
    assert config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in config["SecurityOpt"]
    assert config["PidsLimit"] == 128
    assert config["Memory"] == 1024 ** 3
    assert config["CpuQuota"] == 100_000
    assert "/tmp" in config["Tmpfs"]
    assert not config.get("Binds") or all(":/home/researcher" in b for b in config["Binds"])
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert set(mounts) == {"/home/researcher"}
    user, server = f"user-{researcher.id}", server_name(project)
    assert mounts["/home/researcher"]["Name"] == volume_name(stack.instance, user, server)
    nets = container.attrs["NetworkSettings"]["Networks"]
    assert list(nets) == [network.names(stack.instance, user, server)[0]]
    assert stack.docker.networks.get(next(iter(nets))).attrs["Internal"] is True
    env = dict(line.split("=", 1) for line in container.attrs["Config"]["Env"])
    with stack.app.extensions["portal.sessions"]() as db:
        expected = workflow.grant_token(stack.settings, db.get(Agreement, project))
    assert env["SANDBOX_GATEWAY_TOKEN"] == expected
    assert env["SANDBOX_GATEWAY_URL"].endswith(f":{stack.gateway.port}")
    hub_token = (stack.settings.secrets_dir / "hub-api.token").read_text()
    assert hub_token not in " ".join(container.attrs["Config"]["Env"])
    assert container.attrs["Config"]["User"] == "1000:1000"

    # the researcher's project page shows it ready, with the link to open it
    with stack.app.extensions["portal.sessions"]() as db:
        view = sandboxes.view(db, stack.settings, db.get(Application, project))
    assert view.status == "ready" and view.url.startswith(stack.hub_url)


def test_the_hub_cannot_start_a_project_the_researcher_does_not_hold(stack):
    project, _ = stack.approved_project()
    other = stack.person("researcher", "岭南大学")
    hub = stack.hub()
    hub.ensure_user(f"user-{other.id}")
    # the other researcher (or a hub admin) asks the hub to start this project's sandbox
    with pytest.raises(Forbidden, match="another researcher's project"):
        hub.start(f"user-{other.id}", server_name(project), {"project": project})
    status = hub.wait_ready(f"user-{other.id}", server_name(project), timeout=30)
    assert not status.ready
    engine_entries = _audit_actions(stack)
    assert "sandbox.refused" in engine_entries


def test_term_end_destroys_container_volume_and_network(stack):
    project, researcher = stack.approved_project()
    user, server = f"user-{researcher.id}", server_name(project)
    assert stack.hub().wait_ready(user, server).ready
    container_id = stack.container(project, researcher).id
    with stack.app.extensions["portal.sessions"]() as db:
        agreement = db.get(Agreement, project)
        agreement.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        db.commit()
        ended = projects.end_terms(db, stack.settings)
        assert project in ended
        assert db.get(Application, project).state == "closing"
        assert db.get(Sandbox, project).status == "destroyed"
        records = db.scalars(select(DestructionRecord).where(
            DestructionRecord.application_id == project)).all()
    assert len(records) == 1 and records[0].complete
    steps = {s["kind"]: s for s in records[0].steps}
    assert steps["container"]["id"] == container_id
    assert steps["container"]["outcome"] in ("removed", "absent")  # removed when stopped
    assert steps["volume"]["outcome"] == "removed"
    assert steps["network"]["outcome"] == "removed"
    with pytest.raises(docker.errors.NotFound):
        stack.docker.containers.get(container_id)
    with pytest.raises(docker.errors.NotFound):
        stack.docker.volumes.get(volume_name(stack.instance, user, server))
    assert "sandbox.destroyed" in _audit_actions(stack)
    # and it cannot be started again
    with stack.app.extensions["portal.sessions"]() as db, \
            pytest.raises(Forbidden, match="only an active project"):
        sandboxes.provision(db, stack.settings, db.get(Application, project), "test")


def test_suspension_stops_the_sandbox_and_resumption_lets_it_start_again(stack):
    project, researcher = stack.approved_project()
    user, server = f"user-{researcher.id}", server_name(project)
    hub = stack.hub()
    assert hub.wait_ready(user, server).ready
    box = stack.container(project, researcher)
    probe = ["python3", "-c", "from sandbox.client import Gateway, GatewayError\n"
             "try:\n    print(Gateway.from_env().budget()['epsilon']['remaining'])\n"
             "except GatewayError as e:\n    print('refused', e.status)"]
    assert box.exec_run(probe, user="1000:1000").output.decode().strip() == "2.0"
    assert control(stack, project, Action.SUSPEND, "审计发现异常访问") == \
        ("suspended", "stopped")
    assert not hub.status(user, server).ready
    volume = stack.docker.volumes.get(volume_name(stack.instance, user, server))
    assert volume is not None  # the workspace survives a suspension
    with pytest.raises(Forbidden, match="suspended, not active"):
        hub.start(user, server, {"project": project})  # the hub asks the portal: refused
    assert not hub.wait_ready(user, server, timeout=30).ready
    control(stack, project, Action.RESUME, "核查完毕")
    with stack.app.extensions["portal.sessions"]() as db:
        sandboxes.provision(db, stack.settings, db.get(Application, project), "test")
    assert hub.wait_ready(user, server).ready
    box = stack.container(project, researcher)
    assert box.exec_run(probe, user="1000:1000").output.decode().strip() == "2.0"
    assert control(stack, project, Action.REVOKE, "违反数据使用协议") == \
        ("closing", "destroyed")
    with pytest.raises(docker.errors.NotFound):
        stack.docker.volumes.get(volume_name(stack.instance, user, server))
    actions = _audit_actions(stack)
    assert {"project.suspended", "project.resumed", "project.revoked"} <= set(actions)


def control(stack, project: int, action: Action, reason: str) -> tuple[str, str]:
    """A controller's suspend/resume/revoke; returns (project state, sandbox status)."""
    with stack.app.extensions["portal.sessions"]() as db:
        projects.control(db, stack.settings, db.get(Application, project), action,
                         Role.CONTROLLER, "test:controller", reason)
        return db.get(Application, project).state, db.get(Sandbox, project).status


def test_the_idle_culler_runs_beside_the_hub(stack):
    culler = [_read(p).split(b"\0") for p in Path("/proc").glob("*/cmdline")
              if b"jupyterhub_idle_culler" in _read(p)]
    assert culler, "the hub started no idle culler"
    assert any(arg.startswith(b"--timeout=") for arg in culler[0])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _audit_actions(stack) -> list[str]:
    engine = stack.app.extensions["portal.engine"]
    with engine.connect() as conn:
        return list(conn.execute(select(audit.audit_log.c.action)).scalars())
