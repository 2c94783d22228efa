"""Gaussian noise, accounted in zero-concentrated DP and converted by OpenDP to the (ε, δ)
the ledger charges: the spread it reports, the charge, and refusals that cost nothing."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import polars as pl
import pytest

from sandbox.client import Gateway, GatewayError
from sandbox.cohorts.spec import CohortQuery
from sandbox.gateway import cohorts, execution
from sandbox.gateway.engine import Engine
from sandbox.gateway.zcdp import approximate, rho_of_pure, rho_within
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import prepare
from sandbox.queries.withdrawals import Withdrawn
from tests.gateway.test_cohorts import FIELDS, PURPOSE, _dataset, _diabetes

RUNS = 1500


def _spread_within(draws: list[float], truth: float, sd: float) -> None:
    errors = pl.Series(draws) - truth
    assert abs(errors.mean()) < 4 * sd / math.sqrt(len(draws))
    assert errors.std() == pytest.approx(sd, rel=0.10)


@pytest.fixture(scope="module")
def served(served_on_each_engine):
    return served_on_each_engine


def test_a_gaussian_cohort_count_spends_its_converted_budget_with_the_reported_spread(
        datasets_dir):
    """OpenDP's integer Gaussian on a patient count: the measurement's loss is (ε, δ) as
    asked, from zCDP converted by OpenDP; the releases' spread is the preview's scale."""
    engine = Engine()
    query = CohortQuery.model_validate({"cohort": _diabetes().spec(), "query": {
        "dataset": "emr-visits", "kind": "count", "epsilon": 0.5, "delta": 1e-7,
        "noise": "gaussian"}})
    dataset = _dataset(datasets_dir)
    described = cohorts.describe(query, dataset, set(FIELDS), PURPOSE)
    measurement = engine.measurement(query.query, described, PURPOSE)
    epsilon, delta = measurement.map(1)
    assert epsilon == pytest.approx(0.5, rel=1e-6) and epsilon <= 0.5 and delta == 1e-7
    (row,) = cohorts.preview(query, dataset, SimpleNamespace(fields=FIELDS, purpose=PURPOSE),
                             engine, 0.05)
    assert row["distribution"] == "Integer Gaussian"
    # the scale is the smallest whose ρ = 1/(2σ²) converts to ε = 0.5 at δ = 1e-7
    assert approximate(1 / (2 * row["scale"] ** 2), 1e-7)[0] <= 0.5
    assert approximate(1 / (2 * (0.99 * row["scale"]) ** 2), 1e-7)[0] > 0.5
    frame = cohorts.build(query, dataset, described, PURPOSE, Withdrawn()).collect()
    draws = [measurement(frame.lazy()).collect().item() for _ in range(RUNS)]
    _spread_within(draws, frame.height, row["scale"])


@pytest.fixture(scope="module")
def view(datasets_dir, tmp_path_factory):
    dataset = prepare(datasets_dir / "emr-visits", tmp_path_factory.mktemp("views"))
    return dataset, dataset.scan().collect().filter(pl.col("_consent_medical_research"))


def test_the_exact_path_adds_opendps_gaussian_with_the_reported_spread(view):
    """A dataset's count and sum read by the engine's exact plan, OpenDP's discrete Gaussian
    added at the measurement's own scales, the losses composed in zCDP and converted."""
    dataset, rows = view
    engine = Engine()
    spec = QuerySpec(dataset="emr-visits", kind="sum", field="total_cost", bounds=(0, 20_000),
                     epsilon=1.0, delta=1e-7, noise="gaussian", group_by=["sex"])
    compiled = engine.compile(spec, dataset, PURPOSE)
    assert compiled.noise is not None and all(s.gaussian for s in compiled.noise.statistics)
    assert compiled.epsilon <= 1.0 and compiled.delta == 1e-7
    scales = {r["aggregate"]: r["scale"] for r in engine.preview(spec, dataset, PURPOSE)}
    exact = execution.exact(compiled, dataset, engine.executor, Withdrawn(), PURPOSE)
    truth = rows.filter(pl.col("sex") == "女")["total_cost"].fill_null(0).clip(0, 20_000).sum()
    draws = []
    for _ in range(RUNS):
        released = execution.release(compiled, dataset, exact, Withdrawn())
        draws.append(released.filter(pl.col("sex") == "女")["sum"][0])
    _spread_within(draws, truth, scales["Sum"])


