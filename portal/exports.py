"""Export requests in the portal: collected from the gateway (the sandbox's only way out),
checked automatically, then reviewed by independent controllers, blinded to each other until
the round is complete. Rules in ``approvals.exports`` and ``sandbox.exports.checks``.

A bundle that fails an automated check goes straight back to its author with the reasons;
a new bundle from a project with a returned request is its resubmission (a new round).

Researchers send a bundle with ``gw.export`` in the notebook, or from the project page:
the portal lists the files in the running sandbox's workspace and the project's releases,
and records the chosen ones on the gateway for them — the same path, the same checks.

A bundle sent from the sandbox is not checked or reviewed until its author confirms it on
the portal with a fresh code (step-up), as the project page's request form asks: anyone
holding a copy of the researcher's portal cookie reaches the sandbox through the hub's
sign-in, so what comes from there proves nothing about who sent it. The author is mailed
that a request waits for confirmation, and may withdraw it instead.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals import exports as rules
from approvals.exports import ExportAction, ExportState, Vote, VoteChoice
from approvals.states import Role, State
from portal import gateway, notify, sandboxes
from portal.config import PortalSettings
from portal.models import (
    Agreement,
    Application,
    ExportFile,
    ExportRequest,
    ExportVote,
    Sandbox,
    User,
)
from sandbox import audit, receipts
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, InputError, NotFound
from sandbox.exports import bundle as zipped
from sandbox.exports import checks

PROJECT_PREFIX = "application-"
log = logging.getLogger("portal.exports")


def sync(db: Session, settings: PortalSettings, confirmed: str | None = None) -> list[int]:
    """Collect the export requests the gateway recorded since the last one seen; returns
    the requests created or resubmitted. ``confirmed`` names the gateway's id of a bundle
    its author sent from the project page with a fresh code: it goes to the checks at
    once; every other bundle came from the sandbox and waits for its author."""
    last = db.scalar(select(ExportRequest.gateway_created_at)
                     .order_by(ExportRequest.gateway_created_at.desc()).limit(1)) or ""
    db.commit()
    bundles = gateway.list_exports(settings, last)
    public_key = gateway.public_key(settings) if bundles else b""
    touched = []
    for bundle in bundles:
        if db.scalar(select(ExportRequest.id).where(ExportRequest.gateway_id == bundle["id"])):
            continue
        application = _application(db, bundle["project"])
        if application is None:
            log.warning("export %s names project %r, unknown to this portal; skipped",
                        bundle["id"], bundle["project"])
            continue
        touched.append(_take(db, settings, application, bundle, public_key,
                             bundle["id"] == confirmed))
    return touched


def _application(db: Session, project: str) -> Application | None:
    number = project.removeprefix(PROJECT_PREFIX)
    return db.get(Application, int(number)) if project.startswith(PROJECT_PREFIX) \
        and number.isdigit() else None


def _take(db: Session, settings: PortalSettings, application: Application, bundle: dict,
          public_key: bytes, confirmed: bool) -> int:
    returned = db.scalar(select(ExportRequest).where(
        ExportRequest.application_id == application.id,
        ExportRequest.state == ExportState.RETURNED).order_by(ExportRequest.id.desc()))
    files = []
    for item in bundle["files"]:
        content = base64.b64decode(item["content"])
        digest = hashlib.sha256(content).hexdigest()
        if digest != item["sha256"]:  # what the gateway recorded is what is reviewed
            raise InputError(f"export {bundle['id']}: {item['name']} does not match the "
                             "digest the gateway recorded")
        files.append(ExportFile(name=item["name"], content=content, sha256=digest))
    # From the project page: submitted by its author; from the sandbox: only received.
    action, role = (ExportAction.SUBMIT, Role.RESEARCHER) if confirmed \
        else (ExportAction.RECEIVE, Role.SYSTEM)
    if returned is not None:  # the author's corrected bundle: a new round
        request = returned
        request.state = rules.check(ExportState(request.state), ExportAction.RESUBMIT
                                    if confirmed else action, role)
        request.round += 1
        request.files = files
        request.gateway_id, request.gateway_created_at = bundle["id"], bundle["created_at"]
    else:
        request = ExportRequest(application_id=application.id, gateway_id=bundle["id"],
                                gateway_created_at=bundle["created_at"], round=1,
                                state=rules.check(ExportState.DRAFT, action, role),
                                files=files)
        db.add(request)
    request.note, request.receipts = bundle.get("note", ""), bundle["receipts"]
    request.submitted_at = datetime.now(UTC)
    if confirmed:
        _check(db, settings, request, application, public_key)
        return request.id
    request.checks, request.verdict = [], ""  # an earlier round's checks say nothing of it
    db.flush()
    audit.append(db.connection(), AuditAction.EXPORT_AWAITING_CONFIRMATION,
                 "system:export-collection", f"export:{request.id}",
                 {"application": application.id, "round": request.round,
                  "files": [f.name for f in files]})
    db.commit()
    _mail(settings, application, "导出申请待您确认：请在项目页输入新验证码确认或撤回 / an export "
          "request sent from your sandbox waits for your confirmation with a fresh code on "
          "the project page (or withdraw it)")
    return request.id


def _check(db: Session, settings: PortalSettings, request: ExportRequest,
           application: Application, public_key: bytes) -> None:
    """The automated checks of a submitted request: back to its author on a failure, to
    the reviewers otherwise."""
    found = checks.check_bundle([checks.ExportFile(f.name, f.content) for f in request.files],
                                request.receipts, f"{PROJECT_PREFIX}{application.id}",
                                public_key)
    request.checks = [{"check": c.check, "outcome": str(c.outcome), "reason": c.reason,
                       "file": c.file} for c in found]
    request.verdict = str(checks.verdict(found))
    next_action = ExportAction.RETURN if request.verdict == checks.Outcome.FAIL \
        else ExportAction.START_REVIEW
    request.state = rules.check(ExportState(request.state), next_action, Role.SYSTEM)
    db.flush()
    audit.append(db.connection(), AuditAction.EXPORT_CHECKED, "system:export-checks",
                 f"export:{request.id}", {"application": application.id,
                                          "round": request.round, "verdict": request.verdict,
                                          "files": [f.name for f in request.files]})
    db.commit()
    if next_action == ExportAction.RETURN:
        _mail(settings, application, "导出申请未通过自动检查 / export request failed the "
              "automated checks")


def confirm(db: Session, settings: PortalSettings, request: ExportRequest,
            researcher: User) -> ExportState:
    """The author confirms a request sent from the sandbox — the caller has taken a fresh
    code from them (step-up) — and the automated checks run now; returns the state they
    lead to (under review, or returned)."""
    application = db.get(Application, request.application_id)
    if application.researcher_id != researcher.id:
        raise NotFound("no such export request")
    rules.check(ExportState(request.state), ExportAction.CONFIRM, Role.RESEARCHER)
    db.commit()  # no transaction open while the gateway is asked
    public_key = gateway.public_key(settings)
    request.state = rules.check(ExportState(request.state), ExportAction.CONFIRM,
                                Role.RESEARCHER)
    audit.append(db.connection(), AuditAction.EXPORT_CONFIRMED, f"user:{researcher.id}",
                 f"export:{request.id}", {"round": request.round,
                                          "files": [f.name for f in request.files]})
    _check(db, settings, request, application, public_key)
    return ExportState(request.state)


@dataclass(frozen=True)
class Choices:
    """What a researcher may put in an export request from the project page."""

    files: list[dict]     # the sandbox workspace's files: path, size, last_modified
    releases: list[dict]  # the project's releases that carry a receipt, oldest first


def _source(db: Session, application: Application, researcher: User
            ) -> tuple[Sandbox, str]:
    """The project's sandbox and grant, if its researcher may export from them now."""
    if application.researcher_id != researcher.id:
        raise NotFound("no such project")
    record, agreement = db.get(Sandbox, application.id), db.get(Agreement, application.id)
    if State(application.state) != State.ACTIVE or record is None or agreement is None \
            or not agreement.grant_id:
        raise Forbidden("exports are requested from an active project's sandbox",
                        zh="只能从有效项目的沙箱申请导出")
    db.commit()  # no transaction open while the hub and the gateway are asked
    return record, agreement.grant_id


