"""``sandboxctl gateway …``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sandbox import receipts, serving
from sandbox.cli.options import given, trusted_proxy_option
from sandbox.errors import InputError
from sandbox.limits import MAX_EPSILON

STATEMENT_RETRY_SECONDS = 3  # how often the portal's statements are relayed again


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
@click.option("--portal-key", "portal_key_file",
              type=click.Path(path_type=Path, dir_okay=False),
              help="The portal's public grant key (PEM), which grants on federated "
                   "datasets are signed with [env SANDBOX_GATEWAY_PORTAL_KEY_FILE; "
                   "var/portal/grant-public-key.pem].")
@click.option("--max-epsilon", type=float, help="Largest total ε a grant may have "
              f"[env SANDBOX_GATEWAY_MAX_EPSILON; the portal's maximum, {MAX_EPSILON:g}].")
@click.option("--engine", type=click.Choice(["polars", "spark"]),
              help="What reads the rows [env SANDBOX_GATEWAY_ENGINE; polars].")
@click.option("--spark-remote", help="The Spark Connect server for --engine spark "
              "[env SANDBOX_GATEWAY_SPARK_REMOTE; sc://127.0.0.1:15002].")
@click.option("--views-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the bounded views live [env SANDBOX_GATEWAY_VIEWS_DIR; "
                   "STATE_DIR/views].")
@trusted_proxy_option("SANDBOX_GATEWAY_TRUSTED_PROXIES")
def serve(**options: object) -> None:
    """Serve the gateway over HTTP until interrupted."""
    from sandbox.anchors import start_rounds
    from sandbox.gateway.app import create_app
    from sandbox.gateway.settings import GatewaySettings

    settings = GatewaySettings(**given(options))
    app = create_app(settings)
    start_rounds(app.state.audit_round, settings.audit_checkpoint_seconds)
    if app.state.service.federation.keys_url:  # (no key service, no statements kept)
        # the portal's statements the key service could not take yet, until it has them all
        start_rounds(app.state.service.tell_keys, STATEMENT_RETRY_SECONDS, "grant-statements")
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