def test_a_gaussian_statistic_through_the_gateway_is_charged_its_epsilon_and_delta(served):
    gw = Gateway(served.url, served.grant(fields=[*FIELDS, "total_cost"])["token"])
    stats = gw.cohort(_diabetes(), noise="gaussian", delta=1e-7)
    assert gw.budget()["accounting"]["composition"] == "pure"  # nothing released yet
    preview = stats.preview_count(epsilon=1.0, group_by=["sex"])
    assert preview["distribution"][0] == "Integer Gaussian"
    answer = stats.count(epsilon=1.0, group_by=["sex"])
    assert answer.epsilon == pytest.approx(1.0)  # the grant's first release: its own ε
    budget = gw.budget()
    assert budget["epsilon"]["spent"] == pytest.approx(1.0)
    assert budget["delta"]["spent"] == pytest.approx(1e-7)
    payload = gw.verify(answer.receipt)
    assert payload["query"]["query"]["noise"] == "gaussian" and payload["delta"] == 1e-7
    assert payload["charged"] == {"epsilon": 1.0, "delta": 1e-7}
    share = stats.proportion("metformin", epsilon=0.5, by=["sex"])
    assert all(r["low"] <= r["proportion"] <= r["high"] for r in share.df.iter_rows(named=True)
               if r["proportion"] is not None)
    # a dataset-level question on the exact path, Gaussian as well
    visits = gw.count("emr-visits", epsilon=1.0, delta=1e-7, noise="gaussian")
    laplace = gw.count("emr-visits", epsilon=1.0)
    sigma = gw.preview({"dataset": "emr-visits", "kind": "count", "epsilon": 1.0,
                        "delta": 1e-7, "noise": "gaussian"})["scale"][0]
    assert abs(visits.value - laplace.value) < 4 * (sigma + math.sqrt(2) * 20)
    mean = gw.mean("emr-visits", "total_cost", bounds=(0, 20_000), epsilon=1.0, delta=1e-7,
                   noise="gaussian")
    assert 0 <= mean.value <= 20_000
    # the first release was Gaussian: the grant accounts in zCDP at its δ; four Gaussian
    # releases and one Laplace (ρ = ε²/2) add their ρ, and OpenDP converts the sum
    pool = sum(rho_within(e, 1e-7) for e in (1.0, 0.5, 1.0, 1.0)) + rho_of_pure(1.0)
    budget = gw.budget()
    assert budget["accounting"]["composition"] == "zcdp"
    assert budget["accounting"]["delta"] == 1e-7
    assert budget["accounting"]["rho_spent"] == pytest.approx(pool, rel=1e-9)
    assert budget["delta"]["spent"] == pytest.approx(1e-7)
    assert budget["epsilon"]["spent"] == pytest.approx(approximate(pool, 1e-7)[0], abs=1e-5)


def test_gaussian_noise_without_delta_or_with_private_keys_is_refused_and_costs_nothing(
        served):
    gw = Gateway(served.url, served.grant(fields=[*FIELDS, "total_cost"])["token"])
    with pytest.raises(ValueError, match="delta"):
        gw.cohort(_diabetes(), noise="gaussian")
    for spec in ({"dataset": "emr-visits", "kind": "count", "epsilon": 1.0,
                  "noise": "gaussian"},
                 {"dataset": "emr-visits", "kind": "count", "epsilon": 1.0, "delta": 1e-7,
                  "noise": "gaussian", "group_by": ["sex"], "keys": "private"},
                 {"dataset": "emr-visits", "kind": "count", "epsilon": 1.0, "delta": 1e-7,
                  "noise": "normal"}):
        with pytest.raises(GatewayError) as refused:
            gw.query(spec)
        assert 400 <= refused.value.status < 500 and refused.value.reason
    assert gw.budget()["epsilon"]["spent"] == 0