def choices(db: Session, settings: PortalSettings, application: Application,
            researcher: User) -> Choices:
    record, grant_id = _source(db, application, researcher)
    client = sandboxes.hub(settings)
    try:
        files = list(client.files(record.hub_user, record.server))
    finally:
        client.close()
    return Choices(files, [r for r in gateway.releases(settings, grant_id) if r["receipt"]])


def request_from_sandbox(db: Session, settings: PortalSettings, application: Application,
                         researcher: User, paths: list[str], release_ids: list[str],
                         note: str) -> int | None:
    """Record an export request of the chosen workspace files and releases, as if sent
    with ``gw.export`` from the sandbox; returns the portal's request id."""
    record, grant_id = _source(db, application, researcher)
    paths = list(dict.fromkeys(p.strip() for p in paths if p.strip()))
    if not paths:
        raise InputError("choose at least one file from the sandbox",
                         zh="请至少从沙箱中选择一个文件")
    for path in paths:
        if path.startswith("/") or any(part in ("", ".", "..") or part.startswith(".")
                                       for part in path.split("/")):
            raise InputError(f"{path!r} is not a workspace file",
                             zh=f"{path!r} 不是工作区中的文件")
    names = [posixpath.basename(p) for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"two chosen files share a name ({', '.join(twice)}); rename one "
                         "in the sandbox", zh=f"所选文件重名（{'、'.join(twice)}），请在沙箱中改名")
    released = {r["release"]: r["receipt"]
                for r in gateway.releases(settings, grant_id) if r["receipt"]}
    unknown = [r for r in release_ids if r not in released]
    if unknown:
        raise InputError(f"not a release of this project: {', '.join(unknown)}",
                         zh=f"不是本项目的发布结果：{'、'.join(unknown)}")
    client = sandboxes.hub(settings)
    try:
        payload = [{"name": name, "content": base64.b64encode(
                        client.read(record.hub_user, record.server, path)).decode()}
                   for name, path in zip(names, paths, strict=True)]
    finally:
        client.close()
    answer = gateway.submit_export(settings, grant_id, payload,
                                   [released[r] for r in release_ids], note.strip())
    audit.append(db.connection(), AuditAction.EXPORT_SUBMITTED, f"user:{researcher.id}",
                 f"application:{application.id}",
                 {"gateway_export": answer["export"], "files": paths,
                  "releases": release_ids})
    db.commit()
    sync(db, settings, confirmed=answer["export"])
    request = db.scalar(select(ExportRequest).where(
        ExportRequest.gateway_id == answer["export"]))
    if request is not None and request.state == ExportState.UNCONFIRMED:
        # the minute's collection took it first, as if from the sandbox: the code typed
        # on the request form is its confirmation
        confirm(db, settings, request, researcher)
    return request.id if request is not None else None


