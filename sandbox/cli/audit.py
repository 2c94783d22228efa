"""``sandboxctl audit …``: verify, prune and scan the hash-chained audit log of any
service's database."""

from __future__ import annotations

from pathlib import Path

import click

from sandbox import audit
from sandbox.db import make_engine
from sandbox.errors import InputError


@click.group("audit")
def audit_group() -> None:
    """The hash-chained audit log."""


@audit_group.command("verify")
@click.option("--database-url", default="sqlite:///var/gateway/gateway.db", show_default=True,
              help="Database holding the audit log.")
@click.option("--service", help="Whose chain it is (gateway, keys, site:NAME, portal): "
              "needed to find other services' records of its checkpoints.")
@click.option("--witness", type=click.Path(path_type=Path, dir_okay=False),
              help="The service's witness file (its rotated predecessors are found beside "
                   "it), e.g. var/gateway/audit-witness.jsonl.")
@click.option("--public-key", "public_key", type=click.Path(path_type=Path, dir_okay=False),
              help="The key the service signs its checkpoints with (PEM); checks their "
                   "signatures.")
@click.option("--peer-database", "peer_databases", multiple=True,
              help="Another service's database, for its records of this chain's "
                   "checkpoints (repeatable).")
@click.option("--peer-http", "peer_https", multiple=True, nargs=2,
              metavar="URL TOKEN_FILE",
              help="Another service's URL and the file holding its admin or operator token "
                   "(gateway, key service), for its records over HTTP (repeatable).")
def audit_verify(database_url: str, service: str | None, witness: Path | None,
                 public_key: Path | None, peer_databases: tuple[str, ...],
                 peer_https: tuple[tuple[str, str], ...]) -> None:
    """Check that no audit entry was edited, deleted or reordered, and — with the witness
    file and other services' records — that the chain was not cut or rewritten; name the
    first entry that no longer matches."""
    from sandbox import anchored, anchors, checkpoints
    from sandbox.witness import WitnessFile

    if (peer_databases or peer_https) and not service:
        raise InputError("name the service whose chain this is (--service) to find other "
                         "services' records of its checkpoints")
    if service and not checkpoints.SERVICE.match(service):
        raise InputError(f"not a service name: {service!r}")
    try:
        pem = public_key.read_bytes() if public_key else None
        tokens = [(url, Path(token).read_text().strip()) for url, token in peer_https]
    except OSError as exc:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from None
    # Anchors first, the chain last: what commits meanwhile is in the chain, not only in
    # an anchor.
    points: list[anchored.Point] = []
    for url in peer_databases:
        points += anchored.peer_points(anchors.records_from_database(url, service or ""),
                                       service or "", pem)
    for url, token in tokens:
        points += anchored.peer_points(anchors.records_from_http(url, token, service or ""),
                                       service or "", pem)
    snapshot = None
    if witness is not None:
        kept = WitnessFile(witness)
        if not witness.exists() and not kept.rotated_files():
            raise InputError(f"no witness file at {witness}")
        snapshot = kept.snapshot()
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            result = anchored.verify(conn, points, snapshot, pem)
    finally:
        if snapshot is not None:
            snapshot.close()
        engine.dispose()
    if not result.ok:
        click.echo(f"BROKEN after {result.entries} good entries: {result.problem}\n"
                   f"链条已损坏（此前 {result.entries} 条完好）：{result.problem_zh}", err=True)
        raise SystemExit(6)
    if result.anchors:
        click.echo(f"ok: {result.entries} entries, chain intact; {result.anchors} anchor "
                   f"points hold, through entry {result.anchored_through}")
    else:
        click.echo(f"ok: {result.entries} entries, chain intact (no anchor checked: give "
                   "--witness or another service's records to detect a cut or rewritten "
                   "chain)")


@audit_group.command("prune")
@click.option("--database-url", default="sqlite:///var/gateway/gateway.db", show_default=True,
              help="Database holding the audit log.")
@click.option("--older-than-days", type=int, default=audit.MIN_RETENTION_DAYS,
              show_default=True, help=f"Retention policy in days (at least "
              f"{audit.MIN_RETENTION_DAYS}).")
def audit_prune(database_url: str, older_than_days: int) -> None:
    """Remove audit entries past the retention policy, keeping the chain verifiable (a
    checkpoint, and an entry saying what was removed). A gateway's consent withdrawals are
    written again at the chain's end first, so that they outlive their entries."""
    import getpass
    from datetime import UTC, datetime, timedelta

    from sandbox.gateway import consent

    engine = make_engine(database_url)
    audit.create_tables(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        result = audit.prune(conn, now - timedelta(days=older_than_days),
                             f"cli:{getpass.getuser()}", older_than_days, now,
                             carry=consent.carry)
    through = f" (through entry {result.through_seq})" if result.through_seq else ""
    click.echo(f"removed {result.entries} entries older than {older_than_days} days{through}")


@audit_group.command("anomalies")
@click.option("--database-url", default="sqlite:///var/gateway/gateway.db", show_default=True,
              help="Database holding the audit log (gateway or portal).")
@click.option("--since-hours", type=float, default=24, show_default=True)
def audit_anomalies(database_url: str, since_hours: float) -> None:
    """List anomaly alerts (off hours, bursts, refusals, failed sign-ins, large exports)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from sandbox import anomalies

    since = (datetime.now(UTC) - timedelta(hours=since_hours)).isoformat()
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(audit.audit_log).where(audit.audit_log.c.at >= since))
        alerts = anomalies.detect(anomalies.Entry.from_row(r) for r in rows)
    for alert in alerts:
        click.echo(f"{alert.first_at:%Y-%m-%d %H:%M} {alert.rule:<18} {alert.who:<28} "
                   f"{alert.reason} (entries {alert.seqs[0]}–{alert.seqs[-1]})")
    click.echo(f"{len(alerts)} alert(s) in the last {since_hours:g} h", err=True)
