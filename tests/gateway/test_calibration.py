"""The noise scale in closed form: the same scale OpenDP's search finds, its loss checked
by OpenDP's ``map``, and a loss not of the form c / s still gets the searched scale."""

from __future__ import annotations

import pytest
from opendp.mod import binary_search

from sandbox.gateway.calibration import scale_for
from sandbox.gateway.engine import Engine
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import prepare

PURPOSE = "medical_research"
SPECS = [
    {"kind": "count", "group_by": ["sex", "age_band"], "epsilon": 0.7},
    {"kind": "mean", "field": "total_cost", "bounds": (0, 20_000), "group_by": ["sex"],
     "epsilon": 0.5},
    {"kind": "quantiles", "field": "total_cost", "quantiles": [0.25, 0.5], "epsilon": 0.5},
    {"kind": "histogram", "field": "length_of_stay", "bins": [0, 5, 10, 30], "epsilon": 0.3},
]


@pytest.fixture(scope="module")
def served(datasets_dir, tmp_path_factory):
    return prepare(datasets_dir / "emr-visits", tmp_path_factory.mktemp("views"))


@pytest.mark.parametrize("shape", SPECS, ids=[s["kind"] for s in SPECS])
def test_the_closed_form_scale_is_the_one_opendp_searches_for(served, shape):
    dataset = served
    spec = QuerySpec(dataset=dataset.id, **shape)
    engine = Engine()
    measurement = engine.measurement(spec, dataset, PURPOSE)
    plan = engine._plan(spec, dataset, PURPOSE)
    searched = binary_search(lambda s: engine._make(dataset, plan, s, None).map(
        dataset.contribution_bound)[0] <= spec.epsilon, T=float)
    (found, threshold), = engine._scales.values()
    assert threshold is None
    assert found == pytest.approx(searched, rel=1e-9)
    epsilon, delta = measurement.map(dataset.contribution_bound)
    assert epsilon <= spec.epsilon and delta == 0
    assert epsilon == pytest.approx(spec.epsilon, rel=1e-9)  # nothing left unspent


def test_a_loss_not_of_the_form_c_over_s_is_searched():
    def loss(scale: float) -> float:  # a fixed part the closed form does not model
        return 2.0 / scale + 0.25

    found = scale_for(loss, 1.0)
    assert loss(found) <= 1.0
    assert found == pytest.approx(2.0 / 0.75, rel=1e-9)


def test_a_shape_is_accounted_once_and_each_query_keeps_its_own_filter_values(served):
    """The second query of a shape takes the first one's accounting (measurement, loss,
    noise) — and its own filter values, so it counts its own rows."""
    from sandbox.queries.withdrawals import Withdrawn

    engine = Engine()

    def spec(stay: int) -> QuerySpec:
        return QuerySpec(dataset=served.id, kind="count", epsilon=0.5, filters=[
            {"field": "length_of_stay", "op": "ge", "value": stay}])

    first, again = engine.compile(spec(0), served, PURPOSE), engine.compile(
        spec(30), served, PURPOSE)
    assert again.noise is first.noise and again.measurement is first.measurement
    assert (again.epsilon, again.delta) == (first.epsilon, first.delta)
    assert [f.value for f in again.plan.filters] == [30]
    exact = [engine.executor.aggregate(c.plan, str(served.view))["count"].item()
             for c in (first, again)]
    assert exact[0] > exact[1] > 0
    other = engine.compile(QuerySpec(dataset=served.id, kind="count", epsilon=0.6),
                           served, PURPOSE)  # another ε: another shape, its own accounting
    assert other.noise is not first.noise
    released = engine.run(spec(30), served, again, Withdrawn(), PURPOSE)
    assert released.epsilon == first.epsilon
