"""Hub configuration: one typed object, from environment (SANDBOX_HUB_*) or arguments.

The hub shares three secrets with the portal, each a file in ``secrets_dir`` created on
first use (owner-only): the OAuth client secret of the hub at the portal, the hub API token
the portal provisions with, and the service token the spawner asks the portal with.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.secretfile import read_or_create

OAUTH_CLIENT_ID = "sandbox-hub"
PORTAL_SERVICE = "portal"


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_HUB_", extra="ignore")

    state_dir: Path = Field(Path("var/hub"), description="hub database, cookie secret")
    secrets_dir: Path = Field(Path("var/secrets"),
                              description="secrets shared with the portal")
    docker_host: str = Field("unix://var/docker/docker.sock",
                             description="Docker engine that runs the sandboxes")
    instance: str = Field("sandbox", pattern=r"^[a-z][a-z0-9]{0,15}$",
                          description="prefix of this hub's containers, volumes, networks")
    image: str = Field("med-sandbox:latest", description="sandbox image")
    ip: str = Field("127.0.0.1", description="address of the public proxy")
    port: int = Field(8000, description="public port (researchers open sandboxes here)")
    api_port: int = Field(8081, description="hub API port on loopback, the only hub port "
                          "sandboxes reach (forwarded from their network's host address)")
    proxy_api_port: int = Field(8001, description="proxy API port (loopback)")
    public_url: str = Field("http://127.0.0.1:8000", description="hub URL browsers use")
    portal_url: str = Field("http://127.0.0.1:8600",
                            description="portal URL the hub reaches (OAuth, grant lookup)")
    portal_public_url: str = Field("", description="portal URL browsers use "
                                   "(defaults to portal_url)")
    gateway_port: int = Field(8700, description="gateway port on this host's loopback; "
                              "sandboxes reach it through their network's host address "
                              "(forwarded to loopback)")
    proxy_command: str = Field("", description="configurable-http-proxy executable "
                               "(defaults to var/node/node_modules/.bin/…)")
    mem_limit: str = Field("2G", description="memory limit per sandbox")
    cpu_limit: float = Field(1.0, description="CPUs per sandbox")
    pids_limit: int = Field(256, description="processes per sandbox (contains fork bombs)")
    tmp_size: str = Field("512m", description="size of the sandbox's /tmp")
    idle_timeout: int = Field(3600, description="seconds idle before a sandbox is stopped")
    firewall: bool = Field(True, description="forward the hub API and gateway ports from "
                           "sandbox networks to loopback and drop everything else from "
                           "them (needs root)")

    @field_validator("docker_host")
    @classmethod
    def _absolute_socket(cls, value: str) -> str:
        return docker_url(value)

    @property
    def oauth_client_secret(self) -> str:
        return shared_secret(self.secrets_dir, "hub-oauth-client.secret")

    @property
    def hub_api_token(self) -> str:
        """The token the portal uses on the hub's REST API (service ``portal``)."""
        return shared_secret(self.secrets_dir, "hub-api.token")

    @property
    def portal_service_token(self) -> str:
        """The token the spawner presents to the portal to look up a project's grant."""
        return shared_secret(self.secrets_dir, "portal-service.token")


def docker_url(value: str) -> str:
    """``unix://relative/path`` made absolute (Docker clients read it as a host name)."""
    prefix = "unix://"
    if value.startswith(prefix) and not value[len(prefix):].startswith("/"):
        return prefix + str(Path(value[len(prefix):]).resolve())
    return value


def shared_secret(secrets_dir: Path, name: str) -> str:
    """A secret shared by hub and portal, created on first use by whichever asks first."""
    return read_or_create(secrets_dir / name, lambda: secrets.token_hex(32).encode()).decode()
