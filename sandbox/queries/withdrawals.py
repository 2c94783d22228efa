"""The withdrawal set: which patients' rows no query may read, per purpose. A withdrawal is
a row in a small table; every question reads the set as it stands (one indexed read of the
rows newer than the last it saw), so a withdrawal applies to the very next question, on any
replica, with no view rebuilt. Each release names the version it was computed under."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, Table, func, select

from sandbox.purposes import ALL


@dataclass(frozen=True)
class Withdrawn:
    """The set at one version: purpose ("*" for all) → pseudonyms."""

    version: int = 0
    by_purpose: dict[str, frozenset[str]] = field(default_factory=dict)

    def excluded(self, purpose: str) -> frozenset[str]:
        """The patients a question under ``purpose`` must not read."""
        return self.by_purpose.get(purpose, frozenset()) | self.by_purpose.get(ALL, frozenset())

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
    ``pseudonym``, ``purpose``): ``current()`` reads only rows it has not seen — unless the
    table holds more rows than it has seen plus the new ones (a row committed late under a
    lower id, by another replica), when it reads the table again."""

    def __init__(self, db: Engine, table: Table) -> None:
        self.db, self.table = db, table
        self._seen, self._rows = Withdrawn(), 0
        self._lock = threading.Lock()

    def current(self) -> Withdrawn:
        t = self.table
        columns = select(t.c.id, t.c.pseudonym, t.c.purpose).order_by(t.c.id)
        with self._lock, self.db.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t)).scalar_one()
            if total == self._rows:
                return self._seen
            base = self._seen
            rows = conn.execute(columns.where(t.c.id > base.version)).all()
            if self._rows + len(rows) != total:  # read it all again
                base = Withdrawn()
                rows = conn.execute(columns).all()
                self._rows = 0
            self._seen = base.adding(rows[-1].id if rows else base.version,
                                     ((r.pseudonym, r.purpose) for r in rows))
            self._rows += len(rows)
            return self._seen
