"""``sandboxctl hub …`` (the sandbox hub) and ``sandboxctl image …`` (the sandbox image)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click

from sandbox.errors import InputError, Unavailable

CONFIG = Path(__file__).resolve().parents[1] / "hub" / "jupyterhub_config.py"


@click.group()
def hub() -> None:
    """The sandbox hub: JupyterHub with sealed Docker sandboxes."""


@hub.command()
@click.option("--port", type=int, help="Public port [env SANDBOX_HUB_PORT; 8000].")
@click.option("--docker-host", help="Docker engine [env SANDBOX_HUB_DOCKER_HOST].")
@click.option("--portal-url", help="Portal URL [env SANDBOX_HUB_PORTAL_URL].")
def serve(**options: object) -> None:
    """Serve the hub until interrupted (installs the sandbox firewall while it runs)."""
    from sandbox.hub import network
    from sandbox.hub.settings import HubSettings

    for key, value in options.items():
        if value is not None:
            os.environ[f"SANDBOX_HUB_{key.upper()}"] = str(value)
    settings = HubSettings()
    proxy = settings.proxy_command or "var/node/node_modules/.bin/configurable-http-proxy"
    if shutil.which(proxy) is None:
        raise Unavailable(f"configurable-http-proxy not found at {proxy} "
                          "(infra/scripts/ensure-proxy.sh installs it)")
    if settings.firewall:
        if os.geteuid() != 0:
            raise Unavailable("the sandbox firewall needs root (or SANDBOX_HUB_FIREWALL=0 "
                              "where another firewall closes sandbox bridges)")
        network.install_firewall([settings.api_port, settings.gateway_port])
    process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)])

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = process.wait()
    finally:
        if settings.firewall:
            network.remove_firewall()
    sys.exit(code)


@click.group()
def image() -> None:
    """The sandbox image (Jupyter, pandas, polars, matplotlib, client, dummy data)."""


@image.command()
@click.option("--docker-host", envvar=["SANDBOX_DOCKER_HOST", "DOCKER_HOST"],
              default="unix://var/docker/docker.sock", show_default=True)
@click.option("--datasets-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("var/datasets"), show_default=True,
              help="Catalog datasets whose dummy data goes into the image.")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("var/image"), show_default=True,
              help="Wheels and build context (kept for cached rebuilds).")
@click.option("--base", help="Base image from a registry (e.g. python:3.11-slim) instead "
              "of a local debootstrap.")
@click.option("--tag", default="med-sandbox:latest", show_default=True)
def build(docker_host: str, datasets_dir: Path, work_dir: Path, base: str | None,
          tag: str) -> None:
    """Build the sandbox image offline, printing progress."""
    from sandbox.hub import image as image_build

    if not datasets_dir.is_dir():
        raise InputError(f"{datasets_dir} is not a directory of onboarded datasets")
    client = image_build.connect(docker_host)
    result = image_build.build(client, work_dir, datasets_dir, base=base, tag=tag,
                               progress=lambda line: click.echo(line, err=True))
    click.echo(f"{result.image} {result.image_id} {result.size_mb} MB "
               + " ".join(f"{k}={v}" for k, v in result.steps.items()))
