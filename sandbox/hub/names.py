"""Names shared by hub and portal: a project's named server and its workspace volume."""

from __future__ import annotations

import re

SERVER_NAME = re.compile(r"^p(\d{1,12})$")


def server_name(application_id: int) -> str:
    """The hub's named-server name of a project."""
    return f"p{application_id}"


def project_of(server: str) -> int | None:
    """The project id a named server belongs to, or None."""
    match = SERVER_NAME.match(server or "")
    return int(match.group(1)) if match else None


def volume_name(instance: str, user: str, server: str) -> str:
    """The Docker volume holding a sandbox's workspace (``/home/researcher``). ``instance``
    keeps the sandboxes of two hubs on one engine apart."""
    return f"{instance}-{user}-{server}-work"