def vote(db: Session, settings: PortalSettings, request: ExportRequest, reviewer: User,
         choice: VoteChoice, comment: str) -> ExportState:
    """A controller's vote in the current round; when the round is complete its outcome
    moves the request (approved, returned to the author, or rejected)."""
    if reviewer.role != Role.CONTROLLER:
        raise NotFound("no such export request")
    if ExportState(request.state) != ExportState.UNDER_REVIEW:
        raise InputError("this export request is not under review")
    application = db.get(Application, request.application_id)
    cast = round_votes(db, request)
    new = Vote(f"user:{reviewer.id}", VoteChoice(choice), comment.strip())
    rules.check_vote(f"user:{application.researcher_id}", new.reviewer, cast, new,
                     settings.export_reviewers)
    db.add(ExportVote(request_id=request.id, round=request.round, reviewer_id=reviewer.id,
                      choice=str(new.choice), comment=new.comment))
    audit.append(db.connection(), AuditAction.EXPORT_VOTED, f"user:{reviewer.id}",
                 f"export:{request.id}", {"round": request.round, "choice": str(new.choice)})
    decided = rules.outcome([*cast, new], settings.export_reviewers)
    if decided is not None:
        request.state = rules.check(ExportState(request.state), decided, Role.SYSTEM)
        audit.append(db.connection(), AuditAction.EXPORT_DECIDED, "system:export-review",
                     f"export:{request.id}", {"round": request.round, "state": request.state})
    db.commit()
    if decided is not None:
        _mail(settings, application, {
            ExportAction.APPROVE: "导出申请已批准 / export request approved",
            ExportAction.RETURN: "导出申请需要修改 / changes requested on your export",
            ExportAction.REJECT: "导出申请被拒绝 / export request rejected"}[decided])
    return ExportState(request.state)


def signer(settings: PortalSettings) -> receipts.Signer:
    """The portal's key for released bundles (created on first use, owner-only)."""
    return receipts.Signer(settings.state_dir / "export-signing-key.pem")


