"""The export-request workflow — one state table — and the rules of its human review, in the
style of output checking: independent reviewers (two by default, configurable down to one),
blinded to each other until all have voted; the author never reviews their own request.

A round of review ends when the required number of reviewers have voted: any *reject*
rejects, otherwise any *request changes* returns the request to its author, otherwise it
is approved. A resubmission starts a new round with fresh votes.

A bundle sent from inside the sandbox (``gw.export``) is only *received*: whoever reaches
the sandbox — a copied portal cookie opens it through the hub's sign-in — can send one, so
it waits, unconfirmed, until its author confirms it on the portal with a fresh code; only
then do the automated checks and the review start. A request made on the portal's project
page carries that code already and is submitted at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from approvals.errors import InvalidDecision, NotPermitted
from approvals.states import Role, move


class ExportState(StrEnum):
    DRAFT = "draft"
    UNCONFIRMED = "unconfirmed"  # sent from the sandbox; waits for its author's fresh code
    SUBMITTED = "submitted"
    UNDER_REVIEW = "under_review"
    RETURNED = "returned"
    RESUBMITTED = "resubmitted"
    APPROVED = "approved"
    RELEASED = "released"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class ExportAction(StrEnum):
    RECEIVE = "receive"
    CONFIRM = "confirm"
    SUBMIT = "submit"
    START_REVIEW = "start_review"
    RETURN = "return"
    RESUBMIT = "resubmit"
    APPROVE = "approve"
    REJECT = "reject"
    RELEASE = "release"
    WITHDRAW = "withdraw"


S, A = ExportState, ExportAction
RESEARCHER, SYSTEM = frozenset({Role.RESEARCHER}), frozenset({Role.SYSTEM})

# (state, action) → (next state, roles that may take it). The system receives what the
# sandbox sends, moves a request on after the automated checks and when a round of votes
# is complete; the author alone submits (with a fresh code on the project page) or confirms
# (with a fresh code) what the sandbox sent.
TRANSITIONS: dict[tuple[ExportState, ExportAction], tuple[ExportState, frozenset[Role]]] = {
    (S.DRAFT, A.RECEIVE): (S.UNCONFIRMED, SYSTEM),
    (S.RETURNED, A.RECEIVE): (S.UNCONFIRMED, SYSTEM),  # a corrected bundle, from the sandbox
    (S.UNCONFIRMED, A.CONFIRM): (S.SUBMITTED, RESEARCHER),
    (S.DRAFT, A.SUBMIT): (S.SUBMITTED, RESEARCHER),
    (S.SUBMITTED, A.START_REVIEW): (S.UNDER_REVIEW, SYSTEM),
    (S.SUBMITTED, A.RETURN): (S.RETURNED, SYSTEM),  # an automated check failed
    (S.UNDER_REVIEW, A.RETURN): (S.RETURNED, SYSTEM),
    (S.RETURNED, A.RESUBMIT): (S.RESUBMITTED, RESEARCHER),
    (S.RESUBMITTED, A.START_REVIEW): (S.UNDER_REVIEW, SYSTEM),
    (S.RESUBMITTED, A.RETURN): (S.RETURNED, SYSTEM),
    (S.UNDER_REVIEW, A.APPROVE): (S.APPROVED, SYSTEM),
    (S.UNDER_REVIEW, A.REJECT): (S.REJECTED, SYSTEM),
    (S.APPROVED, A.RELEASE): (S.RELEASED, SYSTEM),
    **{(state, A.WITHDRAW): (S.WITHDRAWN, RESEARCHER)
       for state in (S.DRAFT, S.UNCONFIRMED, S.SUBMITTED, S.UNDER_REVIEW, S.RETURNED,
                     S.RESUBMITTED)},
}
TERMINAL = frozenset({S.RELEASED, S.REJECTED, S.WITHDRAWN})


def check(state: ExportState, action: ExportAction, role: Role) -> ExportState:
    """The state ``action`` leads to; raises with a readable reason otherwise."""
    return move(TRANSITIONS, ExportState(state), ExportAction(action), role,
                "an export request")


def can(state: ExportState, action: ExportAction, role: Role) -> bool:
    """For templates: whether ``role`` may take ``action`` now."""
    found = TRANSITIONS.get((ExportState(state), ExportAction(action)))
    return found is not None and role in found[1]


class VoteChoice(StrEnum):
    APPROVE = "approve"
    REQUEST_CHANGES = "request_changes"
    REJECT = "reject"


@dataclass(frozen=True)
class Vote:
    reviewer: str
    choice: VoteChoice
    comment: str


def check_vote(author: str, reviewer: str, votes: Iterable[Vote], vote: Vote,
               required: int) -> None:
    """Refuse a vote by the author, a second vote in the same round, a vote once the round
    is complete, and a non-approval without a comment."""
    if required < 1:
        raise InvalidDecision("at least one reviewer must vote")
    if reviewer == author:
        raise NotPermitted("the author of an export request cannot review it")
    cast = list(votes)
    if any(v.reviewer == reviewer for v in cast):
        raise InvalidDecision("you have already voted in this round")
    if len(cast) >= required:
        raise InvalidDecision("this round of review is complete")
    if vote.choice != VoteChoice.APPROVE and not vote.comment.strip():
        raise InvalidDecision("say what must change, or why it may not leave")


def outcome(votes: Iterable[Vote], required: int) -> ExportAction | None:
    """What a round's votes decide, or None while votes are missing."""
    cast = list(votes)
    if len(cast) < required:
        return None
    choices = {v.choice for v in cast}
    if VoteChoice.REJECT in choices:
        return ExportAction.REJECT
    if VoteChoice.REQUEST_CHANGES in choices:
        return ExportAction.RETURN
    return ExportAction.APPROVE


def visible_votes(votes: Iterable[Vote], viewer: str, required: int) -> list[Vote]:
    """Blinding: a reviewer sees only their own vote until every required vote is in;
    after that, and for everyone else (author, controllers), all votes of the round."""
    cast = list(votes)
    if len(cast) >= required:
        return cast
    return [v for v in cast if v.reviewer == viewer]
