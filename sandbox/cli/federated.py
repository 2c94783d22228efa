"""``sandboxctl site …`` and ``sandboxctl keys …``: the federation's own processes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sandbox import serving
from sandbox.cli.options import given, trusted_proxy_option


@click.group()
def site() -> None:
    """Site nodes: a hospital's partition of a federated dataset."""


@site.command("serve")
@click.option("--site", "site_name", help="This site's name [env SANDBOX_SITE_SITE].")
@click.option("--dataset-dir", type=click.Path(path_type=Path, file_okay=False),
              help="This site's partition [env SANDBOX_SITE_DATASET_DIR].")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Signing key, view, database [env SANDBOX_SITE_STATE_DIR; var/site].")
@click.option("--keys-url", help="The key service [env SANDBOX_SITE_KEYS_URL; "
              "http://127.0.0.1:8720].")
@click.option("--gateway-key", "gateway_key_file",
              type=click.Path(path_type=Path, dir_okay=False),
              help="The gateway's public key (PEM) [env SANDBOX_SITE_GATEWAY_KEY_FILE; "
                   "var/gateway/public-key.pem].")
@click.option("--portal-key", "portal_key_file",
              type=click.Path(path_type=Path, dir_okay=False),
              help="The portal's public grant key (PEM) [env SANDBOX_SITE_PORTAL_KEY_FILE; "
                   "var/portal/grant-public-key.pem].")
@click.option("--host", help="Address [env SANDBOX_SITE_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port [env SANDBOX_SITE_PORT; 8731].")
@trusted_proxy_option("SANDBOX_SITE_TRUSTED_PROXIES")
def site_serve(site_name: str | None, **options: object) -> None:
    """Serve this site's encrypted aggregates to the gateway until interrupted."""
    from sandbox.federated.site import SiteSettings, create_app

    values = given(options)
    if site_name:
        values["site"] = site_name
    settings = SiteSettings(**values)
    app = create_app(settings)
    click.echo(f"site {settings.site} on http://{settings.host}:{settings.port} serving "
               f"{app.state.service.dataset.id}; attestation key: "
               f"{settings.state_dir / 'signing-key.pem'}", err=True)
    serving.serve(app, settings.host, settings.port, settings.trusted_proxies)


@site.command("split")
@click.argument("dataset_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--sites", required=True, help="Comma-separated site names (at least 3).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory for the partitions (one per site) and the public metadata.")
@click.option("--id", "dataset_id", default="", help="The federated dataset's id "
              "[default: the dataset's, with -federated].")
@click.option("--catalog-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Also list it there (the portal's datasets directory).")
def site_split(dataset_dir: Path, sites: str, out: Path, dataset_id: str,
               catalog_dir: Path | None) -> None:
    """Split an onboarded dataset into site partitions, each patient at one site."""
    from sandbox.federated.partition import split

    click.echo(json.dumps(split(dataset_dir, [s.strip() for s in sites.split(",")
                                              if s.strip()], out, dataset_id, catalog_dir),
                          ensure_ascii=False))


@click.group()
def keys() -> None:
    """The key service: holds the CKKS secret key, decrypts noisy totals only."""


def _key_settings(options: dict):
    from sandbox.federated.keys import KeySettings

    return KeySettings(**given(options))


_state = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                      help="Secret context, operator token [env SANDBOX_KEYS_STATE_DIR; "
                           "var/keyservice].")
_database = click.option("--database-url", help="Database [env SANDBOX_KEYS_DATABASE_URL; "
                         "sqlite:///var/keyservice/keys.db].")


@keys.command("serve")
@_state
@_database
@click.option("--gateway-key", "gateway_key_file",
              type=click.Path(path_type=Path, dir_okay=False),
              help="The gateway's public key (PEM) [env SANDBOX_KEYS_GATEWAY_KEY_FILE; "
                   "var/gateway/public-key.pem].")
@click.option("--portal-key", "portal_key_file",
              type=click.Path(path_type=Path, dir_okay=False),
              help="The portal's public grant key (PEM) [env SANDBOX_KEYS_PORTAL_KEY_FILE; "
                   "var/portal/grant-public-key.pem].")
@click.option("--min-sites", type=int, help="Sites a total needs (≥ 3) "
              "[env SANDBOX_KEYS_MIN_SITES; 3].")
@click.option("--host", help="Address [env SANDBOX_KEYS_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port [env SANDBOX_KEYS_PORT; 8720].")
@trusted_proxy_option("SANDBOX_KEYS_TRUSTED_PROXIES")
def keys_serve(**options: object) -> None:
    """Serve the public context and policy-checked decryption until interrupted."""
    from sandbox.federated.keys_app import create_app

    settings = _key_settings(options)
    app = create_app(settings)
    click.echo(f"key service on http://{settings.host}:{settings.port}; operator token in "
               f"{settings.operator_token_file}", err=True)
    serving.serve(app, settings.host, settings.port, settings.trusted_proxies)


@keys.command("register-site")
@click.argument("name")
@click.argument("public_key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_state
@_database
def keys_register_site(name: str, public_key: Path, **options: object) -> None:
    """Trust PUBLIC_KEY (a site's attestation key, PEM) for site NAME."""
    from sandbox.federated.keys import KeyService

    service = KeyService(_key_settings(options))
    click.echo(json.dumps(service.register_site(name, public_key.read_bytes(), "operator")))
    service.anchors.flush()  # witnessed before this command exits
