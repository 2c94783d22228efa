"""Attacks on the audit chains' anchoring (docs/audit.md, ADR 0010) by someone with full
write access to one service's database, played on the gateway process of the federation
(its checkpoints recorded by the key service and every site) and on a gateway process over
the central dataset. Each test asserts what docs/audit.md says such a person cannot do
unnoticed; a failing test shows that ``sandboxctl audit verify`` misses it."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from sandbox import audit
from sandbox.audit import AuditAction, audit_checkpoint, audit_head, audit_log
from sandbox.client import Gateway
from sandbox.db import make_engine
from tests.audit_attacks import consistent, copy_sqlite, rewrite, verify, wait_witnessed
from tests.federated.conftest import DATASET, grant
from tests.services import GatewayProcess


def _round(gateway) -> dict:
    response = gateway.admin("POST", "/v1/admin/audit/checkpoint")
    assert response.status_code == 200, response.text
    return response.json()


def _seq_of(url: str, action: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        seq = conn.execute(select(audit_log.c.seq).where(audit_log.c.action == action)
                           .order_by(audit_log.c.seq.desc()).limit(1)).scalar()
    engine.dispose()
    return seq


def forge_pruning(url: str, through: int, older_than: str) -> None:
    """What ``audit.prune`` leaves behind, made by hand: entries up to ``through`` deleted,
    the retention checkpoint set to the last of them, and an ``audit.pruned`` entry
    appended that vouches for it and claims the cutoff ``older_than``."""
    engine = make_engine(url)
    with engine.begin() as conn:
        digest = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == through)
                              ).scalar_one()
        removed = conn.execute(delete(audit_log).where(audit_log.c.seq <= through)).rowcount
        conn.execute(insert(audit_checkpoint).values(
            id=1, seq=through, hash=digest, at=datetime.now(UTC).isoformat()))
        audit.append(conn, AuditAction.AUDIT_PRUNED, "system:retention", "audit:log",
                     {"through_seq": through, "through_hash": digest, "entries": removed,
                      "older_than": older_than, "retention_days": 183})
    engine.dispose()


def _federated_history(cluster, noisy, work: Path) -> dict:
    """The federation's gateway after a query and a checkpoint round (the key service and
    every site recorded the gateway's checkpoint), its database and witness copied at one
    moment, and how to verify the copy against every anchor."""
    gw = Gateway(noisy.url, grant(noisy, project="pruned")["token"])
    gw.federated.histogram(DATASET, "length_of_stay", [0, 7, 365], epsilon=0.1)
    _round(noisy)
    witness = cluster.gateway_state / "audit-witness.jsonl"
    wait_witnessed(witness, noisy.database_url)
    url = copy_sqlite(noisy.database_url, work / "gateway-copy.db")
    kept = work / "audit-witness.jsonl"
    shutil.copy(witness, kept)  # the witness as it stands when the copy is made
    peers = ["--service", "gateway", "--public-key", cluster.gateway_key,
             "--peer-http", cluster.keys_url, cluster.root / "keys" / "operator.token",
             *(option for name in cluster.sites for option in (
                 "--peer-database", f"sqlite:///{cluster.root / f'site-{name}' / 'site.db'}"))]
    return {"url": url, "witness": kept, "peers": peers}


def test_a_pruning_forged_with_a_basic_format_cutoff_passes_the_witness(cluster, noisy,
                                                                        tmp_path):
    """docs/audit.md: the holder of one database cannot "remove entries younger than the
    retention policy as if pruned" — the witness's times are checked against the
    pruning's cutoff. The cutoff is a string the attacker writes; ``_retention_cutoff``
    parses it as a date (``fromisoformat`` takes the ISO basic format
    ``20260501T000000+00:00``: 2026-05-01, more than 183 days back), but
    ``_Cutoff.problem`` compares it with the witness's times as *strings*, and
    ``"2026-11-30T…" < "20260501T…"``. Every witnessed entry of this year
    then counts as older than the cutoff: the gateway's whole recent history — here
    through its last release and the checkpoint round — is deleted, and verification
    against the witness, the service's key and every peer's records says ok."""
    history = _federated_history(cluster, noisy, tmp_path)
    released = _seq_of(history["url"], "release.released")
    cutoff = datetime.now(UTC) - timedelta(days=200)
    # (the trick needs the cutoff in the year of the entries: true from July on)
    forge_pruning(history["url"], released, cutoff.strftime("%Y%m%dT%H%M%S+00:00"))
    assert consistent(history["url"])
    result = verify(history["url"], *history["peers"], "--witness", history["witness"])
    assert result.code == 6, (
        f"entries 1 to {released} removed as a pruning; verify said: "
        f"{result.code} {result.stdout.strip()} {result.stderr.strip()}")


def test_without_the_witness_a_forged_pruning_passes_the_other_services_records(
        cluster, noisy, tmp_path):
    """docs/audit.md: with the witness in hand too, "every entry up to the last checkpoint
    another service recorded is still protected — a change before it is reported …, a cut
    below it as missing". But anchors below the chain's retention checkpoint are skipped
    unless they come from the witness: the other services' records of the gateway's
    checkpoints are never compared with anything once the entries they vouch for are
    "pruned". A pruning with an honest-looking ISO cutoff, 184 days back, removes the
    gateway's history through its last release, and verification against the gateway's
    key and the key service's and every site's records says ok."""
    history = _federated_history(cluster, noisy, tmp_path)
    released = _seq_of(history["url"], "release.released")
    cutoff = (datetime.now(UTC) - timedelta(days=184)).isoformat(timespec="microseconds")
    forge_pruning(history["url"], released, cutoff)
    assert consistent(history["url"])
    result = verify(history["url"], *history["peers"])
    assert result.code == 6, (
        f"entries 1 to {released} removed as a pruning; verify said: "
        f"{result.code} {result.stdout.strip()} {result.stderr.strip()}")


def plant(url: str, action: str, details: str) -> int:
    """Append an entry with raw ``details`` (valid JSON, not an object), hashed and
    chained as ``audit.append`` would: the chain stays consistent."""
    engine = make_engine(url)
    with engine.begin() as conn:
        head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
        entry = {"seq": head.seq + 1, "at": datetime.now(UTC).isoformat(
            timespec="microseconds"), "actor": "gateway", "action": action,
            "subject": "service:gateway", "details": details, "prev_hash": head.hash}
        digest = audit._hash(entry)
        conn.execute(insert(audit_log).values(**entry, hash=digest))
        conn.execute(update(audit_head).where(audit_head.c.id == 1)
                     .values(seq=entry["seq"], hash=digest))
    engine.dispose()
    return entry["seq"]


def test_one_planted_entry_stops_checkpoints_and_verification(datasets_dir, tmp_path):
    """docs/audit.md: the holder of one database "can add entries: the follower witnesses
    them and the next checkpoint covers them like the service's own". One added entry
    whose action is ``audit.checkpointed`` and whose details are ``[]`` instead of an
    object does more: ``checkpoints.make`` reads it as the last checkpoint and raises, so
    every later checkpoint round fails (500, and the periodic round only logs a warning) —
    the gateway stops anchoring its chain in the other services; and ``audit verify``,
    ``GET /v1/admin/audit/verify`` and the portal's check raise in ``own_checkpoints``
    before naming anything, also when an earlier entry was rewritten. Guarantees
    asserted: the round still anchors the chain; verify names the rewritten entry (exit 6),
    not "unexpected error" (exit 70)."""
    gateway = GatewayProcess(datasets_dir, tmp_path / "state", f"sqlite:///{tmp_path / 'gw.db'}")
    gateway.start()
    try:
        granted = gateway.grant()
        Gateway(gateway.url, granted["token"]).count("emr-visits", epsilon=0.1)
        _round(gateway)
        planted = plant(gateway.database_url, "audit.checkpointed", "[]")
        Gateway(gateway.url, granted["token"]).count("emr-visits", epsilon=0.2)
        round_after = gateway.admin("POST", "/v1/admin/audit/checkpoint")
        checked = gateway.admin("GET", "/v1/admin/audit/verify")
        witness = tmp_path / "state" / "audit-witness.jsonl"
        wait_witnessed(witness, gateway.database_url)
    finally:
        gateway.stop()
    url = copy_sqlite(gateway.database_url, tmp_path / "copy.db")
    created = _seq_of(url, "grant.created")
    details = json.dumps({"epsilon_total": 100.0}, sort_keys=True)
    rewrite(url, created, details=details)  # and the grant's ε rewritten, re-hashed forward
    assert consistent(url)
    result = verify(url, "--witness", witness, "--public-key",
                    tmp_path / "state" / "public-key.pem")
    problems = []
    if round_after.status_code != 200:
        problems.append(f"checkpoint round after entry {planted}: {round_after.status_code} "
                        f"{round_after.text}")
    if checked.status_code != 200:
        problems.append(f"GET /v1/admin/audit/verify: {checked.status_code} {checked.text}")
    if result.code != 6 or f"entry {created}" not in result.stderr:
        problems.append(f"audit verify after rewriting entry {created}: exit {result.code} "
                        f"{result.stderr.strip()}")
    assert not problems, problems

