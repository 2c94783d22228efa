"""The portal's client for the hub's REST API (JupyterHub 6), with the ``portal`` service
token: create a user, start, inspect, stop and delete one of their named servers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from sandbox.errors import Forbidden, Unavailable


@dataclass(frozen=True)
class ServerStatus:
    exists: bool
    ready: bool = False
    pending: str | None = None
    url: str = ""


class HubClient:
    def __init__(self, hub_url: str, token: str, timeout: float = 30) -> None:
        self.api = f"{hub_url.rstrip('/')}/hub/api"
        self.public = hub_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout,
                                  headers={"Authorization": f"token {token}"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, ok: tuple[int, ...], **kwargs: object
              ) -> httpx.Response:
        try:
            response = self._http.request(method, f"{self.api}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the sandbox hub could not be reached ({exc})") from None
        if response.status_code not in ok:
            try:
                reason = response.json().get("message", response.text)
            except ValueError:
                reason = response.text
            if response.status_code == 403:
                raise Forbidden(f"the sandbox hub refused: {reason}")
            raise Unavailable(f"the sandbox hub answered {response.status_code}: {reason}")
        return response

    def ensure_user(self, user: str) -> None:
        if self._call("GET", f"/users/{quote(user)}", (200, 404)).status_code == 404:
            self._call("POST", f"/users/{quote(user)}", (201, 409))

    def start(self, user: str, server: str, user_options: dict) -> None:
        """Ask for the named server; 201 started, 202 starting, 400 already running."""
        response = self._call("POST", f"/users/{quote(user)}/servers/{quote(server)}",
                              (201, 202, 400), json=user_options)
        if response.status_code == 400 and "already" not in response.text:
            raise Unavailable(f"the sandbox hub refused to start it: {response.text}")

    def status(self, user: str, server: str) -> ServerStatus:
        response = self._call("GET", f"/users/{quote(user)}", (200, 404),
                              params={"include_stopped_servers": "1"})
        if response.status_code == 404:
            return ServerStatus(False)
        model = response.json().get("servers", {}).get(server)
        if model is None:
            return ServerStatus(False)
        return ServerStatus(True, bool(model.get("ready")), model.get("pending"),
                            f"{self.public}{model.get('url', '')}")

    def _until(self, user: str, server: str, done, timeout: float) -> ServerStatus:
        """Poll the server's status until ``done(status)`` or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(user, server)
            if done(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.1)

    def wait_ready(self, user: str, server: str, timeout: float = 120) -> ServerStatus:
        """The status once the server is ready, or has failed and gone, or after timeout."""
        return self._until(user, server, lambda s: s.ready or not (s.pending or s.exists),
                           timeout)

    def stop(self, user: str, server: str, remove: bool = False,
             timeout: float = 120) -> None:
        """Stop the server (``remove``: and delete it, which destroys its workspace);
        returns once the hub no longer lists it as running or pending."""
        self._call("DELETE", f"/users/{quote(user)}/servers/{quote(server)}",
                   (202, 204, 404), json={"remove": remove})
        def stopped(status: ServerStatus) -> bool:
            return not status.pending and (not status.exists if remove else not status.ready)

        if stopped(self._until(user, server, stopped, timeout)):
            return
        raise Unavailable(f"the sandbox {user}/{server} did not stop within {timeout:.0f} s")
