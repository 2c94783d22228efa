"""An attacker's upload: a chunked request body far over a service's limit, streamed over
a raw socket (no Content-Length to refuse it by), stopping as soon as the service answers;
and the service process's peak memory, to show it never held the body."""

from __future__ import annotations

import json
import select
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MIB = 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Upload:
    status: int
    body: dict
    sent: int  # body bytes the socket accepted before the service answered or hung up


def send_chunked(url: str, path: str, total: int, headers: dict[str, str] | None = None
                 ) -> Upload:
    """POST ``total`` bytes of junk (not JSON) in 64 KiB chunks; stop sending when the
    service answers or closes, and read its answer."""
    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=60)
    # A small send buffer, so bytes counted as sent are close to bytes the service took.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
    head = [f"POST {path} HTTP/1.1", f"Host: {where.netloc}", "Content-Type: application/json",
            "Transfer-Encoding: chunked"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    frame = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    sent = 0
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the service answered before the body ended
            sock.sendall(frame)
            sent += CHUNK
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the service hung up mid-body; its answer is already on the way
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if _complete(data):
                break
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1]) if head_bytes else 0
    try:
        parsed = json.loads(body) if body else {}
    except json.JSONDecodeError:
        parsed = {"raw": body[:200].decode(errors="replace")}
    return Upload(status, parsed, sent)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
