"""Append-only witness files of an audit chain, kept outside the database they witness.

Every committed audit entry's ``(seq, hash, at)`` is appended to the service's witness file
(``audit-witness.jsonl`` in its state directory by default) and fsynced. Whoever can rewrite
the database cannot take back what the witness already holds: ``sandbox.anchored`` compares
the chain with it and names the first entry that no longer matches.

Files are only ever appended to. Past ``max_bytes`` the live file is renamed
``audit-witness.000001.jsonl`` (then ``…000002…``) and a new live file begins with a header
naming the previous file's number and SHA-256, so a rotated file that is deleted or edited
is noticed.

``WitnessFile.sync`` appends what the database holds after the last witnessed entry — and
a database shows committed rows only, so an entry whose transaction rolled back is never
witnessed. ``sandbox.witnessing`` calls it after commits, off the request's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine, select

from sandbox import audit

FORMAT = 1
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MIN_MAX_BYTES = 256
BATCH = 5000


@dataclass(frozen=True)
class Line:
    seq: int
    hash: str
    at: str


def _dumps(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _digest(path: Path, size: int | None = None) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        left = size if size is not None else -1
        while left != 0:
            chunk = handle.read(1 << 20 if left < 0 else min(1 << 20, left))
            if not chunk:
                break
            sha.update(chunk)
            left = left - len(chunk) if left > 0 else left
    return sha.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, shared: bool = False) -> Iterator[None]:
    """An advisory lock between the processes that append to (or read) one witness."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if not shared else \
            os.open(path, os.O_RDONLY)
    except OSError:
        if not shared:
            raise
        yield  # a reader without the lock file (read-only copy): nothing to wait for
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _gone(engine: Engine) -> bool:
    """An SQLite file that no longer exists (connecting would create an empty one)."""
    database = engine.url.database
    return engine.url.get_backend_name() == "sqlite" and bool(database) and \
        database != ":memory:" and not Path(database).exists()


