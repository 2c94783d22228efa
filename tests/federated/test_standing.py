"""The key service's record of the portal's grant state statements (``standing``): which
authorizations it stops, whatever order the statements arrive in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from sandbox import audit
from sandbox.errors import Forbidden, InputError, Unauthenticated
from sandbox.federated import authorization, standing
from sandbox.receipts import Signer

PROJECT = "application-7"
TERMS = dict(datasets=["d"], fields=["f"], purpose="medical_research", epsilon=1.0,
             delta=0.0, expires_at=datetime(2031, 1, 1, tzinfo=UTC))


@pytest.fixture
def portal(tmp_path) -> Signer:
    return Signer(tmp_path / "grant-signing-key.pem")


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    standing.metadata.create_all(engine)
    audit.create_tables(engine)
    return engine


def _authorized(portal: Signer, project: str = PROJECT) -> authorization.Authorization:
    return authorization.read(authorization.issue(portal, project, **TERMS), portal.public_pem)


def _state(portal: Signer, status: str, at: datetime | None = None,
           project: str = PROJECT) -> authorization.GrantState:
    said = authorization.read_state(
        authorization.state_statement(portal, project, status, f"now {status}"),
        portal.public_pem)
    return said if at is None else authorization.GrantState(
        said.project, said.status, at, said.reason, said.document)


def _record(engine, statement: authorization.GrantState) -> bool:
    with engine.begin() as conn:
        return standing.record(conn, statement, "portal")


def _check(engine, granted: authorization.Authorization) -> None:
    with engine.connect() as conn:
        standing.check(conn, granted)


def test_a_revocation_stops_for_good_what_was_issued_before_it(engine, portal):
    before = _authorized(portal)
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert _record(engine, _state(portal, "revoked", later))
    with pytest.raises(Forbidden, match="revoked"):
        _check(engine, before)
    # a later resumption (of a new grant of the project) does not bring it back
    assert _record(engine, _state(portal, "active", later + timedelta(seconds=1)))
    with pytest.raises(Forbidden, match="revoked"):
        _check(engine, before)
    # an authorization issued after the revocation is not stopped by it
    after = authorization.Authorization(**{**before.__dict__,
                                           "issued_at": later + timedelta(seconds=5)})
    _check(engine, after)
    _check(engine, _authorized(portal, "application-8"))  # another project: untouched


def test_the_latest_suspension_or_resumption_holds_whatever_order_they_arrive_in(
        engine, portal):
    granted = _authorized(portal)
    start = datetime.now(UTC) + timedelta(seconds=2)
    suspended, resumed = (_state(portal, "suspended", start),
                          _state(portal, "active", start + timedelta(seconds=1)))
    assert _record(engine, resumed)
    assert not _record(engine, suspended)  # older than what is kept: changes nothing
    _check(engine, granted)
    assert _record(engine, _state(portal, "suspended", start + timedelta(seconds=2)))
    with pytest.raises(Forbidden, match="suspended"):
        _check(engine, granted)


def test_only_the_portals_well_formed_statements_are_read(portal, tmp_path):
    other = Signer(tmp_path / "other.pem")
    with pytest.raises(Unauthenticated):
        authorization.read_state(authorization.state_statement(other, PROJECT, "revoked",
                                                               "x"), portal.public_pem)
    with pytest.raises(Unauthenticated):  # an authorization is not a statement
        authorization.read_state(authorization.issue(portal, PROJECT, **TERMS),
                                 portal.public_pem)
    with pytest.raises(InputError):
        authorization.state_statement(portal, PROJECT, "paused", "x")
    with pytest.raises(InputError):
        authorization.read_state("revoked", portal.public_pem)
