"""Models and the test of independence of a cohort through a served gateway: each makes
its releases through the ledger (charged, receipted), previews spend nothing, and the
fits land within their stated noise error of the same fits without noise on the patients'
frame (built here, in the test, as the gateway builds it)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from sandbox.client import Gateway, GatewayError
from sandbox.cohorts import models
from sandbox.cohorts.checks import tables
from tests.gateway.test_cohorts import FIELDS, _diabetes, _exact


def _cohort():
    return _diabetes().exists("hypertension", {"table": "diagnoses",
                                               "codes": {"field": "diagnosis_code",
                                                         "codelist": ["I10-I15"]}})


@pytest.fixture(scope="module")
def served(served_on_each_engine):
    return served_on_each_engine


def test_a_logistic_regression_is_one_charged_count_within_its_noise_of_the_exact_fit(
        served, datasets_dir):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    stats = gw.cohort(_cohort())
    preview = stats.logistic("metformin", ["sex", "control"], epsilon=1.0, preview=True)
    assert preview["scale"][0] > 0 and gw.budget()["epsilon"]["spent"] == 0

    result = stats.logistic("metformin", ["sex", "control"], epsilon=1.0)
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)
    assert gw.verify(result.receipt)["query"]["query"]["group_by"] == [
        "sex", "control", "metformin"]
    levels = result.comparison["levels"]
    assert result.df["term"].to_list() == [
        "intercept", *(f"{p}={v}" for p in ("sex", "control") for v in levels[p][1:])]

    frame = _exact(datasets_dir, _cohort())
    cells = frame.drop_nulls(["sex", "control"]).group_by("sex", "control").agg(
        yes=(pl.col("metformin") == "yes").sum(), no=(pl.col("metformin") == "no").sum())
    x, names = models.design(cells.to_dicts(), ["sex", "control"], levels)
    exact = models.logistic(x, cells["yes"].to_numpy().astype(float),
                            cells["no"].to_numpy().astype(float), 0.0, 0.0)["coefficients"]
    assert names == result.df["term"].to_list()
    gap = np.abs(result.df["estimate"].to_numpy() - exact)
    assert np.all(gap <= 4 * result.df["noise_se"].to_numpy() + 1e-9), (gap, result.df)
    assert np.all(result.df["se"].to_numpy() >= result.df["noise_se"].to_numpy())


def test_a_linear_regression_is_two_receipted_releases_summing_to_its_epsilon(
        served, datasets_dir):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    result = gw.cohort(_cohort()).linear("glucose", ["sex", "metformin"], epsilon=2.0,
                                         bounds=(0.0, 30.0))
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(2.0)
    assert len(result.receipts) == 2 and result.epsilon == pytest.approx(2.0)
    asked = [gw.verify(r)["query"]["query"] for r in result.receipts]
    assert [(q["kind"], q["field"]) for q in asked] == [("sum", "glucose"),
                                                        ("sum", "glucose_sq")]
    assert {r["release"] for r in gw.releases()} >= {p.release_id for p in result.parts}

    frame = _exact(datasets_dir, _cohort()).drop_nulls(["sex", "glucose"])
    frame = frame.filter(frame["glucose"].is_between(0, 30))
    levels = result.comparison["levels"]
    x = models.design(frame.select("sex", "metformin").to_dicts(), ["sex", "metformin"],
                      levels)[0]
    exact = np.linalg.lstsq(x, frame["glucose"].to_numpy(), rcond=None)[0]
    gap = np.abs(result.df["estimate"].to_numpy() - exact)
    assert np.all(gap <= 4 * result.df["noise_se"].to_numpy()), (gap, exact, result.df,
                                                                 result.comparison)


def test_a_contingency_table_carries_its_test_of_independence(served):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    result = gw.cohort(_cohort()).table("control", "metformin", epsilon=0.5)
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.5)
    assert set(result.df.columns) >= {"control", "metformin", "count"}
    test = result.comparison
    assert test["df"] == 1 and 0 < test["p_value"] <= 1 and test["statistic"] >= 0
    # the p-value is post-processing of this release: asked again, the same
    again = gw.cohort(_cohort()).table("control", "metformin", epsilon=0.5)
    assert again.repeated and again.comparison["p_value"] == test["p_value"]


def test_a_model_over_a_numeric_predictor_is_refused_before_anything_is_spent(served):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    stats = gw.cohort(_cohort())
    with pytest.raises(ValueError, match="numeric: band it first"):
        stats.logistic("metformin", ["glucose"], epsilon=1.0)
    with pytest.raises(ValueError, match="not a variable"):
        stats.table("control", "smoker", epsilon=1.0)
    with pytest.raises(ValueError, match="cannot also be a predictor"):
        stats.logistic("metformin", ["sex", "metformin"], epsilon=1.0)
    with pytest.raises(ValueError, match="'Yes' is not a value of 'metformin'"):
        stats.logistic("metformin", ["sex", "control"], value="Yes", epsilon=1.0)
    with pytest.raises(ValueError, match="'F' is not a level of 'sex'"):
        # categories from the gateway's catalogue where none is on disk
        stats.logistic("metformin", ["sex"], reference={"sex": "F"}, epsilon=1.0)
    with pytest.raises(ValueError, match="not a level of 'control'"):
        stats.logistic("metformin", ["control"], reference={"control": "[0,7)"}, epsilon=1.0)
    with pytest.raises(ValueError, match="not a predictor"):
        stats.linear("glucose", ["metformin"], bounds=(0, 30), reference={"sex": "女"},
                     epsilon=1.0)
    with pytest.raises(ValueError, match="the project has 10 left"):
        stats.linear("glucose", ["metformin"], bounds=(0, 30), epsilon=12.0)
    # a square of a square (its bound would grow without limit) is refused, not charged
    nested = _cohort().count("labs", {"table": "labs"}).variable(
        "labs2", "square", of="labs").variable("labs4", "square", of="labs2")
    with pytest.raises(ValueError, match="square needs a numeric variable"):
        gw.cohort(nested).histogram("labs4", [0, 10, 100], epsilon=0.5)
    with pytest.raises(GatewayError, match="outside this project's grant"):
        gw.cohort(_cohort().exists("asthma", {"table": "diagnoses", "codes": {
            "field": "diagnosis_code", "codelist": ["J45"]}}).first_value(
            "cost", {"table": "records"}, "total_cost")).table("asthma", "sex", epsilon=1.0)
    assert gw.budget()["epsilon"]["spent"] == 0


def test_a_patient_without_the_value_is_in_no_bin_mean_or_sum(served, datasets_dir):
    """A patient with no glucose lab is not counted at the lower bound: a histogram's bins
    add up to the patients with a value, and the mean is theirs (within the noise)."""
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    frame = _exact(datasets_dir, _cohort())
    valued = frame["glucose"].drop_nulls()
    assert frame["glucose"].null_count() > 20  # the cohort has patients without the lab
    bins = [0, 5, 7, 9, 11, 20, 1100]
    histogram = gw.cohort(_cohort()).histogram("glucose", bins, epsilon=2.0)
    scale = gw.cohort(_cohort()).preview(
        {"dataset": "emr-visits", "kind": "histogram", "field": "glucose", "bins": bins,
         "epsilon": 2.0})["scale"][0]
    shown = histogram.df["count"].fill_null(0).sum()
    assert abs(shown - valued.len()) < 6 * scale * len(bins), (shown, valued.len())
    assert abs(shown - frame.height) > frame["glucose"].null_count() / 2
    mean = gw.cohort(_cohort()).mean("glucose", bounds=(0, 30), epsilon=2.0).value
    assert mean == pytest.approx(valued.clip(0, 30).mean(), abs=1.0)


def test_the_catalogue_shows_granted_event_fields_only(served):
    """A researcher reads the public description (bounds, categories) of the event-table
    fields the grant names, as `table.field`, and of no other."""
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    names = {f["name"] for f in gw.datasets()[0]["fields"]}
    assert {"labs.value", "labs.test_code", "diagnoses.diagnosis_code"} <= names
    assert not {n for n in names if n.startswith("prescriptions.")} - set(FIELDS)
    assert "total_cost" not in names and "visits.visit_type" not in names


def test_a_squares_noise_follows_the_square_of_its_sources_bound(served, datasets_dir):
    """Adversary: a researcher squaring a count to weigh one patient with many labs more.
    The square's bound is the square of the count's public bound, the sum is clamped to it,
    and the noise scale is that bound over ε — one patient moves the sum by at most it."""
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    cohort = _cohort().count("labs", {"table": "labs"}).variable("labs2", "square", of="labs")
    metadata = json.loads((datasets_dir / "emr-visits" / "metadata.json").read_text("utf-8"))
    bound = tables(metadata)["labs"].bound  # a patient's labs counted: at most this
    preview = gw.cohort(cohort).preview({"dataset": "emr-visits", "kind": "sum",
                                         "field": "labs2", "epsilon": 0.5})
    row = preview.filter(pl.col("aggregate") == "Sum").row(0, named=True)
    assert row["scale"] == pytest.approx(bound**2 / 0.5, rel=1e-6)
    with pytest.raises(GatewayError, match="bounds"):
        gw.cohort(cohort).sum("labs2", bounds=(0, bound**2 + 1), epsilon=0.5)
    assert gw.budget()["epsilon"]["spent"] == 0
