"""The withdrawal set: which patients' rows no query may read, per purpose. A withdrawal is
a row in a small table; every question reads the set as it stands (one indexed read of the
rows newer than the last it saw), so a withdrawal applies to the very next question, on any
replica, with no view rebuilt. Each release names the version it was computed under."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, Table, func, select

from sandbox.errors import Unavailable
from sandbox.purposes import ALL


@dataclass(frozen=True)
class Withdrawn:
    """The set at one version: purpose ("*" for all) → pseudonyms."""

    version: int = 0
    by_purpose: dict[str, frozenset[str]] = field(default_factory=dict)

    def excluded(self, purpose: str) -> frozenset[str]:
        """The patients a question under ``purpose`` must not read."""
        return self.by_purpose.get(purpose, frozenset()) | self.by_purpose.get(ALL, frozenset())

    def within(self, other: Withdrawn) -> bool:
        """Whether every withdrawal of this set is in ``other``."""
        return all(patients <= other.by_purpose.get(purpose, frozenset())
                   for purpose, patients in self.by_purpose.items())

    def adding(self, version: int, rows: Iterable[tuple[str, str]]) -> Withdrawn:
        """This set with (pseudonym, purpose) rows added, at ``version``."""
        grown: dict[str, set[str]] = {}
        for pseudonym, purpose in rows:
            grown.setdefault(purpose, set()).add(pseudonym)
        if not grown:
            return Withdrawn(version, self.by_purpose)
        merged = dict(self.by_purpose)
        for purpose, added in grown.items():
            merged[purpose] = merged.get(purpose, frozenset()) | added
        return Withdrawn(version, merged)


class WithdrawalLog:
    """Follows a withdrawals table with an increasing integer ``id`` column (and
    ``pseudonym``, ``purpose``; rows are never deleted). The set's version is its number of
    rows: ids are taken when a row is written, not when it commits, so another replica's
    row may become visible under a lower id than one already seen — the largest id would
    then name two sets, while every set a reader sees is the rows committed so far, and two
    of them with as many rows are the same. ``current()`` reads only the rows newer than the
    last it saw, with the table's count in the same statement (one snapshot); when they do
    not add up (a row committed late under a lower id) it reads the table again.

    Rows are never deleted, so a set that shrinks was tampered with (someone with the
    database's write access putting a withdrawn patient back into the answers): from then
    on ``current()`` refuses, and no question is answered until the rows are restored
    (``sandbox.gateway.consent.restore`` writes them back from the audit chain, as the
    gateway does when it starts)."""

    def __init__(self, db: Engine, table: Table) -> None:
        self.db, self.table = db, table
        self._seen, self._last = Withdrawn(), 0
        self._expected, self._unchecked = Withdrawn(), False
        self._lock = threading.Lock()
        self._count = select(func.count()).select_from(table)

    def expect(self, pairs: Iterable[tuple[str, str]]) -> None:
        """(pseudonym, purpose) pairs the table must hold — recorded outside the database
        (the audit chain, the gateway's own copy) — once they are committed: while one is
        missing, ``current()`` refuses, whatever the table's size."""
        with self._lock:
            self._expected = self._expected.adding(0, pairs)
            self._unchecked = True

    def current(self) -> Withdrawn:
        seen = self._read()
        with self._lock:
            if not self._unchecked:
                return seen
            expected = self._expected
        if not expected.within(seen):
            # An intake may have committed and been expected after this read began (another
            # thread of this gateway): its rows are in the table now — read it again.
            seen = self._read()
            if not expected.within(seen):
                raise self._tampered()
        with self._lock:
            if self._expected is expected:  # nothing newer expected meanwhile
                self._unchecked = False
        return seen

    def _read(self) -> Withdrawn:
        t = self.table
        with self._lock, self.db.connect() as conn:
            total = conn.execute(self._count).scalar_one()
            if total == self._seen.version:
                return self._seen
            if total < self._seen.version:
                raise self._tampered()
            counted = select(func.count()).select_from(t).scalar_subquery().label("total")
            rows = conn.execute(select(t.c.id, t.c.pseudonym, t.c.purpose, counted)
                                .where(t.c.id > self._last).order_by(t.c.id)).all()
            if rows and rows[0].total == self._seen.version + len(rows):
                base = self._seen
            else:  # read it all again, in one statement
                base = Withdrawn()
                rows = conn.execute(select(t.c.id, t.c.pseudonym, t.c.purpose)
                                    .order_by(t.c.id)).all()
            seen = base.adding(base.version + len(rows),
                               ((r.pseudonym, r.purpose) for r in rows))
            if base is not self._seen and not self._seen.within(seen):
                raise self._tampered()
            self._seen, self._unchecked = seen, True
            self._last = rows[-1].id if rows else self._last
            return self._seen

    def _tampered(self) -> Unavailable:
        return Unavailable(
            f"withdrawals already applied (set version {self._seen.version}) are missing from "
            "the withdrawals table: withdrawn patients would be read again, so no question is "
            "answered until the controllers restore them (restart the gateway: it writes "
            "back every withdrawal its audit chain and its state directory record)")
