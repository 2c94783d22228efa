"""Export review: the author cannot review, reviewers are blinded until the round is
complete, one vote each, and the round's votes decide; the state table walks the issue's
path (draft → unconfirmed → submitted → under review → returned → resubmitted → … →
released); what the sandbox sends waits for its author's confirmation."""

from __future__ import annotations

import pytest

from approvals import exports
from approvals.errors import IllegalTransition, InvalidDecision, NotPermitted
from approvals.exports import ExportAction, ExportState, Vote, VoteChoice
from approvals.states import Role

OK = Vote("rev1", VoteChoice.APPROVE, "")
CHANGES = Vote("rev2", VoteChoice.REQUEST_CHANGES, "第3列是个案数据")
REJECT = Vote("rev2", VoteChoice.REJECT, "含身份证号")


def test_the_issue_path():
    path = [(ExportAction.RECEIVE, Role.SYSTEM), (ExportAction.CONFIRM, Role.RESEARCHER),
            (ExportAction.START_REVIEW, Role.SYSTEM),
            (ExportAction.RETURN, Role.SYSTEM), (ExportAction.RESUBMIT, Role.RESEARCHER),
            (ExportAction.START_REVIEW, Role.SYSTEM), (ExportAction.APPROVE, Role.SYSTEM),
            (ExportAction.RELEASE, Role.SYSTEM)]
    state = ExportState.DRAFT
    for action, role in path:
        state = exports.check(state, action, role)
    assert state == ExportState.RELEASED


def test_what_the_sandbox_sends_waits_for_its_author():
    """Received from the sandbox (first round or a corrected bundle): unconfirmed until the
    author confirms; no check or review starts before, and only the author confirms."""
    for start in (ExportState.DRAFT, ExportState.RETURNED):
        state = exports.check(start, ExportAction.RECEIVE, Role.SYSTEM)
        assert state == ExportState.UNCONFIRMED
        for action in (ExportAction.START_REVIEW, ExportAction.RETURN, ExportAction.APPROVE):
            with pytest.raises(IllegalTransition):
                exports.check(state, action, Role.SYSTEM)
        for role in (Role.SYSTEM, Role.CONTROLLER, Role.ADMIN):
            with pytest.raises(NotPermitted):
                exports.check(state, ExportAction.CONFIRM, role)
            assert not exports.can(state, ExportAction.CONFIRM, role)
        assert exports.can(state, ExportAction.CONFIRM, Role.RESEARCHER)
        assert exports.check(state, ExportAction.CONFIRM, Role.RESEARCHER) \
            == ExportState.SUBMITTED
        assert exports.check(state, ExportAction.WITHDRAW, Role.RESEARCHER) \
            == ExportState.WITHDRAWN
    with pytest.raises(NotPermitted):  # the sandbox's bundle is never submitted by itself
        exports.check(ExportState.DRAFT, ExportAction.SUBMIT, Role.SYSTEM)


def test_only_the_researcher_withdraws_and_never_after_approval():
    assert exports.check(ExportState.UNDER_REVIEW, ExportAction.WITHDRAW, Role.RESEARCHER) \
        == ExportState.WITHDRAWN
    with pytest.raises(NotPermitted):
        exports.check(ExportState.UNDER_REVIEW, ExportAction.WITHDRAW, Role.CONTROLLER)
    with pytest.raises(IllegalTransition, match="cannot withdraw an export request that is "
                                                "approved"):
        exports.check(ExportState.APPROVED, ExportAction.WITHDRAW, Role.RESEARCHER)


def test_the_author_cannot_review_their_own_request():
    with pytest.raises(NotPermitted, match="author"):
        exports.check_vote("rev1", "rev1", [], OK, required=2)


def test_one_vote_per_reviewer_per_round_and_none_after_the_round():
    with pytest.raises(InvalidDecision, match="already voted"):
        exports.check_vote("author", "rev1", [OK], Vote("rev1", VoteChoice.REJECT, "x"), 2)
    with pytest.raises(InvalidDecision, match="complete"):
        exports.check_vote("author", "rev3", [OK, CHANGES], Vote("rev3", VoteChoice.APPROVE,
                                                                   ""), 2)
    with pytest.raises(InvalidDecision, match="say what must change"):
        exports.check_vote("author", "rev2", [OK], Vote("rev2", VoteChoice.REJECT, " "), 2)
    exports.check_vote("author", "rev2", [OK], CHANGES, 2)  # a valid second vote


def test_reviewers_are_blinded_until_every_vote_is_in():
    assert exports.visible_votes([OK], "rev2", required=2) == []
    assert exports.visible_votes([OK], "rev1", required=2) == [OK]
    assert exports.visible_votes([OK, CHANGES], "rev1", required=2) == [OK, CHANGES]


@pytest.mark.parametrize(("votes", "required", "decided"), [
    ([OK], 2, None),
    ([OK, Vote("rev2", VoteChoice.APPROVE, "")], 2, ExportAction.APPROVE),
    ([OK, CHANGES], 2, ExportAction.RETURN),
    ([OK, REJECT], 2, ExportAction.REJECT),
    ([CHANGES, REJECT], 2, ExportAction.REJECT),
    ([OK], 1, ExportAction.APPROVE),
])
def test_the_rounds_votes_decide(votes, required, decided):
    assert exports.outcome(votes, required) == decided
