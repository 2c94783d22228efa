"""Anchoring each service's audit chain outside its database: the witness file, signed
checkpoints exchanged between services, and the HTTP routes for both (docs/audit.md,
ADR 0010).

Who records whose checkpoints, and how each learns the other's key:

- the gateway, every ``audit_checkpoint_seconds`` while it serves and on demand
  (``POST /v1/admin/audit/checkpoint``), hands its checkpoint to each site and to the key
  service in a message signed with its key — which they already trust — and records the
  checkpoint each answers with; it keeps the key each presented first
  (``audit-peers/`` in its state directory, where an operator may put them beforehand);
- the key service also records the sites' checkpoints the gateway forwards, checked
  against the site keys registered with it;
- the portal, in its periodic round, hands the gateway its checkpoint over the gateway's
  admin API (the gateway keeps the portal's key on first use) and records the gateway's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from sandbox import anchored, audit, checkpoints, receipts, witness, witnessing
from sandbox.audit import AuditAction, Verification
from sandbox.db import make_engine
from sandbox.errors import InputError, PolicyRefusal, SandboxError, Unavailable
from sandbox.federated import messages

log = logging.getLogger("sandbox.anchors")


class AnchorSettings(BaseModel):
    """Settings every service shares (mixed into its settings class)."""

    audit_witness_file: Path | None = Field(None, description="append-only witness of the "
                                            "audit chain (default: audit-witness.jsonl in "
                                            "the state directory; best on another disk)")
    audit_witness_max_bytes: int = Field(witness.DEFAULT_MAX_BYTES, ge=witness.MIN_MAX_BYTES,
                                         description="size at which the witness file "
                                         "rotates")


class Anchors:
    """One service's anchors: its witness file (kept up to date while this object lives,
    when ``follow``), its checkpoint key, and the keys it knows for other services."""

    def __init__(self, service: str, engine: Engine, signer: receipts.Signer,
                 state_dir: Path, settings: AnchorSettings, follow: bool = True) -> None:
        self.service, self.engine, self.signer = service, engine, signer
        self.witness = witness.WitnessFile(
            settings.audit_witness_file or Path(state_dir) / "audit-witness.jsonl",
            settings.audit_witness_max_bytes)
        self.peers = checkpoints.PeerKeys(Path(state_dir) / "audit-peers")
        if follow:
            witnessing.follow(self, self.witness, engine)

    def flush(self) -> int:
        """Witness now what this process committed (before a short command exits)."""
        return witnessing.sync_now(self.witness, self.engine)

    def checkpoint(self) -> dict:
        with self.engine.begin() as conn:
            return checkpoints.make(conn, self.signer, self.service)

    def record(self, document: object, service: str, public_pem: bytes) -> bool:
        with self.engine.begin() as conn:
            return checkpoints.record(conn, document, public_pem, service, self.service)

    def answer(self, document: object, sender: str, sender_pem: bytes,
               forwarded: Iterable[object] = (),
               forwarded_keys: Callable[[], dict[str, bytes]] | None = None) -> dict:
        """Record the sender's checkpoint (and those it forwards from services whose keys
        this one knows); answer with this service's own."""
        try:
            self.record(document, sender, sender_pem)
            known = forwarded_keys() if forwarded_keys else {}
            for other in forwarded:
                name = str((other.get("payload") or {}).get("service")) \
                    if isinstance(other, dict) else ""
                if name in known:
                    self.record(other, name, known[name])
        except InputError as exc:
            raise PolicyRefusal(f"checkpoint refused: {exc.reason}") from None
        return {"checkpoint": self.checkpoint(),
                "public_key": self.signer.public_pem.decode()}

    def records(self, service: str, after_seq: int = 0, limit: int | None = None
                ) -> list[dict]:
        with self.engine.connect() as conn:
            return checkpoints.records(conn, service, after_seq, limit)

    def verify(self, points: Iterable[anchored.Point] = ()) -> Verification:
        """This chain against its witness, its own checkpoints and ``points``."""
        points = list(points)
        snapshot = self.witness.snapshot() if self.witness.path.exists() or \
            self.witness.rotated_files() else None
        try:
            with self.engine.connect() as conn:
                return anchored.verify(conn, points, snapshot, self.signer.public_pem)
        finally:
            if snapshot is not None:
                snapshot.close()


def result(verification: Verification) -> dict:
    return asdict(verification)


# -- the peers of the gateway: key service and sites ---------------------------------------

