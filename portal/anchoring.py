"""The portal's audit chain anchored outside its database (docs/audit.md): its witness
file, its signed checkpoints handed to the gateway in the periodic round, the gateway's
checkpoints recorded here — and the verification the controller's audit page shows, for
the portal's chain and the gateway's."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import Engine

from portal import gateway
from portal.config import PortalSettings
from sandbox import anchored, checkpoints, receipts
from sandbox.anchors import Anchors, check_records, exchange_with_gateway, result
from sandbox.audit import Verification
from sandbox.errors import SandboxError

SERVICE = "portal"


def anchors(settings: PortalSettings, engine: Engine, follow: bool = True) -> Anchors:
    """The portal's anchors; ``follow`` keeps its witness file up to date (once per app)."""
    return Anchors(SERVICE, engine, receipts.Signer(settings.state_dir /
                                                    "audit-signing-key.pem"),
                   settings.state_dir, settings, follow)


def exchange(settings: PortalSettings, engine: Engine) -> bool:
    """Hand the gateway the portal's checkpoint and record the gateway's (on demand, and in
    every periodic round); whether a new one of the gateway's was recorded."""
    return exchange_with_gateway(anchors(settings, engine, follow=False),
                                 lambda path, body: gateway.hand_checkpoint(settings, path,
                                                                            body))


def verify(settings: PortalSettings, engine: Engine) -> tuple[dict, dict]:
    """The portal's chain against its witness, its checkpoints and the gateway's records of
    them; the gateway's chain as the gateway checks it (its witness and checkpoints) and
    against the portal's records of its checkpoints. A gateway that cannot be asked is
    named in its result."""
    mine = anchors(settings, engine, follow=False)
    try:
        at_gateway = gateway.audit_records(settings, SERVICE)
    except SandboxError:
        at_gateway = []  # the gateway's own result below says it could not be reached
    portal = result(mine.verify(anchored.peer_points(at_gateway, SERVICE,
                                                      mine.signer.public_pem)))
    with engine.connect() as conn:
        kept = anchored.peer_points(checkpoints.records(conn, "gateway"), "gateway",
                                    _known(mine, "gateway"))
    try:
        answer = gateway.verify_audit(settings)
        itself = Verification(**{k: v for k, v in answer.items()
                                 if k in Verification.__dataclass_fields__})
        here = check_records(kept, lambda seqs: gateway.audit_hashes(settings, seqs))
    except SandboxError as exc:
        return portal, {"ok": False, "entries": 0, "problem": exc.reason,
                        "problem_zh": exc.details.get("zh")}
    matched = itself.anchors + here.anchors
    through = max((t for t in (itself.anchored_through, here.anchored_through) if t),
                  default=None)
    failed = anchored.first_failure(itself, here, matched=matched, through=through)
    return portal, result(failed or replace(itself, anchors=matched,
                                            anchored_through=through))


def _known(mine: Anchors, service: str) -> bytes | None:
    """The key kept for ``service`` (to check the signatures of its records), if any."""
    path = mine.peers.path(service)
    return path.read_bytes() if path.exists() else None
