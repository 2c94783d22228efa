"""Live consent, and DP errors whose spread is the one OpenDP reports."""

from __future__ import annotations

import math

import httpx
import polars as pl
import pytest

from sandbox.client import Gateway
from sandbox.gateway.engine import Engine
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import prepare


def test_a_withdrawal_lowers_the_next_count_for_that_purpose_only(gateway, datasets_dir):
    consent = pl.read_parquet(datasets_dir / "emr-visits" / "restricted" / "consent.parquet")
    records = pl.read_parquet(datasets_dir / "emr-visits" / "restricted" / "records.parquet")
    both = consent.filter(pl.col("third_party_research") & pl.col("public_health")
                          & pl.col("withdrawn_at").is_null())
    chosen = both["pseudonym"].head(150).to_list()
    rows = records.filter(pl.col("pseudonym").is_in(chosen)).group_by("pseudonym").len()
    expected_drop = int(rows["len"].clip(upper_bound=20).sum())

    research = Gateway(gateway.url, gateway.grant(purpose="third_party_research")["token"])
    health = Gateway(gateway.url, gateway.grant(purpose="public_health")["token"])
    before = (research.count("emr-visits", epsilon=5.0).value,
              health.count("emr-visits", epsilon=5.0).value)
    for pseudonym in chosen:
        response = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                                 {"pseudonym": pseudonym, "purposes": ["third_party_research"]})
        assert response.status_code == 201, response.text
    after = (research.count("emr-visits", epsilon=4.9).value,
             health.count("emr-visits", epsilon=4.9).value)
    # noise scale 20/5 = 4 rows per count: tolerances are many standard deviations wide
    assert abs((before[0] - after[0]) - expected_drop) < 60
    assert expected_drop > 500
    assert abs(before[1] - after[1]) < 60


def test_a_withdrawal_of_unknown_shape_is_refused(gateway):
    bad = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                        {"pseudonym": "not-a-pseudonym"})
    assert bad.status_code == 422 and "pseudonym" in bad.json()["reason"]
    unknown = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                            {"pseudonym": "a" * 64, "purposes": ["marketing"]})
    assert unknown.status_code == 422 and "unknown purposes" in unknown.json()["reason"]


@pytest.fixture(scope="module")
def served(datasets_dir, tmp_path_factory):
    dataset = prepare(datasets_dir / "emr-visits", tmp_path_factory.mktemp("views"))
    view = dataset.scan().collect().filter(pl.col("_consent_medical_research"))
    return dataset, view


def _discrete_laplace_sd(scale: float) -> float:
    q = math.exp(-1 / scale)
    return math.sqrt(2 * q / (1 - q) ** 2)


RUNS = 1500


def test_count_errors_are_centred_with_the_reported_spread(served):
    dataset, view = served
    engine = Engine()
    spec = QuerySpec(dataset="emr-visits", kind="count", epsilon=1.0)
    measurement = engine.measurement(spec, dataset, "medical_research")
    scale = engine.preview(spec, dataset, "medical_research")[0]["scale"]
    errors = pl.Series([measurement(dataset.scan()).collect().item() - view.height
                        for _ in range(RUNS)])
    sd = _discrete_laplace_sd(scale)
    assert abs(errors.mean()) < 4 * sd / math.sqrt(RUNS)
    assert errors.std() == pytest.approx(sd, rel=0.10)


def test_mean_errors_are_centred_with_the_reported_spread(served):
    dataset, view = served
    engine = Engine()
    spec = QuerySpec(dataset="emr-visits", kind="mean", field="total_cost",
                     bounds=(0, 20_000), epsilon=1.0)
    measurement = engine.measurement(spec, dataset, "medical_research")
    stats = {row["aggregate"]: row["scale"]
             for row in engine.preview(spec, dataset, "medical_research")}
    values = view["total_cost"].fill_null(0).clip(0, 20_000)
    n, true_mean = view.height, values.mean()
    errors = pl.Series([measurement(dataset.scan()).collect().item() - true_mean
                        for _ in range(RUNS)])
    # mean = (S + e_s) / (n + e_n) ≈ true + (e_s − true·e_n) / n
    sd = math.sqrt(2 * stats["Sum"] ** 2 + true_mean ** 2
                   * _discrete_laplace_sd(stats["Length"]) ** 2) / n
    assert abs(errors.mean()) < 4 * sd / math.sqrt(RUNS)
    assert errors.std() == pytest.approx(sd, rel=0.10)


def test_preview_over_http_matches_the_engine(gateway):
    grant = gateway.grant()
    response = httpx.post(f"{gateway.url}/v1/preview",
                          json={"dataset": "emr-visits", "kind": "count", "epsilon": 2.0},
                          headers={"Authorization": f"Bearer {grant['token']}"})
    assert response.json()["statistics"][0]["scale"] == pytest.approx(10.0)
