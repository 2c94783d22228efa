"""ε and δ are kept in exact integer units (micro-ε, 10⁻¹⁸ δ) by the gateway's ledger and
the key service's, so that a budget is spent to the last millionth and never past it; a
database made when they were floats is carried over when the service starts."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import (
    Column,
    Float,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    insert,
    inspect,
    select,
)

from sandbox import units
from sandbox.federated import keystore
from sandbox.federated.authorization import Authorization
from sandbox.gateway.grants import hash_token
from sandbox.gateway.store import grants, releases
from sandbox.queries.spec import QuerySpec
from tests.gateway.test_ledger import fire
from tests.services import GatewayProcess
from tests.tiers import tier


def test_sums_of_charges_are_exact_where_floats_drift():
    assert 0.1 + 0.2 != 0.3 and sum([0.1] * 10) != 1.0
    assert sum(units.micro_epsilon(e) for e in [0.1, 0.2]) == units.micro_epsilon(0.3)
    assert sum(units.micro_epsilon(0.1) for _ in range(10)) == units.micro_epsilon(1.0)
    assert units.micro_epsilon(0.7 - 0.4) == 300_000  # float jitter is not a millionth
    assert units.micro_epsilon(1 / 3) == 333_333 and units.micro_epsilon(1 / 3, up=True) \
        == 333_334
    assert units.atto_delta(1e-7) == 10**11


def test_a_spec_is_put_on_the_grid_and_charged_what_it_is_calibrated_to():
    spec = QuerySpec(dataset="d", kind="count", epsilon=1 / 3, delta=1e-7)
    assert spec.epsilon == 0.333333 and spec.delta == 1e-7
    with pytest.raises(ValueError, match="millionths"):
        QuerySpec(dataset="d", kind="count", epsilon=4e-7)
    with pytest.raises(ValueError, match="1e-18"):
        QuerySpec(dataset="d", kind="count", epsilon=1, delta=3e-19)


def test_ten_tenths_spend_a_budget_of_one_exactly(gateway):
    """With floats, ten queries of ε = 0.1 sum to 0.9999999999999999: the eleventh fitted
    in a slack, or the tenth was refused. In units the tenth fits and the eleventh does not."""
    grant = gateway.grant(epsilon=1.0)
    specs = [{"dataset": "emr-visits", "kind": "count", "epsilon": 0.1,
              "filters": [{"field": "length_of_stay", "op": "lt", "value": 100 + i}]}
             for i in range(11)]
    results = fire(gateway, grant["token"], specs, workers=4)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 10 + [403], statuses
    budget = httpx.get(f"{gateway.url}/v1/budget", timeout=30,
                       headers={"Authorization": f"Bearer {grant['token']}"}).json()
    assert budget["epsilon"] == {"total": 1.0, "spent": 1.0, "remaining": 0.0}


def _kept(table: Table) -> list[Column]:
    return [Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns if not c.name.endswith(("_micro", "_atto", "_femto"))]


def _float_era_tables() -> MetaData:
    """The gateway's grant and release tables as they were while ε and δ were floats."""
    old = MetaData()
    Table("grants", old, *_kept(grants),
        Column("epsilon_total", Float, nullable=False), Column("delta_total", Float),
        Column("epsilon_spent", Float, nullable=False), Column("delta_spent", Float))
    Table("releases", old, *_kept(releases),
        Column("epsilon", Float, nullable=False), Column("delta", Float, nullable=False),
        UniqueConstraint("grant_id", "query_hash", name="uq_release_query"))
    return old


@pytest.fixture(params=["sqlite", "postgresql"])
@tier("service")
def float_era_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return f"sqlite:///{tmp_path / 'old.db'}"


