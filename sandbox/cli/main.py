"""Entry point of ``sandboxctl``. Domain errors become a one-line message and the exit code
of their class; nothing a user runs ends in a stack trace."""

from __future__ import annotations

import os
import sys

import click
from pydantic import ValidationError

from sandbox.cli.audit import audit_group
from sandbox.cli.data import data
from sandbox.cli.demo import demo
from sandbox.cli.federated import keys, site
from sandbox.cli.gateway import gateway
from sandbox.cli.hub import hub, image
from sandbox.cli.portal import portal
from sandbox.errors import SandboxError

UNEXPECTED_EXIT = 70


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="med-sandbox")
def cli() -> None:
    """Privacy-preserving secondary-use data sandbox for medical data."""


cli.add_command(data)
cli.add_command(gateway)
cli.add_command(audit_group)
cli.add_command(portal)
cli.add_command(hub)
cli.add_command(image)
cli.add_command(site)
cli.add_command(keys)
cli.add_command(demo)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, mapping errors to messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="sandboxctl", standalone_mode=False)
    except SandboxError as exc:
        click.echo(f"error: {exc.reason}", err=True)
        sys.exit(exc.exit_code)
    except ValidationError as exc:  # a setting from the environment or an option
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: "
                             f"{str(e['msg']).removeprefix('Value error, ')}"
                             for e in exc.errors())
        click.echo(f"error: invalid setting: {problems}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("SANDBOXCTL_DEBUG"):
            raise
        click.echo(f"unexpected error ({type(exc).__name__}): {exc}\n"
                   "set SANDBOXCTL_DEBUG=1 to see the details", err=True)
        sys.exit(UNEXPECTED_EXIT)
