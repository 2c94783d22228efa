"""``sandboxctl demo …``: the demo accounts and project ``make run`` seeds, and the TOTP
codes a newcomer signs in with (rules in ``portal.demo``)."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from portal.config import PortalSettings
    from portal.demo import Account, Seeded
    from sandbox.hub.client import ServerStatus

VAR_OPTION = click.option(
    "--var", "var_dir", type=click.Path(file_okay=False, path_type=Path), default="var",
    envvar="SANDBOX_DEMO_VAR", show_default=True,
    help="The stack's state directory; the accounts are kept in VAR/demo/accounts.json "
         "(env SANDBOX_DEMO_VAR).")


@click.group()
def demo() -> None:
    """The demo of `make run`: accounts for every role and an approved project."""


@demo.command()
@click.option("--demo", "demo_mode", is_flag=True, envvar="SANDBOX_DEMO",
              help="Confirm this is a demo (env SANDBOX_DEMO=1, which `make run` sets); "
                   "refused otherwise.")
@VAR_OPTION
def seed(demo_mode: bool, var_dir: Path) -> None:
    """Create (once) one account per role with TOTP enrolled and a demo project on
    emr-visits approved through the whole workflow, then print the accounts. Refused
    outside demo mode and in a portal database with anyone else's account."""
    from portal import demo as demo_data

    demo_data.check_demo_mode(demo_mode)  # before anything is opened or written

    from portal.config import PortalSettings
    from portal.db import connect

    # `make run` serves no mail server: the workflow's notes would only add warnings here.
    logging.getLogger("portal.notify").setLevel(logging.ERROR)
    settings = PortalSettings()
    actor = f"cli:{getpass.getuser()}"
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        seeded = demo_data.seed(db, settings, var_dir / demo_data.ACCOUNTS_FILE, actor)
    click.echo(_table(seeded.accounts))
    click.echo(f"(kept in {var_dir / demo_data.ACCOUNTS_FILE}, readable only by you)")
    status, problem = None, ""
    try:
        with sessions() as db:
            status = demo_data.sandbox(db, settings, seeded.project, actor)
    except SandboxError as exc:
        problem = exc.reason
    click.echo(_first_ten_minutes(settings, seeded, status, problem, var_dir))


@demo.command()
@click.argument("role")
@VAR_OPTION
def totp(role: str, var_dir: Path) -> None:
    """Print the current TOTP code of the demo account ROLE (researcher, expert1, expert2,
    expert3, chair, controller, controller2 or admin)."""
    from portal import demo as demo_data

    accounts = demo_data.read_accounts(var_dir / demo_data.ACCOUNTS_FILE)
    click.echo(demo_data.account(accounts, role).code())


def _first_ten_minutes(settings: PortalSettings, seeded: Seeded,
                       status: ServerStatus | None, problem: str, var_dir: Path) -> str:
    """What to do next, for the newcomer reading `make run`'s output."""
    from portal import demo as demo_data

    researcher = demo_data.account(seeded.accounts, "researcher")
    page = f"{settings.public_url.rstrip('/')}/applications/{seeded.project}"
    if status is not None and status.ready:
        sandbox = [f'press "Open sandbox" (打开沙箱): JupyterLab opens at {status.url}lab']
    elif settings.hub_url:
        sandbox = ['press "Start sandbox" (启动沙箱), then "Open sandbox" (打开沙箱)',
                   f"(the sandbox is not ready yet{': ' + problem if problem else ''})"]
    else:
        sandbox = ["(sandboxes need root on Linux: this stack runs none)"]
    code = f"{_ctl()} demo totp researcher" + ("" if var_dir == Path("var")
                                                  else f" --var {var_dir}")
    rule = "─" * 66
    return "\n".join([
        "", f"── first ten minutes {rule[21:]}",
        f"1. Open {settings.public_url} and sign in as the researcher:",
        f"     e-mail    {researcher.email}",
        f"     password  {researcher.password}",
        f"2. Asked for a code, run: {code}",
        f"   (or add the TOTP secret {researcher.totp_secret} to an authenticator app)",
        f'3. Under My applications (我的申请), the approved project "{demo_data.TITLE}":',
        f"     {page}",
        *(f"   {line}" for line in sandbox),
        "4. In JupyterLab, in getting-started.ipynb or a new console, run:",
        "     from sandbox.client import Gateway",
        "     gw = Gateway.from_env()",
        '     gw.count("emr-visits", epsilon=0.1)',
        rule])


def _table(accounts: list[Account]) -> str:
    rows = [("role", "e-mail", "password", "TOTP secret")]
    rows += [(a.key, a.email, a.password, a.totp_secret) for a in accounts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _ctl() -> str:
    """How this shell reaches ``sandboxctl``: by name when it is on PATH, else its path."""
    invoked = Path(sys.argv[0])
    found = shutil.which("sandboxctl")
    if found and Path(found).resolve() == invoked.resolve():
        return "sandboxctl"
    try:
        return os.path.relpath(invoked)
    except ValueError:
        return str(invoked)
