"""``sandboxctl portal …``: serve the portal and manage accounts."""

from __future__ import annotations

import getpass

import click

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError


@click.group()
def portal() -> None:
    """The research portal (control plane)."""


@portal.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8600, show_default=True)
def serve(host: str, port: int) -> None:
    """Serve the portal (settings from SANDBOX_PORTAL_* variables)."""
    from waitress import serve as waitress_serve

    from portal import create_app

    app = create_app()
    click.echo(f"portal on http://{host}:{port}", err=True)
    waitress_serve(app, host=host, port=port, threads=8)


@portal.command()
def openapi() -> None:
    """Print the portal API's OpenAPI description (JSON)."""
    import json

    from portal.openapi import document

    click.echo(json.dumps(document(), ensure_ascii=False, indent=2))


@portal.command("create-user")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", required=True,
              type=click.Choice(["researcher", "expert", "chair", "controller", "admin"]))
@click.option("--institution", default="")
@click.option("--title", default="", help="Professional title (职称).")
@click.password_option()
def create_user(email: str, name: str, role: str, institution: str, title: str,
                password: str) -> None:
    """Create an account (experts, chair, controllers and admins enrol TOTP at first login)."""
    from sqlalchemy import select

    from portal.config import PortalSettings
    from portal.db import connect
    from portal.models import Profile, User
    from portal.security import hash_password, password_problem

    problem = password_problem(password)
    if problem:
        raise InputError(f"password: {problem}")
    _engine, sessions = connect(PortalSettings().database_url)
    with sessions() as db:
        if db.scalar(select(User).where(User.email == email.lower())):
            raise InputError(f"an account for {email} already exists")
        user = User(email=email.lower(), name=name, role=role,
                    password_hash=hash_password(password),
                    profile=Profile(institution=institution, title=title))
        db.add(user)
        db.flush()
        # Creating accounts is a privileged act: it goes to the audit chain with the rest.
        audit.append(db.connection(), AuditAction.USER_REGISTERED,
                     f"cli:{getpass.getuser()}", f"user:{user.id}", {"role": role})
        db.commit()
        click.echo(f"created {role} {email} (id {user.id})")
