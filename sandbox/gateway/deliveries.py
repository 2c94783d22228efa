"""Which consent withdrawals each federated site has been told.

A site holds its own rows and applies the withdrawals the gateway forwards to it. A site
that was out of reach when a withdrawal was taken must not go on counting the patient:
the gateway records, per site, how far it has told it (``site_deliveries``), tells every
site what it lacks at intake, and again before each federated question — and a question
is refused, before anything is charged, while one of its sites cannot be told.

What a site was told is kept as (``through``, ``version``): the site has every row with an
id up to ``through``, and those were ``version`` rows. Ids are taken when a row is written,
not when it commits, so a row may become visible later under a lower id; then the rows up
to ``through`` no longer number ``version``, and the site is told the whole set again
(telling a site a withdrawal twice changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from sandbox.errors import SandboxError, Unavailable
from sandbox.gateway.grants import now
from sandbox.gateway.store import site_deliveries, withdrawals

BATCH = 50_000  # withdrawals per message (a site takes up to 32 MiB in one)

Tell = Callable[[str, str, list[dict]], None]  # (site, url, withdrawals) → raises if not told


class Deliveries:
    def __init__(self, db: Engine) -> None:
        self.db = db

    def bring_up_to_date(self, sites: dict[str, str], tell: Tell) -> list[str]:
        """Tell each site (name → URL) the withdrawals it lacks; the sites that could not
        be told (they are told next time)."""
        missed = []
        for name, url in sorted(sites.items()):
            try:
                self.tell_site(name, url, tell)
            except SandboxError:
                missed.append(name)
        return missed

    def require(self, sites: dict[str, str], tell: Tell) -> int:
        """Every site told every withdrawal recorded so far, or ``Unavailable`` naming those
        that could not be; the withdrawal set's version all of them hold."""
        held, missed = [], []
        for name, url in sorted(sites.items()):
            try:
                held.append(self.tell_site(name, url, tell))
            except SandboxError:
                missed.append(name)
        if missed:
            raise Unavailable(
                f"site(s) {', '.join(missed)} could not be told of consent withdrawals "
                "they have not received, so the question is not asked; the charge is "
                "kept and the same question sent again is answered under it")
        return min(held, default=0)

    def tell_site(self, name: str, url: str, tell: Tell) -> int:
        """Tell one site what it lacks; the version it then holds."""
        with self.db.connect() as conn:
            known = conn.execute(select(site_deliveries).where(
                site_deliveries.c.site == name)).mappings().first()
            rows, through, version = _missing(conn, known)
        for start in range(0, len(rows), BATCH):
            tell(name, url, [{"pseudonym": r.pseudonym, "purposes": [r.purpose]}
                             for r in rows[start:start + BATCH]])
        if rows or known is None:
            self._record(name, through, version)
        return version

    def _record(self, name: str, through: int, version: int) -> None:
        try:
            with self.db.begin() as conn:
                moved = conn.execute(update(site_deliveries).where(
                    site_deliveries.c.site == name, site_deliveries.c.version < version)
                    .values(through=through, version=version, at=now())).rowcount
                if not moved and conn.execute(select(site_deliveries.c.site).where(
                        site_deliveries.c.site == name)).first() is None:
                    conn.execute(insert(site_deliveries).values(
                        site=name, through=through, version=version, at=now()))
        except IntegrityError:
            pass  # another replica recorded this site first; the next call compares again


def _missing(conn: Connection, known: dict | None) -> tuple[list, int, int]:
    """The rows a site lacks, and the (through, version) it has once told them."""
    t = withdrawals
    if known is not None:
        counted = conn.execute(select(func.count()).select_from(t).where(
            t.c.id <= known["through"])).scalar_one()
        if counted == known["version"]:
            rows = conn.execute(select(t.c.id, t.c.pseudonym, t.c.purpose)
                                .where(t.c.id > known["through"]).order_by(t.c.id)).all()
            through = rows[-1].id if rows else known["through"]
            return rows, through, known["version"] + len(rows)
    rows = conn.execute(select(t.c.id, t.c.pseudonym, t.c.purpose).order_by(t.c.id)).all()
    return rows, (rows[-1].id if rows else 0), len(rows)