class WitnessFile:
    """One service's witness: the live file at ``path`` and its rotated predecessors."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max(int(max_bytes), MIN_MAX_BYTES)
        self._lock = threading.Lock()
        # (live file's identity and size, its number, last seq) after this object's last
        # write: while the file is as left, the tail need not be read again.
        self._position: tuple[tuple[int, int], int, int] | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def rotated(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.{number:06d}{self.path.suffix}")

    def rotated_files(self) -> list[tuple[int, Path]]:
        pattern = re.compile(re.escape(self.path.stem) + r"\.(\d{6})" +
                             re.escape(self.path.suffix) + "$")
        if not self.path.parent.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.parent.iterdir()
                 if (m := pattern.match(p.name))]
        return sorted(found)

    # -- appending ---------------------------------------------------------------------
    def sync(self, engine: Engine) -> int:
        """Append the committed entries after the last one witnessed; how many."""
        if _gone(engine):
            return 0  # a database that was removed (a temporary one): nothing to witness
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.lock_path):
                number, last = self._where()
                written = 0
                while True:
                    with engine.connect() as conn:
                        rows = conn.execute(
                            select(audit.audit_log.c.seq, audit.audit_log.c.hash,
                                   audit.audit_log.c.at)
                            .where(audit.audit_log.c.seq > last)
                            .order_by(audit.audit_log.c.seq).limit(BATCH)).all()
                    if not rows:
                        return written
                    data = b"".join(_dumps({"seq": r.seq, "hash": r.hash, "at": r.at})
                                    for r in rows)
                    with open(self.path, "ab") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                        stat = os.fstat(handle.fileno())
                    last, written = rows[-1].seq, written + len(rows)
                    self._position = ((stat.st_ino, stat.st_size), number, last)
                    if stat.st_size >= self.max_bytes:
                        self._rotate(number, last)
                        number += 1
                    if len(rows) < BATCH:
                        return written

    def _where(self) -> tuple[int, int]:
        """The live file's number and the last sequence number witnessed."""
        if self._position is not None:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                stat = None
            identity, number, last = self._position
            if stat is not None and (stat.st_ino, stat.st_size) == identity:
                return number, last  # nobody else appended since this object did
        self._position = None
        return self._tail()

    def _tail(self) -> tuple[int, int]:
        """The live file's number and the last sequence number witnessed (creating the live
        file, with its header, when there is none)."""
        if self.path.exists():
            with open(self.path, "rb") as handle:
                header = _header(handle.readline())
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - 65536))
                tail = handle.read()
            if header is None:
                raise OSError(f"{self.path} has no witness header; move it away")
            last = int(header.get("last_seq") or 0)
            for raw in reversed(tail.split(b"\n")):
                line = _line(raw)
                if line is not None:
                    last = line.seq
                    break
            if not tail.endswith(b"\n"):  # a torn write before a crash: end that line
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")
            return int(header["file"]), last
        rotated = self.rotated_files()
        if not rotated:
            self._start(1, None, 0)
            return 1, 0
        number, previous = rotated[-1]
        last = 0
        with open(previous, "rb") as handle:
            header = _header(handle.readline()) or {}
            last = int(header.get("last_seq") or 0)
            for raw in handle:
                line = _line(raw)
                if line is not None:
                    last = line.seq
        self._start(number + 1, {"file": number, "sha256": _digest(previous)}, last)
        return number + 1, last

    def _start(self, number: int, previous: dict | None, last: int) -> None:
        header = {"witness": FORMAT, "file": number, "previous": previous, "last_seq": last,
                  "created": datetime.now(UTC).isoformat(timespec="microseconds")}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(_dumps(header))
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.path.parent)

    def _rotate(self, number: int, last: int) -> None:
        target = self.rotated(number)
        if target.exists():
            raise OSError(f"{target} exists already; the witness will not overwrite it")
        digest = _digest(self.path)
        os.rename(self.path, target)
        _fsync_dir(self.path.parent)
        self._start(number + 1, {"file": number, "sha256": digest}, last)
        stat = os.stat(self.path)
        self._position = ((stat.st_ino, stat.st_size), number + 1, last)

    # -- reading -----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The files as they are now, checked as a sequence (none missing, none edited);
        lines appended later are not read."""
        files: list[tuple[str, BinaryIO, int]] = []
        with _locked(self.lock_path, shared=True):
            paths = [p for _n, p in self.rotated_files()]
            if self.path.exists():
                paths.append(self.path)
            for path in paths:
                handle = open(path, "rb")  # noqa: SIM115 - kept open until read
                files.append((path.name, handle, os.fstat(handle.fileno()).st_size))
        snapshot = Snapshot(files)
        snapshot.problem = _check_sequence(files, self)
        return snapshot


@dataclass
class Snapshot:
    """Open witness files and the sizes they had when taken."""

    files: list[tuple[str, BinaryIO, int]]
    problem: tuple[str, str] | None = None
    skipped: int = field(default=0)

    def lines(self) -> Iterator[Line]:
        """Every witnessed entry in order (an unreadable, torn line is skipped)."""
        previous = 0
        for name, handle, size in self.files:
            handle.seek(0)
            handle.readline()  # header
            while handle.tell() < size:
                raw = handle.readline()
                if handle.tell() > size:  # written after the snapshot was taken
                    break
                line = _line(raw)
                if line is None:
                    self.skipped += 1
                    continue
                if line.seq <= previous:
                    self.problem = self.problem or (
                        f"the witness file {name} goes back to entry {line.seq} after "
                        f"entry {previous}; it was edited",
                        f"见证文件 {name} 在第 {previous} 条之后回到第 {line.seq} 条，已被改动")
                    return
                previous = line.seq
                yield line

    def close(self) -> None:
        for _name, handle, _size in self.files:
            handle.close()


def _header(raw: bytes) -> dict | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("witness") != FORMAT or \
            not isinstance(data.get("file"), int):
        return None
    return data


def _line(raw: bytes) -> Line | None:
    try:
        data = json.loads(raw)
        return Line(int(data["seq"]), str(data["hash"]), str(data["at"]))
    except (ValueError, KeyError, TypeError):
        return None


def _check_sequence(files: list[tuple[str, BinaryIO, int]],
                    witness: WitnessFile) -> tuple[str, str] | None:
    """The files must be numbered 1, 2, … with each header naming the SHA-256 of the file
    before it: a deleted or edited rotated file shows here."""
    expected, previous_name = 1, None
    for name, handle, _size in files:
        handle.seek(0)
        header = _header(handle.readline())
        if header is None:
            return (f"the witness file {name} has no valid header",
                    f"见证文件 {name} 缺少有效的文件头")
        if header["file"] != expected:
            missing = witness.rotated(expected).name
            return (f"the witness file {missing} is missing (found file {header['file']} "
                    f"where file {expected} was due)",
                    f"见证文件 {missing} 缺失（应为第 {expected} 个文件，实为第 "
                    f"{header['file']} 个）")
        if expected > 1:
            previous = header.get("previous") or {}
            actual = _digest(witness.path.with_name(previous_name)) if previous_name else ""
            if previous.get("file") != expected - 1 or previous.get("sha256") != actual:
                return (f"the witness file {previous_name} was altered: {name} names "
                        "another SHA-256 for it",
                        f"见证文件 {previous_name} 被改动：{name} 记录的 SHA-256 与之不符")
        expected, previous_name = expected + 1, name
    return None
