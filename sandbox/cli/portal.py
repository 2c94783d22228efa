"""``sandboxctl portal …``: serve the portal and manage accounts."""

from __future__ import annotations

import getpass
import threading
import time
from pathlib import Path

import click

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError, NotFound


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
    settings = app.extensions["portal.settings"]
    if settings.term_check_seconds > 0:
        threading.Thread(target=_keep_terms, args=(app, settings.term_check_seconds),
                         daemon=True, name="term-keeper").start()
    click.echo(f"portal on http://{host}:{port}", err=True)
    waitress_serve(app, host=host, port=port, threads=8)


def _keep_terms(app, interval: float) -> None:
    """``portal.periodic.run_once`` every ``interval`` seconds while the portal serves; a
    failure is reported and retried next time."""
    from portal import periodic

    settings = app.extensions["portal.settings"]
    while True:
        time.sleep(interval)
        try:
            with app.extensions["portal.sessions"]() as db:
                done = periodic.run_once(db, settings)
            if done.ended or done.alerts_sent or done.pruned:
                click.echo(f"terms ended {done.ended}; {done.alerts_sent} alert(s) sent; "
                           f"{done.pruned} audit entries pruned", err=True)
        except Exception as exc:  # keep serving; the next round retries
            click.echo(f"periodic check failed: {exc}", err=True)


@portal.command("end-terms")
def end_terms() -> None:
    """Close the projects whose term has passed and destroy their sandboxes (the portal
    does this every minute while it serves)."""
    from portal import projects
    from portal.config import PortalSettings
    from portal.db import connect

    settings = PortalSettings()
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        ended = projects.end_terms(db, settings)
    click.echo(f"ended: {', '.join(map(str, ended)) or 'none'}")


@portal.command("checkpoint")
def checkpoint() -> None:
    """Hand the gateway the portal's signed audit checkpoint and record the gateway's now
    (the serving portal does this every minute)."""
    from portal import anchoring
    from portal.config import PortalSettings
    from portal.db import connect

    settings = PortalSettings()
    engine, _sessions = connect(settings.database_url)
    recorded = anchoring.exchange(settings, engine)
    anchoring.anchors(settings, engine, follow=False).flush()
    click.echo("checkpoints exchanged with the gateway; its checkpoint was "
               f"{'recorded' if recorded else 'recorded before'}")


@portal.command("project")
@click.argument("action", type=click.Choice(["suspend", "resume", "revoke"]))
@click.argument("application_id", type=int)
@click.option("--reason", required=True, help="Recorded in the audit log.")
def project(action: str, application_id: int, reason: str) -> None:
    """Suspend, resume or revoke an active project (controller task): its gateway grant,
    its state and its sandbox change together."""
    from approvals.states import Action, Role
    from portal import projects
    from portal.config import PortalSettings
    from portal.db import connect
    from portal.models import Application

    settings = PortalSettings()
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        application = db.get(Application, application_id)
        if application is None:
            raise NotFound(f"no application {application_id}")
        projects.control(db, settings, application, Action(action), Role.CONTROLLER,
                         f"cli:{getpass.getuser()}", reason)
        click.echo(f"application {application_id}: {application.state}")


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
@click.option("--institution", default="",
              help="A registry entry: its number, or any of its names or aliases (see "
              "`sandboxctl portal institution list`).")
@click.option("--title", default="", help="Professional title (职称), self-declared until an "
              "admin verifies it.")
@click.password_option()
def create_user(email: str, name: str, role: str, institution: str, title: str,
                password: str) -> None:
    """Create an account (every account enrols a TOTP authenticator at its first sign-in)."""
    from sqlalchemy import select

    from portal import institutions
    from portal.config import PortalSettings
    from portal.db import connect
    from portal.models import Institution, Profile, User
    from portal.security import hash_password, password_problem

    problem = password_problem(password)
    if problem:
        raise InputError(f"password: {problem}")
    _engine, sessions = connect(PortalSettings().database_url)
    with sessions() as db:
        if db.scalar(select(User).where(User.email == email.lower())):
            raise InputError(f"an account for {email} already exists")
        entry = None
        if institution.strip():
            entry = (db.get(Institution, int(institution)) if institution.isdigit()
                     else institutions.resolve(db, institution))
            if entry is None:
                raise NotFound(f"no institution {institution!r} in the registry; add it "
                               f"first: sandboxctl portal institution add")
        user = User(email=email.lower(), name=name, role=role,
                    password_hash=hash_password(password),
                    profile=Profile(institution=entry, title=title))
        db.add(user)
        db.flush()
        # Creating accounts is a privileged act: it goes to the audit chain with the rest.
        audit.append(db.connection(), AuditAction.USER_REGISTERED,
                     f"cli:{getpass.getuser()}", f"user:{user.id}", {"role": role})
        db.commit()
        click.echo(f"created {role} {email} (id {user.id})"
                   + (f" at {entry.label}" if entry else ""))


@portal.group()
def institution() -> None:
    """The institution registry that accounts choose from (admin task)."""


@institution.command("add")
@click.option("--zh", "name_zh", required=True, help="Chinese name.")
@click.option("--en", "name_en", required=True, help="English name.")
@click.option("--alias", "aliases", multiple=True,
              help="Another name (traditional characters, abbreviation, former name); "
                   "repeat for several.")