def install_peer(app: FastAPI, anchors: Anchors, audience: str,
                 gateway_key: Callable[[], bytes],
                 forwarded_keys: Callable[[], dict[str, bytes]] | None = None,
                 admin: Callable[..., str] | None = None) -> None:
    """Routes of a service that records the gateway's checkpoints: the exchange (a message
    the gateway signed for ``audience``), this service's checkpoint key, and — with an
    ``admin`` dependency — its records of another service's checkpoints."""

    @app.post("/v1/audit/checkpoints")
    def exchange(message: dict) -> dict:
        """Record the gateway's checkpoint; answer with this service's own."""
        try:
            key = gateway_key()
        except OSError as exc:
            raise Unavailable(f"the gateway's public key is not configured ({exc})") from None
        request = messages.open_signed(message, key, audience, "checkpoint")
        forwarded = request.get("forwarded") or []
        return anchors.answer(request.get("checkpoint"), "gateway", key,
                              forwarded if isinstance(forwarded, list) else [],
                              forwarded_keys)

    @app.get("/v1/audit/public-key", response_class=PlainTextResponse)
    def checkpoint_key() -> str:
        """The key this service signs its audit checkpoints with."""
        return anchors.signer.public_pem.decode()

    if admin is not None:
        _install_records(app, anchors, admin)


PAGE = 1000


def entry_number(value: int, name: str) -> int:
    """A sequence number a caller gave, within what the chain can hold; InputError
    otherwise."""
    if not 0 <= value <= audit.MAX_SEQ:
        raise InputError(f"{name}: an entry number from 0 to {audit.MAX_SEQ}")
    return value


def _install_records(app: FastAPI, anchors: Anchors, admin: Callable[..., str]) -> None:
    @app.get("/v1/admin/audit/anchors")
    def records(service: str, after_seq: int = 0, limit: int = PAGE,
                _actor: str = Depends(admin)) -> dict:
        """This chain's records of ``service``'s checkpoints (its ``audit.anchored``
        entries, oldest first, ``after_seq`` pages on), for verifying that service's
        chain."""
        if not checkpoints.SERVICE.match(service):
            raise InputError(f"service: not a service name: {service[:60]!r}")
        return {"service": service, "recorder": anchors.service,
                "records": anchors.records(service, entry_number(after_seq, "after_seq"),
                                           min(max(limit, 1), PAGE))}

    @app.get("/v1/admin/audit/hashes")
    def hashes(seqs: str = "", _actor: str = Depends(admin)) -> dict:
        """This chain's hashes at ``seqs`` (comma-separated, at most 1000), where it
        starts and where it ends, and its pruning's cutoff: for another service to check
        its records of this chain's checkpoints."""
        parts = [s for s in seqs.split(",") if s.strip()]
        if len(parts) > PAGE:
            raise InputError(f"at most {PAGE} entries at a time")
        try:
            wanted = [entry_number(int(s), "seqs") for s in parts]
        except ValueError:
            raise InputError("seqs: comma-separated entry numbers") from None
        with anchors.engine.connect() as conn:
            return anchored.hashes_at(conn, wanted)


# -- the gateway -----------------------------------------------------------------------------

class CheckpointIn(BaseModel):
    checkpoint: dict = Field(description="the sender's signed checkpoint")
    public_key: str = Field(max_length=4000, description="the sender's key (PEM); kept on "
                            "first use, and must match afterwards")


def install_gateway(app: FastAPI, anchors: Anchors, sites: Callable[[], dict[str, str]],
                    keys_url: Callable[[], str], admin: Callable[..., str]
                    ) -> Callable[[], dict]:
    """The gateway's routes: a checkpoint round on demand, the portal's exchange, and its
    records of other services' checkpoints and its own hashes for verifying chains.
    Returns the round, for the serving process to run periodically."""

    def round_once() -> dict:
        return audited_round(anchors, lambda: gateway_round(anchors, sites(), keys_url()))

    @app.post("/v1/admin/audit/checkpoint")
    def round_now(_actor: str = Depends(admin)) -> dict:
        """Make a checkpoint now and exchange it with the key service and every site."""
        return round_once()

    @app.post("/v1/admin/audit/checkpoints")
    def exchange(body: CheckpointIn, _actor: str = Depends(admin)) -> dict:
        """Record the checkpoint of a service holding the admin token (the portal);
        answer with the gateway's own."""
        payload = body.checkpoint.get("payload")
        sender = str(payload.get("service")) if isinstance(payload, dict) else ""
        if sender in ("", "gateway", "keys") or ":" in sender:
            raise InputError(f"{sender!r} may not hand its checkpoint to the gateway here")
        return anchors.answer(body.checkpoint, sender,
                              anchors.peers.key(sender, body.public_key))

    _install_records(app, anchors, admin)
    return round_once


def audited_round(anchors: Anchors, round_once: Callable[[], dict]) -> dict:
    """``round_once()``; if it fails, the failure is logged and audited (a round that fails
    unnoticed would leave the chain anchored nowhere) and reported as a reason."""
    try:
        return round_once()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"[:500]
        log.error("audit checkpoint round failed: %s", reason, exc_info=True)
        try:
            with anchors.engine.begin() as conn:
                audit.append(conn, AuditAction.AUDIT_CHECKPOINT_FAILED,
                             checkpoints.subject(anchors.service),
                             checkpoints.subject(anchors.service), {"reason": reason})
        except Exception:  # the database itself is away: the log has it
            log.exception("the failed checkpoint round could not be audited")
        raise Unavailable(f"the audit checkpoint round failed ({reason}); it was logged "
                          "and, where the database allowed, audited") from None


