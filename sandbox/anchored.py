"""Verifying an audit chain against anchors kept outside its database.

``audit.verify`` checks that a chain is internally consistent — which anyone who can write
the database can keep it while deleting its tail or rewriting an entry and re-hashing every
later one. Anchors are statements about the chain that such a person cannot rewrite:

- the witness file: every committed entry's (seq, hash, at), appended and fsynced outside
  the database (``sandbox.witness``);
- the service's own signed checkpoints, recorded in its chain (``sandbox.checkpoints``),
  whose signatures the database holder cannot make;
- other services' records of its checkpoints, in their own chains.

An anchor for entry *n* holds if the chain's entry *n* has the anchor's hash. Since each
entry's hash covers the one before it, a chain that changed from entry *k* on fails every
anchor from *k* on: the witness, which has every entry, names *k* itself; a checkpoint
names the range between the last anchor that holds and itself. An anchor for an entry the
chain no longer has means its tail was cut (or the database replaced by an older copy).
Entries pruned under the retention policy are not expected, but every anchor of a removed
entry must predate the pruning's cutoff (``sandbox.retention``).

Read the anchors first and the database last: entries committed meanwhile are then in the
chain, never only in an anchor.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from sqlalchemy import Connection, func, select

from sandbox import audit, checkpoints, retention
from sandbox.audit import AuditAction, Verification, audit_checkpoint, audit_log
from sandbox.errors import InputError
from sandbox.retention import Cutoff
from sandbox.witness import Line, Snapshot

WITNESS = ("the witness file", "见证文件")


@dataclass(frozen=True)
class Point:
    """A statement that entry ``seq`` of the chain had ``hash`` (at time ``at``)."""

    seq: int
    hash: str
    at: str
    source: str
    source_zh: str
    dense: bool = False  # from the witness, which has every entry


def _witness_points(lines: Iterable[Line]) -> Iterator[Point]:
    for line in lines:
        yield Point(line.seq, line.hash, line.at, *WITNESS, dense=True)


def own_checkpoints(conn: Connection, public_pem: bytes | None = None
                    ) -> tuple[list[Point], Verification | None]:
    """The service's own checkpoints in its chain (their signatures checked when the
    service's public key is given), or the entry holding one its key did not sign. A
    malformed entry is skipped here: ``audit.verify`` names it."""
    points = []
    for row in conn.execute(select(audit_log.c.seq, audit_log.c.at, audit_log.c.details)
                            .where(audit_log.c.action == str(AuditAction.AUDIT_CHECKPOINTED))
                            .order_by(audit_log.c.seq)):
        if audit.malformed(str(AuditAction.AUDIT_CHECKPOINTED), row.at, row.details):
            continue
        document = (audit.details_of(row.details) or {}).get("checkpoint")
        payload = document.get("payload") if isinstance(document, dict) else None
        try:
            if public_pem is not None:
                service = payload.get("service") if isinstance(payload, dict) else None
                payload = checkpoints.payload_of(document, public_pem, str(service))
            seq, digest, at = _fields(payload)
        except (InputError, KeyError, TypeError, ValueError):
            return [], Verification(
                False, 0, f"entry {row.seq} holds a checkpoint the service's key did not "
                f"sign", row.seq, f"第 {row.seq} 条记录中的检查点并非本服务密钥所签")
        points.append(Point(seq, digest, at, f"the service's own checkpoint in entry "
                            f"{row.seq}", f"第 {row.seq} 条中本服务签名的检查点"))
    return points, None


def _fields(payload: object) -> tuple[int, str, str]:
    """A checkpoint's seq, hash and time; ValueError for anything that is not one (a
    payload that is no object, a seq that is no whole number, or one JSON reads as ∞)."""
    if not isinstance(payload, dict):
        raise ValueError("a checkpoint's payload is an object")
    seq = payload["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("a checkpoint's seq is a whole number")
    return seq, str(payload["hash"]), str(payload["at"])


def peer_points(entries: Iterable[dict], service: str, public_pem: bytes | None = None
                ) -> list[Point]:
    """``service``'s checkpoints as other services recorded them (their ``audit.anchored``
    entries); records whose signature does not hold, when a key is given, are left out —
    they could only raise a false alarm, never hide anything."""
    points = []
    for entry in entries:
        if not isinstance(entry, dict) or \
                entry.get("action") != str(AuditAction.AUDIT_ANCHORED) or \
                entry.get("subject") != checkpoints.subject(service):
            continue
        details = audit.details_of(entry.get("details"))
        try:
            payload = details["checkpoint"]["payload"] if public_pem is None else \
                checkpoints.payload_of(details["checkpoint"], public_pem, service)
            seq, digest, at = _fields(payload)
        except (InputError, KeyError, TypeError, ValueError):
            continue
        who, who_zh = _named(str(entry.get("actor", "")).removeprefix("service:"))
        points.append(Point(seq, digest, at, f"{who}'s record of its checkpoint (their "
                            f"entry {entry.get('seq')})",
                            f"{who_zh}记录的检查点（其第 {entry.get('seq')} 条）"))
    return points


def _named(service: str) -> tuple[str, str]:
    """A service as messages name it, in English and Chinese."""
    known = {"gateway": ("the gateway", "网关"), "keys": ("the key service", "密钥服务"),
             "portal": ("the portal", "门户")}
    if service in known:
        return known[service]
    if service.startswith("site:"):
        return f"site {service[5:]}", f"站点 {service[5:]} "
    return service or "another service", f"{service} " if service else "其他服务"


def verify(conn: Connection, points: Iterable[Point] = (), witness: Snapshot | None = None,
           public_pem: bytes | None = None) -> Verification:
    """``audit.verify``, then every anchor: the first entry that no longer matches one."""
    base = audit.verify(conn, well_formed=True)
    own, forged = own_checkpoints(conn, public_pem)
    if witness is not None and witness.problem:
        return _broken(base.entries, None, *witness.problem)
    sparse = sorted([*points, *own], key=lambda p: p.seq)
    dense = _witness_points(witness.lines()) if witness is not None else iter(())
    found = _check(_view(conn), heapq.merge(dense, sparse, key=lambda p: p.seq))
    if witness is not None and witness.problem:  # found while reading the lines
        return _broken(base.entries, None, *witness.problem)
    return first_failure(base, forged, found.failure, matched=found.matched,
                         through=found.through) or replace(
        base, anchors=found.matched, anchored_through=found.through)


def first_failure(*results: Verification | None, matched: int = 0,
                  through: int | None = None) -> Verification | None:
    """Of several checks of one chain, the failure at the earliest entry, if any."""
    failures = [r for r in results if r is not None and not r.ok]
    if not failures:
        return None
    first = min(failures, key=lambda f: f.seq if f.seq is not None else 0)
    return replace(first, anchors=matched, anchored_through=through)


@dataclass
class ChainView:
    """What checking anchors needs of a chain: where it starts (the retention checkpoint
    and its hash), its last entry, (seq, hash) in sequence order — all of them, or those
    the anchors name — and what its pruning claims."""

    start: int
    start_hash: str | None
    last: int
    rows: Iterator[tuple[int, str]]
    cutoff: Cutoff | None = None


def _view(conn: Connection) -> ChainView:
    pruned = conn.execute(select(audit_checkpoint).where(audit_checkpoint.c.id == 1)).first()
    start = pruned.seq if pruned else 0
    rows = ((r.seq, r.hash) for r in conn.execute(
        select(audit_log.c.seq, audit_log.c.hash).where(audit_log.c.seq > start)
        .order_by(audit_log.c.seq)))
    return ChainView(start, pruned.hash if pruned else None,
                     conn.execute(select(func.max(audit_log.c.seq))).scalar() or start,
                     rows, retention.claimed(conn, start) if pruned else None)


def hashes_at(conn: Connection, seqs: Iterable[int]) -> dict:
    """A chain's hashes at ``seqs``, where it starts and ends, and the cutoff of the pruning
    that made its start: what another service needs to check its records of this chain's
    checkpoints (``check_points``)."""
    view = _view(conn)
    wanted = sorted(set(seqs))
    rows = conn.execute(select(audit_log.c.seq, audit_log.c.hash)
                        .where(audit_log.c.seq.in_(wanted))) if wanted else []
    return {"start": view.start, "start_hash": view.start_hash, "last": view.last,
            "hashes": {str(r.seq): r.hash for r in rows},
            "pruned": view.cutoff.claim() if view.cutoff else None}


def check_points(answers: Iterable[dict], points: Iterable[Point]) -> Verification:
    """``points`` (another service's records of a chain's checkpoints) against the chain's
    hashes as ``hashes_at`` gave them, in one answer or several."""
    answers = list(answers)
    hashes = sorted((int(seq), str(h)) for answer in answers
                    for seq, h in answer["hashes"].items())
    last = answers[-1] if answers else {"start": 0, "start_hash": None, "last": 0}
    start = int(last["start"])
    view = ChainView(start, last.get("start_hash"), int(last["last"]), iter(hashes),
                     retention.from_claim(start, last.get("pruned")) if start else None)
    found = _check(view, iter(sorted(points, key=lambda p: p.seq)))
    return first_failure(found.failure, matched=found.matched, through=found.through) or \
        Verification(True, view.last - view.start, anchors=found.matched,
                     anchored_through=found.through)


@dataclass
class _Found:
    matched: int = 0
    through: int | None = None
    failure: Verification | None = None


def _check(view: ChainView, anchors: Iterator[Point]) -> _Found:
    start, last, cutoff, rows = view.start, view.last, view.cutoff, view.rows
    row = next(rows, None)
    found, good = _Found(), start  # ``good``: the last entry an anchor vouched for
    for point in anchors:
        if cutoff is not None and point.seq <= start:
            young = cutoff.young(point)  # an anchor of an entry the pruning removed
            if young is not None:
                found.failure = young
                return found
        if point.seq < start or (point.seq == start and start == 0):
            continue
        if point.seq == start:
            actual: str | None = view.start_hash
        else:
            while row is not None and row[0] < point.seq:
                row = next(rows, None)
            actual = row[1] if row is not None and row[0] == point.seq else None
        if actual == point.hash:
            found.matched += 1
            found.through = good = max(good, point.seq)
            continue
        found.failure = _mismatch(point, actual, good, last, start)
        return found
    if cutoff is not None and cutoff.too_early:
        found.failure = cutoff.too_early
    return found


def _mismatch(point: Point, actual: str | None, good: int, last: int,
              start: int) -> Verification:
    if actual is None and point.seq > last:
        first = last + 1
        if point.dense or first == point.seq:
            return _broken(first - start - 1, first, f"entry {first} is missing: "
                           f"{point.source} recorded it ({point.at}), but the log ends at "
                           f"entry {last}",
                           f"第 {first} 条记录缺失：{point.source_zh}记录了该条（{point.at}），"
                           f"但日志止于第 {last} 条")
        return _broken(first - start - 1, first, f"entries {first} to {point.seq} are "
                       f"missing: {point.source} recorded entry {point.seq} ({point.at}), "
                       f"but the log ends at entry {last}",
                       f"第 {first} 至 {point.seq} 条记录缺失：{point.source_zh}记录了第 "
                       f"{point.seq} 条（{point.at}），但日志止于第 {last} 条")
    if point.seq == start:
        return _broken(0, start, f"the retention checkpoint (entry {start}) no longer "
                       f"matches {point.source} ({point.at})",
                       f"保留检查点（第 {start} 条）与{point.source_zh}不符（{point.at}）")
    if point.dense or good + 1 == point.seq:
        return _broken(point.seq - start - 1, point.seq, f"entry {point.seq} no longer "
                       f"matches {point.source} ({point.at})",
                       f"第 {point.seq} 条记录与{point.source_zh}不符（{point.at}）")
    return _broken(good - start, point.seq, f"entry {point.seq} no longer matches "
                   f"{point.source} ({point.at}): an entry from {good + 1} to {point.seq} "
                   "was changed or removed",
                   f"第 {point.seq} 条记录与{point.source_zh}不符（{point.at}）：第 "
                   f"{good + 1} 至 {point.seq} 条之间有记录被改动或删除")


def _broken(entries: int, seq: int | None, problem: str, problem_zh: str) -> Verification:
    return Verification(False, entries, problem, seq, problem_zh)
