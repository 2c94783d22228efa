"""The portal's client for the hub's REST API (JupyterHub 6), with the ``portal`` service
token: create a user, start, inspect, stop and delete one of their named servers, and
read files in a running server's workspace (through the hub's proxy and the server's
contents API) when its researcher asks to export them."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from sandbox.errors import Forbidden, NotFound, Unavailable


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

    # -- the workspace of a running server ------------------------------------------------
    def _contents(self, user: str, server: str, path: str, **params: str) -> dict:
        url = (f"{self.public}/user/{quote(user)}/{quote(server)}/api/contents/"
               f"{quote(path.strip('/'))}")
        try:
            response = self._http.get(url, params={"content": "1", **params})
        except httpx.HTTPError as exc:
            raise Unavailable(f"the sandbox could not be reached ({exc})") from None
        if response.status_code == 404:
            raise NotFound(f"no file {path!r} in the sandbox's workspace")
        if response.status_code != 200 or not response.headers.get(
                "content-type", "").startswith("application/json"):
            raise Unavailable(f"the sandbox's workspace could not be read (HTTP "
                              f"{response.status_code}); start the sandbox and try again",
                              zh=f"无法读取沙箱工作区（HTTP {response.status_code}），"
                                 "请先启动沙箱再试")
        return response.json()

    def files(self, user: str, server: str, limit: int = 500, depth: int = 4
              ) -> Iterator[dict]:
        """The workspace's visible files (``path``, ``size``, ``last_modified``), folders
        walked breadth first, at most ``limit`` files and ``depth`` levels."""
        folders, found = [("", 0)], 0
        while folders:
            folder, level = folders.pop(0)
            for item in sorted(self._contents(user, server, folder)["content"],
                               key=lambda i: i["path"]):
                if item["type"] == "directory":
                    if level + 1 < depth and not item["name"].startswith("."):
                        folders.append((item["path"], level + 1))
                    continue
                yield {"path": item["path"], "size": item.get("size") or 0,
                       "last_modified": item.get("last_modified", "")}
                found += 1
                if found >= limit:
                    return

    def read(self, user: str, server: str, path: str) -> bytes:
        """One workspace file's bytes, as stored (notebooks included)."""
        model = self._contents(user, server, path, type="file", format="base64")
        return base64.b64decode(model["content"])
