"""``sandboxctl gateway …`` and ``sandboxctl audit …``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sandbox import audit, receipts, serving
from sandbox.cli.options import given, trusted_proxy_option
from sandbox.db import make_engine
from sandbox.errors import InputError
from sandbox.limits import MAX_EPSILON


@click.group()
def gateway() -> None:
    """The privacy gateway: DP queries over restricted datasets."""


@gateway.command()
@click.option("--host", help="Address to listen on [env SANDBOX_GATEWAY_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port [env SANDBOX_GATEWAY_PORT; 8700].")
@click.option("--database-url", help="SQLite or PostgreSQL URL of the ledger "
              "[env SANDBOX_GATEWAY_DATABASE_URL; sqlite:///var/gateway/gateway.db].")
@click.option("--datasets-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Onboarded datasets to serve [env SANDBOX_GATEWAY_DATASETS_DIR; "
                   "var/datasets].")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Signing key, admin token, views [env SANDBOX_GATEWAY_STATE_DIR; "
                   "var/gateway].")
@click.option("--rate-limit", type=float, help="Requests per second per token (0 = off) "
              "[env SANDBOX_GATEWAY_RATE_LIMIT; 5].")
@click.option("--federation-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Federated datasets, their sites and the key service (JSON) "
                   "[env SANDBOX_GATEWAY_FEDERATION_FILE; none].")
@click.option("--max-epsilon", type=float, help="Largest total ε a grant may have "
              f"[env SANDBOX_GATEWAY_MAX_EPSILON; the portal's maximum, {MAX_EPSILON:g}].")
@trusted_proxy_option("SANDBOX_GATEWAY_TRUSTED_PROXIES")
def serve(**options: object) -> None:
    """Serve the gateway over HTTP until interrupted."""
    from sandbox.gateway.app import create_app
    from sandbox.gateway.settings import GatewaySettings

    settings = GatewaySettings(**given(options))
    app = create_app(settings)
    click.echo(f"gateway on http://{settings.host}:{settings.port} serving "
               f"{', '.join(sorted(app.state.service.datasets)) or 'no datasets'}; "
               f"service token in {settings.admin_token_file}", err=True)
    serving.serve(app, settings.host, settings.port, settings.trusted_proxies)


@gateway.command()
def openapi() -> None:
    """Print the gateway's OpenAPI description (JSON)."""
    import tempfile

    from sandbox.gateway.app import create_app
    from sandbox.gateway.settings import GatewaySettings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "datasets").mkdir()
        app = create_app(GatewaySettings(database_url=f"sqlite:///{root / 'g.db'}",
                                         datasets_dir=root / "datasets",
                                         state_dir=root / "state"))
        click.echo(json.dumps(app.openapi(), ensure_ascii=False, indent=2))


@gateway.command("verify-receipt")
@click.argument("receipt_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--public-key", "public_key", required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="The gateway's published public key (PEM, from GET /v1/public-key).")
def verify_receipt(receipt_file: Path, public_key: Path) -> None:
    """Check a release receipt offline against the gateway's public key."""
    try:
        receipt = json.loads(receipt_file.read_text(encoding="utf-8"))
        pem = public_key.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{exc.filename} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {receipt_file}: {exc}") from None
    if not isinstance(receipt, dict):
        raise InputError("not a receipt")
    payload = receipts.verify(receipt, pem, receipts.Domain.RECEIPT)
    click.echo(f"valid: release {payload['release']} of project {payload['project']} on "
               f"{payload['dataset']} {payload['dataset_version']}, ε = {payload['epsilon']}, "
               f"δ = {payload['delta']}, released {payload['released_at']}")


@click.group("audit")
def audit_group() -> None:
    """The hash-chained audit log."""


@audit_group.command("verify")
@click.option("--database-url", default="sqlite:///var/gateway/gateway.db", show_default=True,
              help="Database holding the audit log.")
def audit_verify(database_url: str) -> None:
    """Check that no audit entry was edited, deleted or reordered."""
    engine = make_engine(database_url)
    with engine.connect() as conn:
        result = audit.verify(conn)
    if not result.ok:
        click.echo(f"BROKEN after {result.entries} good entries: {result.problem}", err=True)
        raise SystemExit(6)
    click.echo(f"ok: {result.entries} entries, chain intact")


@audit_group.command("prune")
@click.option("--database-url", default="sqlite:///var/gateway/gateway.db", show_default=True,
              help="Database holding the audit log.")
@click.option("--older-than-days", type=int, default=audit.MIN_RETENTION_DAYS,
              show_default=True, help=f"Retention policy in days (at least "
              f"{audit.MIN_RETENTION_DAYS}).")
def audit_prune(database_url: str, older_than_days: int) -> None:
    """Remove audit entries past the retention policy, keeping the chain verifiable (a
    checkpoint, and an entry saying what was removed)."""
    import getpass
    from datetime import UTC, datetime, timedelta

    engine = make_engine(database_url)
    audit.create_tables(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        result = audit.prune(conn, now - timedelta(days=older_than_days),
                             f"cli:{getpass.getuser()}", older_than_days, now)
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
