"""Signed checkpoints of audit chains, exchanged between services and recorded in each
other's chains.

A checkpoint is a service's signed statement ``(service, seq, hash, at)`` — "entry *seq* of
my chain has hash *hash*" — signed for ``Domain.CHECKPOINT`` with a key kept outside the
database (``sandbox.receipts``). Each one is an ``audit.checkpointed`` entry in the
service's own chain; other services verify its signature against the key they know for
that service and append it to their own chains as ``audit.anchored``. To cut or rewrite its
chain unnoticed, whoever holds one database would also have to rewrite the chains of the
services that recorded its checkpoints.

A service whose chain gained nothing since its last checkpoint but checkpoints and records
of other services' checkpoints hands out that last checkpoint again, so an idle federation
does not keep writing to itself.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, select

from sandbox import audit, receipts
from sandbox.audit import AuditAction, audit_head, audit_log
from sandbox.errors import Forbidden, InputError
from sandbox.secretfile import write_new

ANCHOR_ACTIONS = (str(AuditAction.AUDIT_CHECKPOINTED), str(AuditAction.AUDIT_ANCHORED))
SERVICE = re.compile(r"^[a-z][a-z0-9-]{0,40}(:[a-z0-9][a-z0-9-]{0,40})?$")
HASH = re.compile(r"^[0-9a-f]{64}$")


def subject(service: str) -> str:
    return f"service:{service}"


def make(conn: Connection, signer: receipts.Signer, service: str) -> dict:
    """``service``'s signed checkpoint of its chain's head, within the caller's transaction:
    the last one again when only checkpoints and anchor records were appended since, else a
    new one, appended to the chain."""
    last = conn.execute(select(audit_log.c.seq, audit_log.c.details)
                        .where(audit_log.c.action == str(AuditAction.AUDIT_CHECKPOINTED))
                        .order_by(audit_log.c.seq.desc()).limit(1)).first()
    if last is not None:
        busy = conn.execute(select(audit_log.c.seq).where(
            audit_log.c.seq > last.seq, audit_log.c.action.not_in(ANCHOR_ACTIONS)).limit(1)
        ).first() is not None
        # A malformed entry (someone planted it: it is no record of ours) is covered by a
        # new checkpoint, and so is anything after a checkpoint that is not this service's
        # with this key. (Only records follow the last checkpoint here: a few rows.)
        busy = busy or any(audit.malformed(r.action, r.at, r.details) for r in conn.execute(
            select(audit_log.c.action, audit_log.c.at, audit_log.c.details)
            .where(audit_log.c.seq >= last.seq)))
        document = (audit.details_of(last.details) or {}).get("checkpoint")
        payload = document.get("payload") if isinstance(document, dict) else None
        if not busy and isinstance(payload, dict) and \
                payload.get("service") == service and document.get("key_id") == signer.key_id:
            return document
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1).with_for_update()).one()
    document = signer.sign({"service": service, "seq": head.seq, "hash": head.hash,
                            "at": audit.stamp(datetime.now(UTC))},
                           receipts.Domain.CHECKPOINT)
    audit.append(conn, AuditAction.AUDIT_CHECKPOINTED, subject(service), subject(service),
                 {"seq": head.seq, "hash": head.hash, "checkpoint": document})
    return document


def payload_of(document: object, public_pem: bytes, service: str) -> dict:
    """The payload of ``service``'s checkpoint signed with ``public_pem``; InputError for
    anything else."""
    if not isinstance(document, dict):
        raise InputError("not a signed checkpoint")
    payload = receipts.verify(document, public_pem, receipts.Domain.CHECKPOINT)
    if payload.get("service") != service:
        raise InputError(f"the checkpoint is {payload.get('service')!r}'s, not {service!r}'s")
    if not isinstance(payload.get("seq"), int) or payload["seq"] < 0 or \
            not HASH.match(str(payload.get("hash"))) or not isinstance(payload.get("at"), str):
        raise InputError("the checkpoint does not name an entry and its hash")
    return payload


def record(conn: Connection, document: object, public_pem: bytes, service: str,
           recorder: str) -> bool:
    """Append ``service``'s checkpoint (verified against ``public_pem``) to this chain,
    unless it is the one recorded last; a checkpoint that goes back on the last one (an
    earlier entry, or another hash for the same entry) is recorded and marked so."""
    payload = payload_of(document, public_pem, service)
    last = latest(conn, service)
    if last is not None and (last["seq"], last["hash"]) == (payload["seq"], payload["hash"]):
        return False
    details = {"service": service, "seq": payload["seq"], "hash": payload["hash"],
               "at": payload["at"], "checkpoint": document}
    if last is not None and (payload["seq"] < last["seq"] or
                             (payload["seq"] == last["seq"] and
                              payload["hash"] != last["hash"])):
        details["goes_back_from"] = {"seq": last["seq"], "hash": last["hash"]}
    audit.append(conn, AuditAction.AUDIT_ANCHORED, subject(recorder), subject(service),
                 details)
    return True


def latest(conn: Connection, service: str) -> dict | None:
    """The details of this chain's last well-formed record of ``service``'s checkpoints (a
    malformed one, which ``audit.verify`` names, is passed over)."""
    rows = conn.execute(select(audit_log.c.at, audit_log.c.details).where(
        audit_log.c.action == str(AuditAction.AUDIT_ANCHORED),
        audit_log.c.subject == subject(service)).order_by(audit_log.c.seq.desc()))
    with rows:
        for row in rows:
            if not audit.malformed(str(AuditAction.AUDIT_ANCHORED), row.at, row.details):
                return audit.details_of(row.details)
    return None


def records(conn: Connection, service: str, after_seq: int = 0, limit: int | None = None
            ) -> list[dict]:
    """This chain's records of ``service``'s checkpoints (audit entries, oldest first,
    after entry ``after_seq``)."""
    query = select(audit_log).where(
        audit_log.c.action == str(AuditAction.AUDIT_ANCHORED),
        audit_log.c.subject == subject(service), audit_log.c.seq > after_seq
    ).order_by(audit_log.c.seq)
    return [dict(r) for r in conn.execute(query.limit(limit) if limit else query).mappings()]


class PeerKeys:
    """The public keys this service checks other services' checkpoints with, one PEM file
    per service in ``directory``. A file an operator put there is what counts; otherwise
    the key a service presents the first time is kept (trust on first use), and a later,
    different key is refused until an operator replaces the file."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, service: str) -> Path:
        if not SERVICE.match(service):
            raise InputError(f"not a service name: {service!r}")
        return self.directory / f"{service.replace(':', '-')}.pem"

    def key(self, service: str, offered: str | bytes | None = None) -> bytes:
        path = self.path(service)
        if not path.exists():
            if not offered:
                raise Forbidden(f"no public key is known for {service}")
            pem = offered.encode() if isinstance(offered, str) else offered
            receipts.public_key(pem)
            write_new(path, pem)
        pinned = path.read_bytes()
        if offered:
            pem = offered.encode() if isinstance(offered, str) else offered
            if pem.strip() != pinned.strip():
                raise Forbidden(f"{service} presented another key than the one kept in "
                                f"{path}; replace that file if the key really changed")
        return pinned
