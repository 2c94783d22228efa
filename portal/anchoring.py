"""The portal's audit chain anchored outside its database (docs/audit.md): its witness
file, its signed checkpoints handed to the gateway in the periodic round, the gateway's
checkpoints recorded here — and the verification the controller's audit page shows, for
the portal's chain and the gateway's."""

from __future__ import annotations

from sqlalchemy import Engine

from portal import gateway
from portal.config import PortalSettings
from sandbox import anchored, checkpoints, receipts
from sandbox.anchors import Anchors, exchange_with_gateway, result
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
    them; the gateway's chain against its own anchors and the portal's records of its
    checkpoints. A gateway that cannot be asked is named in its result."""
    mine = anchors(settings, engine, follow=False)
    try:
        at_gateway = gateway.audit_records(settings, SERVICE)
    except SandboxError:
        at_gateway = []  # the gateway's own result below says it could not be reached
    portal = result(mine.verify(anchored.peer_points(at_gateway, SERVICE,
                                                      mine.signer.public_pem)))
    with engine.connect() as conn:
        kept = checkpoints.records(conn, "gateway")
    try:
        other = gateway.verify_audit(settings, kept)
    except SandboxError as exc:
        other = {"ok": False, "entries": 0, "problem": exc.reason,
                 "problem_zh": exc.details.get("zh")}
    return portal, other
