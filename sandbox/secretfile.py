"""Secret files (keys, tokens): created once, readable only by their owner, never
overwritten — a second writer racing the first simply reads what the first wrote."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_new(path: Path, content: bytes) -> bool:
    """Create ``path`` (mode 0600) holding ``content``; False if it already exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return True


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The content of ``path``, creating it with ``make()`` the first time."""
    path = Path(path)
    if not path.exists():
        write_new(path, make())
    return path.read_bytes()
