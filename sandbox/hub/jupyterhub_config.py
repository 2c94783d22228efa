"""JupyterHub configuration of the sandbox hub, read from SANDBOX_HUB_* (see settings.py).

Started by ``sandboxctl hub serve``. Users sign in at the portal (OAuth2); the portal is a
service with just the scopes it needs to create users, start/stop their named servers and
read the workspace files a researcher asks to export; the idle culler stops sandboxes nobody uses.
"""

# ruff: noqa: F821  (``get_config`` is provided by JupyterHub when it loads this file)
from __future__ import annotations

import sys
from pathlib import Path

from oauthenticator.generic import GenericOAuthenticator

from sandbox.hub.settings import OAUTH_CLIENT_ID, PORTAL_SERVICE, HubSettings
from sandbox.hub.spawner import SandboxSpawner

settings = HubSettings()
state = settings.state_dir.resolve()
state.mkdir(parents=True, exist_ok=True)
portal = settings.portal_url.rstrip("/")
portal_public = (settings.portal_public_url or settings.portal_url).rstrip("/")
proxy = settings.proxy_command or str(
    Path("var/node/node_modules/.bin/configurable-http-proxy").resolve())

c = get_config()
c.JupyterHub.ip = settings.ip
c.JupyterHub.port = settings.port
# The hub API listens on loopback only: nothing off this host reaches it. Sandboxes reach
# it through their network's host address, which the hub's firewall forwards to loopback
# for sandbox bridges alone (sandbox/hub/network.py, docs/adr/0009).
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings.api_port}"
c.JupyterHub.hub_connect_url = f"http://127.0.0.1:{settings.api_port}"
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.ConfigurableHTTPProxy.command = [proxy]
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
c.JupyterHub.cleanup_servers = True

c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.spawner_class = SandboxSpawner
c.SandboxSpawner.image = settings.image
c.SandboxSpawner.remove = True
c.SandboxSpawner.mem_limit = settings.mem_limit
c.SandboxSpawner.cpu_limit = settings.cpu_limit
c.SandboxSpawner.pids_limit = str(settings.pids_limit)
c.SandboxSpawner.tmp_size = settings.tmp_size
c.SandboxSpawner.portal_url = portal
c.SandboxSpawner.portal_token = settings.portal_service_token
c.SandboxSpawner.gateway_port = str(settings.gateway_port)
c.SandboxSpawner.api_port = str(settings.api_port)
c.SandboxSpawner.instance = settings.instance
c.SandboxSpawner.name_template = f"{settings.instance}-{{username}}-{{servername}}"
c.SandboxSpawner.notebook_dir = "/home/researcher/work"
c.SandboxSpawner.default_url = "/lab"
c.SandboxSpawner.start_timeout = 120
c.SandboxSpawner.http_timeout = 60
c.DockerSpawner.client_kwargs = {"base_url": settings.docker_host}

c.JupyterHub.authenticator_class = GenericOAuthenticator
c.GenericOAuthenticator.client_id = OAUTH_CLIENT_ID
c.GenericOAuthenticator.client_secret = settings.oauth_client_secret
c.GenericOAuthenticator.oauth_callback_url = \
    f"{settings.public_url.rstrip('/')}/hub/oauth_callback"
c.GenericOAuthenticator.authorize_url = f"{portal_public}/oauth/authorize"
c.GenericOAuthenticator.token_url = f"{portal}/oauth/token"
c.GenericOAuthenticator.userdata_url = f"{portal}/oauth/userinfo"
c.GenericOAuthenticator.scope = ["profile"]
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.login_service = "the data portal / 数据门户"
c.GenericOAuthenticator.allow_all = True  # who may start what is decided by the portal
c.GenericOAuthenticator.auto_login = True  # straight to the portal, no hub login page

c.JupyterHub.services = [
    {"name": PORTAL_SERVICE, "api_token": settings.hub_api_token},
    {"name": "idle-culler",
     "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                 f"--timeout={settings.idle_timeout}", "--cull-every=60"]},
]
c.JupyterHub.load_roles = [
    {"name": "portal-provisioner", "services": [PORTAL_SERVICE],
     "scopes": ["admin:users", "admin:servers", "read:users", "access:servers"]},
    {"name": "idle-culler", "services": ["idle-culler"],
     "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]},
]