def institution_add(name_zh: str, name_en: str, aliases: tuple[str, ...]) -> None:
    """Add an institution; refused when one of its names is a spelling of an entry's
    (case, width, spaces and punctuation do not count)."""
    from portal import institutions
    from portal.config import PortalSettings
    from portal.db import connect

    _engine, sessions = connect(PortalSettings().database_url)
    with sessions() as db:
        row = institutions.add(db, f"cli:{getpass.getuser()}", name_zh, name_en, aliases)
        click.echo(f"added institution {row.id}: {row.label}")


@institution.command("list")
def institution_list() -> None:
    """Every entry: number, Chinese name, English name, aliases (tab-separated)."""
    from portal import institutions
    from portal.config import PortalSettings
    from portal.db import connect

    _engine, sessions = connect(PortalSettings().database_url)
    with sessions() as db:
        rows = institutions.listing(db)
    for row in rows:
        click.echo("\t".join([str(row.id), row.name_zh, row.name_en, "; ".join(row.aliases)]))
    click.echo(f"{len(rows)} institution(s)", err=True)


@portal.command("consent-withdraw")
@click.option("--pseudonym", "patient", help="The patient's pseudonym (64 hex characters).")
@click.option("--id-number", help="The patient's resident ID number; pseudonymised with "
              "the key in SANDBOX_PORTAL_PSEUDONYM_KEY_FILE and never stored.")
@click.option("--purpose", "purposes", multiple=True,
              help="A purpose withdrawn (repeat); all purposes when omitted.")
def consent_withdraw(patient: str | None, id_number: str | None,
                     purposes: tuple[str, ...]) -> None:
    """Record a patient's withdrawal of consent (controller task) and list the active
    projects whose scope included the patient."""
    from portal import consent
    from portal.config import PortalSettings
    from portal.db import connect

    settings = PortalSettings()
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        report = consent.record_withdrawal(db, settings, f"cli:{getpass.getuser()}",
                                           patient=patient, id_number=id_number,
                                           purposes=list(purposes) or None)
    click.echo(f"withdrawn for patient {report.pseudonym[:12]}…: "
               f"{', '.join(report.purposes) if report.purposes else 'all purposes'}")
    click.echo(f"datasets holding the patient: "
               f"{', '.join(d['id'] for d in report.datasets) or 'none'}")
    for p in report.projects:
        touched = "purpose withdrawn" if p.purpose_withdrawn else "other purpose"
        click.echo(f"  project {p.id} [{p.state}] {p.title} — {p.institution} "
                   f"({p.purpose}; {touched})")
    click.echo(f"{len(report.projects)} active project(s) had the patient in scope")


@portal.command("transparency")
@click.option("--pseudonym", "patient", help="The patient's pseudonym.")
@click.option("--id-number", help="The patient's resident ID number (pseudonymised, never "
              "stored).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the PDF.")
def transparency(patient: str | None, id_number: str | None, out: Path) -> None:
    """Write a patient's (or guardian's) data-use transparency report as a PDF."""
    from portal import consent
    from portal import transparency as report
    from portal.config import PortalSettings
    from portal.db import connect

    if (patient is None) == (id_number is None):
        raise InputError("give either --pseudonym or --id-number")
    settings = PortalSettings()
    subject = patient.strip().lower() if patient else consent.pseudonym_of(settings,
                                                                            id_number)
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        pdf = report.report(db, settings, subject, f"cli:{getpass.getuser()}")
    out.write_bytes(pdf)
    click.echo(f"wrote {out} ({len(pdf):,} bytes)")


@portal.command("blacklist")
@click.argument("action", type=click.Choice(["add", "remove"]))
@click.option("--email", required=True, help="The researcher's account.")
@click.option("--reason", required=True, help="Recorded in the audit log.")
def blacklist(action: str, email: str, reason: str) -> None:
    """Blacklist a researcher (controller task): eligibility fails and their active projects
    are suspended on the gateway; or take them off the list."""
    from sqlalchemy import select

    from portal import blacklist as listing
    from portal.config import PortalSettings
    from portal.db import connect
    from portal.models import User

    settings = PortalSettings()
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        user = db.scalar(select(User).where(User.email == email.lower()))
        if user is None:
            raise NotFound(f"no account {email}")
        actor = f"cli:{getpass.getuser()}"
        if action == "add":
            suspended = listing.confirm(db, settings, user, actor, reason)
            click.echo(f"blacklisted {email}; suspended projects: "
                       f"{', '.join(map(str, suspended)) or 'none'}")
        else:
            listing.lift(db, user, actor, reason)
            click.echo(f"{email} is no longer blacklisted (resume projects one by one)")


@portal.command("overdue-destruction")
def overdue_destruction() -> None:
    """List closed projects whose destruction certificate is overdue: blacklist proposals
    (confirm one with `sandboxctl portal blacklist add`)."""
    from portal import destruction
    from portal.config import PortalSettings
    from portal.db import connect

    _engine, sessions = connect(PortalSettings().database_url)
    with sessions() as db:
        proposals = destruction.overdue(db)
    for p in proposals:
        click.echo(f"project {p.application_id} {p.title} — {p.researcher}, "
                   f"due {p.due_at:%Y-%m-%d}")
    click.echo(f"{len(proposals)} overdue", err=True)