def test_a_float_era_database_is_carried_into_units_when_the_gateway_starts(
        float_era_url, datasets_dir, tmp_path):
    engine = create_engine(float_era_url)
    _float_era_tables().create_all(engine)
    with engine.begin() as conn:
        _old_grant(conn)
    engine.dispose()

    gateway = GatewayProcess(datasets_dir, tmp_path / "state", float_era_url).start()
    try:
        engine = create_engine(float_era_url)
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("grants")}
            assert "epsilon_spent" not in columns and "epsilon_spent_micro" in columns
            assert {"rho_spent_femto", "delta_pooled_atto"} <= columns  # the zCDP pool
            g = conn.execute(select(grants)).mappings().one()
            rows = conn.execute(select(releases)).mappings().all()
        engine.dispose()
        # three float charges of 0.1 summed to 0.30000000000000004: 300000 millionths
        assert (g["epsilon_total_micro"], g["epsilon_spent_micro"]) == (1_000_000, 300_000)
        assert g["delta_spent_atto"] == 3 * 10**11 and len(rows) == 3
        assert all(r["epsilon_micro"] == 100_000 and r["delta_atto"] == 10**11 for r in rows)
        token = {"Authorization": "Bearer old-token"}
        budget = httpx.get(f"{gateway.url}/v1/budget", headers=token, timeout=30).json()
        assert budget["epsilon"]["remaining"] == 0.7
        # a grant that has spent in pure ε charges a Gaussian release its own ε
        gaussian = {"dataset": "emr-visits", "kind": "count", "epsilon": 0.3, "delta": 1e-8,
                    "noise": "gaussian"}
        answer = httpx.post(f"{gateway.url}/v1/query", json=gaussian, headers=token,
                            timeout=120)
        assert answer.status_code == 200 and answer.json()["epsilon"] == 0.3
        ask = {"dataset": "emr-visits", "kind": "count", "epsilon": 0.4}
        assert httpx.post(f"{gateway.url}/v1/query", json=ask, headers=token,
                          timeout=120).status_code == 200
        ask["epsilon"] = 0.000001
        refused = httpx.post(f"{gateway.url}/v1/query", json=ask, headers=token, timeout=60)
        assert refused.status_code == 403 and refused.json()["error"] == "budget_exhausted"
        # the stored releases are still answers, at no further cost
        assert gateway.admin("GET", f"/v1/admin/grants/{g['id']}/releases").json()[0][
            "epsilon"] == 0.1
    finally:
        gateway.stop()


def _old_grant(conn) -> None:
    old = _float_era_tables()
    conn.execute(insert(old.tables["grants"]).values(
        id="g-old", project="p-old", datasets='["emr-visits"]',
        fields='["sex", "age_band"]', purpose="medical_research",
        epsilon_total=1.0, delta_total=1e-5, epsilon_spent=0.1 + 0.1 + 0.1,
        delta_spent=1e-7 + 1e-7 + 1e-7, expires_at="2030-01-01T00:00:00+00:00",
        status="active", status_reason="", token_hash=hash_token("old-token"),
        created_at="2026-01-01T00:00:00+00:00"))
    for i in range(3):
        conn.execute(insert(old.tables["releases"]).values(
            id=f"r{i}", grant_id="g-old", query_hash=f"{i:064d}", spec="{}",
            dataset="emr-visits", dataset_version="v1", epsilon=0.1, delta=1e-7,
            status="released", value="[]", receipt=None,
            created_at=f"2026-01-01T00:00:0{i}+00:00"))


def test_the_key_services_float_era_budget_is_carried_and_spent_exactly(tmp_path):
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = create_engine(url)
    old = MetaData()
    Table("budgets", old, Column("authorization_id", String(64), primary_key=True),
          Column("total", Float, nullable=False), Column("spent", Float, nullable=False))
    Table("spends", old, Column("query_id", String(64), primary_key=True),
          Column("authorization_id", String(64)), Column("epsilon", Float),
          Column("at", Text))
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(old.tables["budgets"]).values(
            authorization_id="a1", total=1.0, spent=0.1 + 0.2))
    keystore.create_tables(engine)
    with engine.connect() as conn:
        assert conn.execute(select(keystore.budgets)).mappings().one()["spent_micro"] \
            == 300_000
    granted = Authorization("a1", "p", frozenset(), frozenset(), "medical_research", 1.0,
                            0.0, None, {})  # type: ignore[arg-type]
    keystore.spend(engine, granted, 0.7, "q1")
    with pytest.raises(Exception, match="spent what the portal granted"):
        keystore.spend(engine, granted, 0.000001, "q2")
    with engine.connect() as conn:
        assert conn.execute(select(keystore.budgets.c.spent_micro)).scalar() == 1_000_000