def test_each_engine_and_ledger_releases_a_gaussian_grouped_count(gateway):
    """On SQLite and PostgreSQL ledgers with Polars, and with Spark reading the rows: the
    same Gaussian question, near a Laplace answer of it, charged its (ε, δ)."""
    gw = Gateway(gateway.url, gateway.grant()["token"])
    spec = {"dataset": "emr-visits", "kind": "count", "epsilon": 1.0, "delta": 1e-7,
            "noise": "gaussian", "group_by": ["sex"]}
    sigma = gw.preview(spec)["scale"][0]
    gaussian = gw.query(spec).df.sort("sex")
    laplace = gw.count("emr-visits", epsilon=1.0, group_by=["sex"]).df.sort("sex")
    assert gaussian["sex"].to_list() == laplace["sex"].to_list() == ["女", "男"]
    for ours, theirs in zip(gaussian["count"], laplace["count"], strict=True):
        assert abs(ours - theirs) < 4 * (sigma + math.sqrt(2) * 20)
    budget = gw.budget()
    pool = rho_within(1.0, 1e-7) + rho_of_pure(1.0)
    assert budget["epsilon"]["spent"] == pytest.approx(approximate(pool, 1e-7)[0], abs=1e-5)
    assert budget["delta"]["spent"] == pytest.approx(1e-7)


def test_a_study_of_twenty_gaussian_releases_costs_their_pooled_loss(served):
    """Twenty patient counts of ε = 0.3 (δ = 1e-8) on a grant of ε = 2: charged one by one
    they would need 6; the first made the grant account in zCDP at δ = 1e-8, and OpenDP's
    conversion of their summed ρ is what it spends, each release charged what it grew by."""
    gw = Gateway(served.url, served.grant(fields=FIELDS, epsilon=2.0)["token"])
    stats = gw.cohort(_diabetes(), noise="gaussian", delta=1e-8)
    charged = []
    for year in range(20):
        answer = stats.count(epsilon=0.3, where={"glucose": (0, 10 + year)})
        charged.append(answer.epsilon)
        assert gw.verify(answer.receipt)["charged"]["epsilon"] == answer.epsilon
    pool = 20 * rho_within(0.3, 1e-8)
    budget = gw.budget()
    assert budget["epsilon"]["spent"] == pytest.approx(approximate(pool, 1e-8)[0], abs=1e-5)
    assert budget["epsilon"]["spent"] == pytest.approx(sum(charged), abs=1e-9)
    assert budget["epsilon"]["spent"] < 1.45 and budget["delta"]["spent"] == 1e-8
    assert charged[0] == pytest.approx(0.3) and charged == sorted(charged, reverse=True)
    # a Laplace release joins as ε²/2 of ρ, and the grant stops where its total does
    gw.count("emr-visits", epsilon=0.1)
    pool += rho_of_pure(0.1)
    spent = approximate(pool, 1e-8)[0]
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(spent, abs=1e-5)
    with pytest.raises(GatewayError) as refused:
        gw.count("emr-visits", epsilon=1.0)
    assert refused.value.status == 403 and refused.value.code == "budget_exhausted"
    # and private group keys, whose loss is not zCDP, are refused in such a grant
    with pytest.raises(GatewayError) as keys:
        gw.count("emr-visits", epsilon=0.1, delta=1e-9, group_by=["sex"], keys="private")
    assert 400 <= keys.value.status < 500 and "zCDP" in keys.value.reason
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(spent, abs=1e-5)


def test_a_grant_that_spent_in_pure_epsilon_charges_a_gaussian_release_its_own(served):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    gw.count("emr-visits", epsilon=0.5)
    for year in range(3):
        answer = gw.cohort(_diabetes(), noise="gaussian", delta=1e-8).count(
            epsilon=0.3, where={"glucose": (0, 10 + year)})
        assert (answer.epsilon, answer.delta) == (0.3, 1e-8)
    budget = gw.budget()
    assert budget["epsilon"]["spent"] == pytest.approx(1.4)
    assert budget["delta"]["spent"] == pytest.approx(3e-8)


