"""What a pruning of an audit chain claims, checked against the anchors of the entries it
removed (docs/audit.md, Retention).

``audit.prune`` removes the oldest entries written before a cutoff that lies at least
``MIN_RETENTION_DAYS`` before the pruning, makes the last of them the chain's starting
point, and records both in an ``audit.pruned`` entry. Whoever holds the database can write
all of that by hand to remove recent entries, choosing the cutoff they like. What they
cannot choose are the anchors of the removed entries: the witness's time of each entry,
and the signing time of each checkpoint of them that the service made and other services
recorded. So:

- the cutoff must be spelled exactly as ``prune`` spells it (``audit.parse_time``), and lie
  at least the minimum retention before the pruning, which is dated no later than the
  entry after it, nor than now;
- every anchor of an entry up to the starting point must be older than the cutoff: a
  witnessed entry was written when the witness says; a checkpoint of entry *n* was signed
  before entry *n + 1* was written (the checkpoint's own entry), so if that one was
  removed, the checkpoint must predate the cutoff; and ``prune`` keeps an entry whose
  checkpoint follows it directly, so a checkpoint of the starting point predates the
  cutoff too.

Times are compared as times, never as strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from sandbox import audit
from sandbox.audit import AuditAction, Verification, audit_log

if TYPE_CHECKING:
    from sandbox.anchored import Point


@dataclass
class Cutoff:
    """The pruning that made the chain's starting point ``start``: its entry, its cutoff as
    written and as a time (None when it is not spelled as ``prune`` spells it), and what is
    wrong with the pruning itself, if anything."""

    start: int
    entry: int | None
    older_than: str
    when: datetime | None
    too_early: Verification | None = None

    def young(self, point: Point) -> Verification | None:
        """The failure ``point`` — an anchor of entry ``point.seq`` ≤ ``start`` — shows: an
        entry removed though it was younger than the cutoff. None if it shows none (or the
        cutoff cannot be read, which ``too_early`` reports)."""
        if self.when is None:
            return None
        at = audit.parse_time(point.at)
        if at is not None and at < self.when:
            return None
        if point.dense:
            seq = point.seq
            what = f"{point.source} recorded entry {seq} at {point.at}"
            what_zh = f"{point.source_zh}记录第 {seq} 条的时间为 {point.at}"
        elif point.seq < self.start:
            seq = point.seq + 1  # written after that checkpoint was signed
            what = (f"{point.source} shows entry {point.seq} checkpointed at {point.at}, so "
                    f"entry {seq} was written later")
            what_zh = (f"{point.source_zh}显示第 {point.seq} 条于 {point.at} 做了检查点，"
                       f"故第 {seq} 条写于其后")
        else:
            seq = point.seq
            what = f"{point.source} shows entry {seq} checkpointed at {point.at}"
            what_zh = f"{point.source_zh}显示第 {seq} 条于 {point.at} 做了检查点"
        return Verification(
            False, 0, f"entries up to {self.start} were pruned too early: {what}, not "
            f"before the pruning's cutoff {self.older_than} (entry {self.entry})", seq,
            f"第 {self.start} 条及之前的记录被提前清理：{what_zh}，不早于清理截止时间 "
            f"{self.older_than}（第 {self.entry} 条）")

    def claim(self) -> dict:
        """What another service needs to check its records below the start
        (``from_claim``)."""
        return {"entry": self.entry, "older_than": self.older_than}


def from_claim(start: int, claim: object) -> Cutoff | None:
    """The cutoff a chain's service reported (``Cutoff.claim``) for its starting point."""
    if not isinstance(claim, dict):
        return None
    older_than = str(claim.get("older_than", ""))
    entry = claim.get("entry")
    return Cutoff(start, entry if isinstance(entry, int) else None, older_than,
                  audit.parse_time(older_than))


def claimed(conn: Connection, start: int) -> Cutoff | None:
    """The ``audit.pruned`` entry that vouches for the starting point ``start``, and
    whether its cutoff lay at least the minimum retention before it was made. When it was
    made is bounded by the entry after it and by now, so a pruning dated in the future
    does not pass for an old one."""
    for row in conn.execute(select(audit_log.c.seq, audit_log.c.at, audit_log.c.details)
                            .where(audit_log.c.action == str(AuditAction.AUDIT_PRUNED),
                                   audit_log.c.seq > start)
                            .order_by(audit_log.c.seq.desc())):
        details = audit.details_of(row.details)
        if details is None or details.get("through_seq") != start:
            continue  # a malformed one is reported by audit.verify
        older_than = str(details.get("older_than", ""))
        when = audit.parse_time(older_than)
        after = conn.execute(select(audit_log.c.at).where(audit_log.c.seq == row.seq + 1)
                             ).scalar()
        made = [audit.parse_time(at) for at in (row.at, after) if at is not None]
        cutoff = Cutoff(start, row.seq, older_than, when)
        if when is None:
            cutoff.too_early = _too_early(
                start, row.seq, row.at, f"its cutoff {older_than[:60]!r} is not a time as "
                "a pruning writes it", f"其截止时间 {older_than[:60]!r} 不是清理所写的时间格式")
        elif None in made:
            cutoff.too_early = _too_early(
                start, row.seq, row.at, "when it was made cannot be read",
                "无法读取其清理时间")
        elif when > min([*made, datetime.now(UTC)]) - timedelta(
                days=audit.MIN_RETENTION_DAYS) + timedelta(seconds=1):
            cutoff.too_early = _too_early(
                start, row.seq, row.at, f"it cut at {older_than}, less than "
                f"{audit.MIN_RETENTION_DAYS} days before",
                f"其截止时间为 {older_than}，距清理不足 {audit.MIN_RETENTION_DAYS} 天")
        return cutoff
    return None


def _too_early(start: int, entry: int, at: str, why: str, why_zh: str) -> Verification:
    return Verification(False, 0, f"entries up to {start} were pruned too early: the "
                        f"pruning (entry {entry}, {at}): {why}", None,
                        f"第 {start} 条及之前的记录被提前清理：清理（第 {entry} 条，{at}）"
                        f"{why_zh}")
