"""Approval in the portal → a ready sandbox, over the real hub API; the container is
hardened as promised; term end destroys container, workspace and network and leaves a
destruction record on the portal and in the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import docker.errors
import httpx
import pytest
from sqlalchemy import select

from portal import sandboxes
from portal.models import Agreement, Application, DestructionRecord, Sandbox
from sandbox import audit
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
    assert mounts["/home/researcher"]["Name"] == volume_name(stack.instance, f"user-{researcher.id}",
                                                           server_name(project))
    nets = container.attrs["NetworkSettings"]["Networks"]
    assert list(nets) == [network.names(stack.instance, f"user-{researcher.id}",
                                        server_name(project))[0]]
    assert stack.docker.networks.get(list(nets)[0]).attrs["Internal"] is True
    env = dict(line.split("=", 1) for line in container.attrs["Config"]["Env"])
    assert env["SANDBOX_GATEWAY_TOKEN"].startswith("sgw_") or env["SANDBOX_GATEWAY_TOKEN"]
    assert env["SANDBOX_GATEWAY_URL"].endswith(f":{stack.gateway.port}")
    hub_token = (stack.settings.secrets_dir / "hub-api.token").read_text()
    assert hub_token not in " ".join(container.attrs["Config"]["Env"])
    assert container.attrs["Config"]["User"] == "1000:1000"

    # the researcher's project page shows it ready, with the link to open it
    with stack.app.extensions["portal.sessions"]() as db:
        view = sandboxes.view(db, stack.settings, db.get(Application, project))
    assert view.status == "ready" and view.url.startswith(stack.hub_url)


def test_the_hub_cannot_start_a_project_the_researcher_does_not_hold(stack):
    project, researcher = stack.approved_project()
    other = stack.person("researcher", "岭南大学")
    hub = stack.hub()
    hub.ensure_user(f"user-{other.id}")
    response = httpx.post(f"{stack.hub_url}/hub/api/users/user-{other.id}/servers/"
                          f"{server_name(project)}", json={"project": project},
                          headers={"Authorization": f"token {hub._http.headers['Authorization'][6:]}"})
    assert response.status_code in (201, 202, 500)
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
        ended = sandboxes.end_terms(db, stack.settings)
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
    with stack.app.extensions["portal.sessions"]() as db:
        with pytest.raises(Exception, match="active|destroyed"):
            sandboxes.provision(db, stack.settings, db.get(Application, project), "test")


def _audit_actions(stack) -> list[str]:
    engine = stack.app.extensions["portal.engine"]
    with engine.connect() as conn:
        return list(conn.execute(select(audit.audit_log.c.action)).scalars())