def gateway_round(anchors: Anchors, sites: dict[str, str], keys_url: str,
                  timeout: float = 30) -> dict:
    """The gateway's checkpoint, handed to every site and then the key service (with the
    sites' checkpoints); theirs recorded here. A peer that cannot be reached is named in
    the answer and tried again next round."""
    own = anchors.checkpoint()
    outcome: dict[str, str] = {}
    collected: list[dict] = []
    with httpx.Client(timeout=timeout) as http:
        for name, url in sorted(sites.items()):
            document = _exchange(anchors, http, f"site:{name}", url, {"checkpoint": own},
                                 outcome)
            if document is not None:
                collected.append(document)
        if keys_url:
            _exchange(anchors, http, "keys", keys_url,
                      {"checkpoint": own, "forwarded": collected}, outcome)
    return {"checkpoint": own["payload"], "peers": outcome}


def _exchange(anchors: Anchors, http: httpx.Client, peer: str, url: str, body: dict,
              outcome: dict[str, str]) -> dict | None:
    try:
        response = http.post(f"{url.rstrip('/')}/v1/audit/checkpoints",
                             json=messages.sign(anchors.signer, peer, "checkpoint", body))
        answer = response.json()
        if response.status_code != 200:
            raise Unavailable(f"answered {response.status_code}: {answer.get('reason')}")
        document = answer["checkpoint"]
        recorded = anchors.record(document, peer, anchors.peers.key(peer, answer.get(
            "public_key")))
        outcome[peer] = "recorded" if recorded else "unchanged"
        return document
    except SandboxError as exc:
        outcome[peer] = exc.reason
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        outcome[peer] = f"{type(exc).__name__}: {exc}"
    log.warning("audit checkpoint not exchanged with %s: %s", peer, outcome[peer])
    return None


def start_rounds(round_once: Callable[[], object], seconds: float,
                 name: str = "audit-checkpoints") -> threading.Thread | None:
    """``round_once()`` every ``seconds`` (0: never) in a daemon thread."""
    if seconds <= 0:
        return None

    def run() -> None:
        while True:
            time.sleep(seconds)
            try:
                round_once()
            except Exception as exc:  # keep serving; the next round tries again
                log.warning("%s round failed: %s", name, exc)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread


# -- the portal's side ------------------------------------------------------------------------

def exchange_with_gateway(anchors: Anchors, post: Callable[[str, dict], dict]) -> bool:
    """Hand the gateway this service's checkpoint (``post(path, body)`` calls its admin
    API) and record the gateway's answer; whether a new one was recorded."""
    answer = post("/v1/admin/audit/checkpoints",
                  {"checkpoint": anchors.checkpoint(),
                   "public_key": anchors.signer.public_pem.decode()})
    try:
        return anchors.record(answer.get("checkpoint"), "gateway",
                              anchors.peers.key("gateway", answer.get("public_key")))
    except InputError as exc:
        raise PolicyRefusal(f"the gateway's checkpoint was refused: {exc.reason}") from None


# -- reading other services' records (for ``sandboxctl audit verify``) -----------------------

def records_from_database(url: str, service: str) -> list[dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return checkpoints.records(conn, service)
    finally:
        engine.dispose()


def records_from_http(url: str, token: str, service: str, timeout: float = 60) -> list[dict]:
    """Another service's records of ``service``'s checkpoints, page by page."""
    found: list[dict] = []
    while True:
        page = _admin_get(url, token, "/v1/admin/audit/anchors", {
            "service": service, "after_seq": found[-1]["seq"] if found else 0,
            "limit": PAGE}, "its records", timeout)["records"]
        found += page
        if len(page) < PAGE:
            return found


def _admin_get(url: str, token: str, path: str, params: dict, what: str,
               timeout: float) -> dict:
    try:
        response = httpx.get(f"{url.rstrip('/')}{path}", params=params, timeout=timeout,
                             headers={"Authorization": f"Bearer {token}"})
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise Unavailable(f"{url} could not be asked for {what} ({exc})") from None
    if response.status_code != 200:
        raise Unavailable(f"{url} refused to give {what}: "
                          f"{body.get('reason', response.status_code)}")
    return body


def check_records(points: list[anchored.Point], hashes: Callable[[list[int]], dict]
                  ) -> Verification:
    """Records of another service's checkpoints against that service's chain as
    ``hashes(seqs)`` (its ``GET /v1/admin/audit/hashes``) shows it, a page at a time."""
    seqs = sorted({p.seq for p in points})
    answers = [hashes(seqs[i:i + PAGE]) for i in range(0, len(seqs), PAGE)] or [hashes([])]
    return anchored.check_points(answers, points)
