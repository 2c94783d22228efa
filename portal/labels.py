"""Readable, translated names for the codes the workflow stores (states, verdicts,
recommendations, purposes), for templates: ``{{ app.state|label }}``."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

from portal import i18n
from sandbox.purposes import PURPOSES

NAMES = {
    "draft": _l("Draft"),
    "submitted": _l("Submitted"),
    "ineligible": _l("Ineligible"),
    "under_review": _l("Under review"),
    "revision_requested": _l("Revision requested"),
    "approved": _l("Approved"),
    "rejected": _l("Rejected"),
    "active": _l("Active"),
    "suspended": _l("Suspended"),
    "closing": _l("Closing"),
    "closed": _l("Closed"),
    "approve": _l("Approve"),
    "revise": _l("Request revision"),
    "reject": _l("Reject"),
    "pending": _l("Pending (quorum not reached)"),
    "requested": _l("Requested"),
    "starting": _l("Starting"),
    "ready": _l("Ready"),
    "stopped": _l("Stopped"),
    "failed": _l("Could not start"),
    "destroyed": _l("Destroyed"),
    "unknown": _l("Hub not reachable"),
    "open": _l("Open"),
    "pass": _l("Pass"),
    "review": _l("Needs review"),
    "fail": _l("Fail"),
    "returned": _l("Returned"),
    "resubmitted": _l("Resubmitted"),
    "released": _l("Released"),
    "withdrawn": _l("Withdrawn"),
    "unconfirmed": _l("Awaiting the author's confirmation"),
    "request_changes": _l("Request changes"),
    "verified": _l("Verified"),
    "suspend": _l("Suspend"),
    "resume": _l("Resume"),
    "revoke": _l("Revoke"),
}
PURPOSE_NAMES = {p.id: (p.zh, p.en) for p in PURPOSES}


def label(code: str | None) -> str:
    if code is None:
        return ""
    if code in PURPOSE_NAMES:
        zh, en = PURPOSE_NAMES[code]
        return zh if i18n.current_language() == "zh" else en
    return str(NAMES.get(code, code))