def release(db: Session, settings: PortalSettings, request: ExportRequest,
            actor: str) -> bytes:
    """Release an approved request: the signed, watermarked zip with its provenance
    manifest, stored and audited; returns the zip."""
    request.state = rules.check(ExportState(request.state), ExportAction.RELEASE, Role.SYSTEM)
    application = db.get(Application, request.application_id)
    payloads = [r["payload"] for r in request.receipts]
    reviewers = [{"reviewer": v.reviewer_id, "choice": v.choice, "round": v.round,
                  "at": v.at.isoformat(timespec="seconds")}
                 for v in db.scalars(select(ExportVote).where(
                     ExportVote.request_id == request.id).order_by(ExportVote.id))]
    datasets = sorted({(p["dataset"], p.get("dataset_version", "")) for p in payloads})
    manifest = {
        "export": request.id, "project": f"{PROJECT_PREFIX}{application.id}",
        "title": application.title, "purpose": application.purpose,
        "datasets": [{"id": d, "version": v} for d, v in datasets],
        "receipts": request.receipts,
        "epsilon_spent": round(sum(p.get("epsilon", 0.0) for p in payloads), 12),
        "submitted_at": request.submitted_at.isoformat(timespec="seconds"),
        "rounds": request.round, "reviewers": reviewers, "checks": request.checks,
    }
    now = datetime.now(UTC)
    request.bundle = zipped.build([(f.name, f.content) for f in request.files], manifest,
                                  signer(settings), now)
    request.released_at = now
    audit.append(db.connection(), AuditAction.EXPORT_RELEASED, actor, f"export:{request.id}",
                 {"sha256": hashlib.sha256(request.bundle).hexdigest(),
                  "epsilon_spent": manifest["epsilon_spent"]})
    db.commit()
    _mail(settings, application, "导出文件已发布 / export released")
    return request.bundle


def download(db: Session, settings: PortalSettings, request: ExportRequest,
             account: User) -> bytes:
    """The released bundle as ``account`` downloads it now: every file watermarked with the
    account and the time, the manifest naming them and signed anew; audited with the
    copy's digest, so a copy found elsewhere leads back to its download."""
    if request.bundle is None:
        raise NotFound("this export request has not been released",
                       zh="该导出申请尚未发布")
    key = signer(settings)
    released = zipped.verify(request.bundle, key.public_pem)  # the record of the release
    files = [(f.name, f.content) for f in request.files]
    # what is marked is what was reviewed and released, not what the database holds now
    zipped.check_reviewed(released, files)
    now = datetime.now(UTC).replace(microsecond=0)
    marked = zipped.build(files, released, key,
                          request.released_at or now,
                          zipped.Download(account.email, account.id, now))
    audit.append(db.connection(), AuditAction.EXPORT_DOWNLOADED, f"user:{account.id}",
                 f"export:{request.id}", {"sha256": hashlib.sha256(marked).hexdigest(),
                                          "at": now.isoformat(timespec="seconds")})
    db.commit()
    return marked


def withdraw(db: Session, request: ExportRequest, researcher: User) -> None:
    """The author takes the request back (before it is approved)."""
    application = db.get(Application, request.application_id)
    if application.researcher_id != researcher.id:
        raise NotFound("no such export request")
    request.state = rules.check(ExportState(request.state), ExportAction.WITHDRAW,
                                Role.RESEARCHER)
    audit.append(db.connection(), AuditAction.EXPORT_WITHDRAWN, f"user:{researcher.id}",
                 f"export:{request.id}", {"round": request.round})
    db.commit()


def round_votes(db: Session, request: ExportRequest) -> list[Vote]:
    return [Vote(f"user:{v.reviewer_id}", VoteChoice(v.choice), v.comment)
            for v in db.scalars(select(ExportVote).where(
                ExportVote.request_id == request.id, ExportVote.round == request.round)
                .order_by(ExportVote.id))]


def visible_votes(db: Session, settings: PortalSettings, request: ExportRequest,
                  viewer: User) -> list[Vote]:
    """What ``viewer`` may see of the current round (blinding)."""
    return rules.visible_votes(round_votes(db, request), f"user:{viewer.id}",
                               settings.export_reviewers)


def earlier(db: Session, request: ExportRequest) -> list[ExportRequest]:
    """The project's earlier approved or released exports, for spotting differencing."""
    return list(db.scalars(select(ExportRequest).where(
        ExportRequest.application_id == request.application_id,
        ExportRequest.id != request.id,
        ExportRequest.state.in_([ExportState.APPROVED, ExportState.RELEASED]))
        .order_by(ExportRequest.id)))


def _mail(settings: PortalSettings, application: Application, what: str) -> None:
    notify.about_application(settings, [application.researcher.email], application.id,
                             application.title, what)
