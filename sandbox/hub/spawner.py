"""The sealed sandbox: a DockerSpawner that runs one hardened container per (researcher,
project) named server.

Before anything starts, the portal is asked whether this user may work on this project now
(an active project whose applicant they are); it answers with the project's gateway token,
which reaches the container as an environment variable and nowhere else. The container
gets its own internal network, a read-only root, a tmpfs ``/tmp``, a per-project workspace
volume, no capabilities, no new privileges, and pids/memory/CPU limits. At term end the
hub deletes the named server; ``delete_forever`` then removes container, volume and
network and reports each step to the portal as the destruction record.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Unicode

from sandbox.hub import network
from sandbox.hub.names import project_of, volume_name

HOME = "/home/researcher"


class PortalRefused(web.HTTPError):
    """The portal would not hand out the project's grant; the hub API answers 403 with the
    portal's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(403, reason.replace("%", "%%"))
        self.jupyterhub_message = reason


class SandboxSpawner(DockerSpawner):
    portal_url = Unicode(config=True, help="portal URL for the grant lookup")
    portal_token = Unicode(config=True, help="service token presented to the portal")
    gateway_port = Unicode("8700", config=True, help="gateway port on the host")
    api_port = Unicode("8081", config=True, help="hub API port on the host")
    instance = Unicode("sandbox", config=True, help="prefix of this hub's Docker objects")
    tmp_size = Unicode("512m", config=True)
    pids_limit = Unicode("256", config=True)

    _grant: dict[str, Any] | None = None
    last_container_id = ""  # kept after the container is removed, for the destruction record

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.last_container_id = state.get("last_container_id", self.last_container_id)

    def get_state(self) -> dict:
        state = super().get_state()
        if self.last_container_id:
            state["last_container_id"] = self.last_container_id
        return state

    def clear_state(self) -> None:
        keep = self.last_container_id
        super().clear_state()
        self.last_container_id = keep

    # -- which project --------------------------------------------------------------
    @property
    def project_id(self) -> int:
        wanted = project_of(self.name)
        if wanted is None:
            raise PortalRefused("a sandbox is a named server p<project id>")
        asked = self.user_options.get("project")
        if asked is not None and str(asked) != str(wanted):
            raise PortalRefused("user_options name another project than the server")
        return wanted

    async def _portal(self, path: str, payload: dict) -> dict:
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                response = await client.post(
                    f"{self.portal_url.rstrip('/')}/api/v1/hub/{path}", json=payload,
                    headers={"Authorization": f"Bearer {self.portal_token}"})
        except httpx.HTTPError as exc:
            raise web.HTTPError(503, "the portal could not be reached to check the "
                                     "project; try again shortly") from exc
        body = response.json() if response.headers.get("content-type", "").startswith(
            "application/json") else {}
        if response.status_code != 200:
            raise PortalRefused(body.get("reason") or f"portal answered {response.status_code}")
        return body

    # -- start ----------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        project = self.project_id
        net_name, bridge = network.names(self.instance, self.user.name, self.name)
        labels = network.labels(self.instance, self.user.name, self.name)
        try:
            attrs = await self.docker("inspect_network", net_name)
        except NotFound:
            await self.docker("create_network", **network.create_kwargs(
                self.instance, self.user.name, self.name))
            attrs = await self.docker("inspect_network", net_name)
        # The hub API and the gateway listen on loopback; the firewall forwards this
        # bridge's connections to them there.
        network.open_loopback(bridge)
        host = network.gateway_address(attrs)
        # The portal checks the project, binds its token to this network, and answers.
        grant = await self._portal("grant", {"user": self.user.name, "project": project,
                                             "network": network.subnet(attrs)})
        self.network_name = net_name
        self.use_internal_ip = True
        self.hub_connect_url = f"http://{host}:{self.api_port}"
        self._grant = {**grant, "gateway_url": f"http://{host}:{self.gateway_port}"}
        volume = volume_name(self.instance, self.user.name, self.name)
        await self.docker("create_volume", name=volume, labels=labels)
        self.volumes = {volume: HOME}
        address = await super().start()
        self.last_container_id = self.object_id
        await self._drop_default_route()
        return address

    async def _drop_default_route(self) -> None:
        """Docker gives even an internal network a default route via the host; remove it
        from the sandbox's namespace, so nothing beyond its own subnet is routable. A
        sandbox that keeps one is stopped (fail closed)."""
        pid = (await self.docker("inspect_container", self.object_id))["State"]["Pid"]
        done = await asyncio.create_subprocess_exec(
            "nsenter", f"--net=/proc/{pid}/ns/net", "ip", "route", "del", "default",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await done.communicate()
        if done.returncode != 0 and b"No such process" not in err:
            await self.stop(now=True)
            raise RuntimeError(f"could not remove the sandbox's default route: {err!r}")

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.pop("JUPYTER_IMAGE_SPEC", None)
        grant = self._grant or {}
        env.update({
            "SANDBOX_GATEWAY_URL": grant.get("gateway_url", ""),
            "SANDBOX_GATEWAY_TOKEN": grant.get("token", ""),
            "SANDBOX_PROJECT": str(grant.get("project", "")),
            "SANDBOX_DATASETS": ",".join(grant.get("datasets", [])),
            "HOME": HOME,
        })
        return env

    async def create_object(self) -> dict:
        self.extra_host_config = {
            "read_only": True,
            "tmpfs": {"/tmp": f"size={self.tmp_size},mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": int(self.pids_limit),
            "sysctls": {"net.ipv6.conf.all.disable_ipv6": "1"},
            "init": True,
        }
        self.extra_create_kwargs = {
            "user": "1000:1000",
            "labels": network.labels(self.instance, self.user.name, self.name),
        }
        return await super().create_object()

    # -- term end -------------------------------------------------------------------
    async def delete_forever(self) -> None:
        """Remove the container, the workspace volume and the network; report each step."""
        steps: list[dict[str, Any]] = []
        started = _now()
        container = self.object_id or self.last_container_id or self.container_name
        volume = volume_name(self.instance, self.user.name, self.name)
        net_name, _ = network.names(self.instance, self.user.name, self.name)
        steps.append(await self._step("container", container, "remove_container",
                                      container, force=True, v=False))
        steps.append(await self._step("volume", volume, "remove_volume", volume, force=True))
        steps.append(await self._step("network", net_name, "remove_network", net_name))
        record = {"user": self.user.name, "project": project_of(self.name),
                  "started_at": started, "finished_at": _now(), "steps": steps}
        try:
            await self._portal("destruction", record)
        except (PortalRefused, httpx.HTTPError) as exc:
            self.log.error("destruction record for %s/%s not stored: %s",
                           self.user.name, self.name, exc)

    async def _step(self, kind: str, target: str, method: str, *args: Any,
                    **kwargs: Any) -> dict[str, Any]:
        step: dict[str, Any] = {"kind": kind, "target": target, "id": target, "at": _now()}
        try:
            if kind == "volume":
                step["id"] = (await self.docker("inspect_volume", target)).get("Name", target)
            elif kind == "container":
                step["id"] = (await self.docker("inspect_container", target))["Id"]
            await self.docker(method, *args, **kwargs)
            step["outcome"] = "removed"
        except NotFound:
            step["outcome"] = "absent"
        except APIError as exc:
            step["outcome"] = "failed"
            step["error"] = str(exc.explanation or exc)
        return step


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
