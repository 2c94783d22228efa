"""Keeping each service's witness file (``sandbox.witness``) up to date with its chain.

``audit.append`` marks the connection it wrote on; when a marked connection goes back to
its pool — after its transaction committed *or* rolled back, for ``engine.begin()`` blocks
and ORM sessions alike — one thread per process wakes and has every followed witness
append what its database now shows after the last witnessed entry. Reading the database
is what makes this correct: it shows committed rows only, and entries commit in sequence
order (each takes the head row's lock until it commits), so nothing is skipped and nothing
rolled back is written. The request that committed never waits for the fsync. The thread
also polls every ``POLL_SECONDS`` for entries other processes wrote, and syncs at exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref

from sqlalchemy import Engine, create_engine, event

from sandbox import audit
from sandbox.witness import WitnessFile

log = logging.getLogger("sandbox.witness")

POLL_SECONDS = 2.0
COALESCE_SECONDS = 0.005


class _Followers:
    """One thread per process syncs every followed witness: woken when a connection that
    appended goes back to its pool, and every ``POLL_SECONDS`` for other writers."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, WitnessFile, Engine]] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, owner: object, witness: WitnessFile, engine: Engine) -> None:
        reader = _reader(engine)
        if not event.contains(engine, "checkin", _checked_in):
            event.listen(engine, "checkin", _checked_in)
        with self._lock:
            self._entries[id(witness)] = (weakref.ref(owner), witness, reader)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="audit-witness")
                self._thread.start()
                atexit.register(self.sync_all, quiet=True)
        self.wake()

    def remove(self, witness: WitnessFile) -> None:
        with self._lock:
            self._entries.pop(id(witness), None)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            if self._wake.wait(POLL_SECONDS):
                # A request commits two or three times (charge, release, …): one sync a
                # few milliseconds later witnesses them together.
                time.sleep(COALESCE_SECONDS)
            self._wake.clear()
            self.sync_all()

    def sync_all(self, quiet: bool = False) -> None:
        """``quiet``: at exit, when some followed database may be gone already."""
        with self._lock:
            entries = list(self._entries.items())
        for key, (owner, witness, reader) in entries:
            if owner() is None and not quiet:  # at exit, what a finished command wrote
                with self._lock:
                    self._entries.pop(key, None)
                continue
            try:
                witness.sync(reader)
            except Exception as exc:  # a database or disk away: retried next time
                (log.debug if quiet else log.warning)(
                    "audit witness %s not updated: %s", witness.path, exc)


def _reader(engine: Engine) -> Engine:
    """SQLite: a plain engine, whose reads take no write lock (the services' engines begin
    every transaction IMMEDIATE); other databases: the engine itself."""
    if engine.url.get_backend_name() == "sqlite":
        return create_engine(engine.url, pool_size=1, max_overflow=4,
                             connect_args={"timeout": 30, "check_same_thread": False})
    return engine


_followers = _Followers()


def _checked_in(_dbapi_connection: object, record: object) -> None:
    if getattr(record, "info", {}).pop(audit.APPENDED, False):
        _followers.wake()


def follow(owner: object, witness: WitnessFile, engine: Engine) -> None:
    """Keep ``witness`` up to date with the chain in ``engine`` while ``owner`` lives."""
    _followers.add(owner, witness, engine)


def unfollow(witness: WitnessFile) -> None:
    _followers.remove(witness)


def wake() -> None:
    """Sync now, in the background (after a commit made outside any pool, say)."""
    _followers.wake()


def sync_now(witness: WitnessFile, engine: Engine) -> int:
    """Witness now, in this thread, what ``engine``'s chain committed (a short command does
    this before it exits)."""
    reader = _reader(engine)
    try:
        return witness.sync(reader)
    finally:
        if reader is not engine:
            reader.dispose()