def test_a_gaussian_question_at_the_smallest_epsilon_and_largest_delta_is_answered(served):
    """ρ(ε, δ) lies above ε at a large δ: it is found there, not refused with an error."""
    gw = Gateway(served.url, served.grant(delta=0.001)["token"])
    answer = gw.count("emr-visits", epsilon=0.000001, delta=0.000999, noise="gaussian")
    assert answer.epsilon <= 0.000001 and gw.budget()["delta"]["spent"] == 0.000999


def test_concurrent_gaussian_releases_never_lose_one_anothers_loss(gateway):
    """Eight Gaussian questions of a fresh grant sent at once: each is priced against the
    grant's accounting as it stands and charged only if it has not moved meanwhile — one
    makes the grant account in zCDP, the others join — so the grant ends charged OpenDP's
    conversion of all eight ρ at one δ: not of fewer, as lost updates would leave."""
    token = gateway.grant(epsilon=10.0)["token"]

    def ask(i: int) -> float:
        gw = Gateway(gateway.url, token)
        return gw.count("emr-visits", epsilon=0.5, delta=1e-8, noise="gaussian",
                        where={"total_cost": (0, 1000 + i)}).epsilon

    with ThreadPoolExecutor(8) as pool:
        charged = list(pool.map(ask, range(8)))
    spent = Gateway(gateway.url, token).budget()["epsilon"]["spent"]
    assert spent == pytest.approx(approximate(8 * rho_within(0.5, 1e-8), 1e-8)[0], abs=1e-5)
    assert spent == pytest.approx(sum(charged), abs=1e-9) and spent < 8 * 0.5


def test_a_laplace_and_a_gaussian_release_racing_on_a_fresh_grant_settle_one_accounting(
        gateway):
    """Sent at once to fresh grants: whichever is charged first decides how the grant
    accounts — in pure ε (the Gaussian then charged its own ε) or in zCDP (the Laplace then
    ε²/2 of ρ) — and the grant's spent ε is exactly one of the two, never a mixture."""
    pure = 0.4 + 0.3
    zcdp_spent = approximate(rho_within(0.3, 1e-8) + rho_of_pure(0.4), 1e-8)[0]
    for _ in range(3):
        token = gateway.grant()["token"]
        questions = [{"dataset": "emr-visits", "kind": "count", "epsilon": 0.4},
                     {"dataset": "emr-visits", "kind": "count", "epsilon": 0.3,
                      "delta": 1e-8, "noise": "gaussian"}]
        with ThreadPoolExecutor(2) as pool:
            charged = list(pool.map(lambda q, t=token: Gateway(gateway.url, t).query(q).epsilon,
                                    questions))
        budget = Gateway(gateway.url, token).budget()
        assert budget["epsilon"]["spent"] == pytest.approx(sum(charged), abs=1e-9)
        assert (budget["epsilon"]["spent"] == pytest.approx(pure) or
                budget["epsilon"]["spent"] == pytest.approx(zcdp_spent, abs=1e-5))
        assert budget["delta"]["spent"] == pytest.approx(1e-8)


def test_a_zcdp_grant_refuses_what_it_cannot_account_and_says_what_a_release_costs(served):
    gw = Gateway(served.url, served.grant(epsilon=2.0)["token"])
    gw.count("emr-visits", epsilon=0.5, delta=1e-8, noise="gaussian")
    with pytest.raises(GatewayError) as laplace_delta:
        gw.count("emr-visits", epsilon=0.1, delta=1e-9, group_by=["sex"])
    assert 400 <= laplace_delta.value.status < 500
    assert "delta 0 or Gaussian" in laplace_delta.value.reason
    with pytest.raises(GatewayError) as dear:
        gw.count("emr-visits", epsilon=0.5)  # ε²/2 of ρ: more than the 1.5 left
    assert dear.value.code == "budget_exhausted" and "charged ε =" in dear.value.reason
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.5)
