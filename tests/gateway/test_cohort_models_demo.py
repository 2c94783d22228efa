"""The example study's logistic regression on the demo's 100,000 patients (``make run``'s
size and seed), through a served gateway at ε = 1: every coefficient within its stated
noise error of the unregularised fit on the same patients — fitted here, in the test, on
the patient-level frame by a general-purpose optimiser, not by the project's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.optimize import minimize

from sandbox.client import Cohort, Gateway
from tests.gateway.test_cohorts import FIELDS, _exact
from tests.services import GatewayProcess
from tests.tiers import tier

PREDICTORS = ["control", "metformin", "sex"]


@pytest.fixture(scope="module")
def demo(demo_dataset) -> Path:
    return demo_dataset.parent


@pytest.fixture(scope="module")
@tier("service")
def served(demo, tmp_path_factory):
    process = GatewayProcess.on_sqlite(demo, tmp_path_factory.mktemp("demo-gw")).start()
    yield process
    process.stop()


def study() -> Cohort:
    """Type 2 diabetes; glucose control, metformin, sex; an inpatient stay within 30 days
    (1.7 % of the patients: with age bands too, cells of fewer than 5 would be withheld)."""
    return (Cohort("emr-visits", Cohort.events("diagnoses", codes=["E11"]))
            .first_value("sex", Cohort.events("records"), "sex")
            .exists("metformin", Cohort.events("prescriptions",
                                               where={"drug_name": ["盐酸二甲双胍片"]}))
            .max("glucose", Cohort.events("labs", where={"test_code": "GLU"}), "value")
            .bands("control", "glucose", [0, 7, 50])
            .exists("readmitted", Cohort.events("visits", where={"visit_type": "住院"},
                                                after_index=(1, 30))))


def _unregularised(frame: pl.DataFrame, levels: dict[str, list[str]]) -> np.ndarray:
    frame = frame.drop_nulls(PREDICTORS)
    x = np.column_stack([np.ones(frame.height)] + [
        (frame[p] == level).to_numpy().astype(float)
        for p in PREDICTORS for level in levels[p][1:]])
    y = (frame["readmitted"] == "yes").to_numpy().astype(float)

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        t = x @ beta
        return (float(np.sum(np.logaddexp(0, t) - y * t)),
                x.T @ (1 / (1 + np.exp(-t)) - y))

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="BFGS",
                    options={"gtol": 1e-8, "maxiter": 1000}).x


def test_the_study_regression_at_epsilon_one_is_within_its_stated_error(served, demo):
    gw = Gateway(served.url, served.grant(fields=[*FIELDS, "visits.visit_type",
                                                  "visits.admitted_on"])["token"])
    result = gw.cohort(study()).logistic("readmitted", PREDICTORS, epsilon=1.0,
                                         reference={"control": "[0, 7)"})
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)
    assert result.comparison["withheld_cells"] == 0, result.comparison
    frame = _exact(demo, study())
    assert frame.height > 1000
    exact = _unregularised(frame, result.comparison["levels"])
    gap = np.abs(result.df["estimate"].to_numpy() - exact)
    noise = result.df["noise_se"].to_numpy()
    # a 99.9 % normal band for each of the coefficients
    assert np.all(gap <= 3.3 * noise), pl.DataFrame({
        "term": result.df["term"], "dp": result.df["estimate"], "exact": exact,
        "gap": gap, "noise_se": noise})
    assert np.all(result.df["se"].to_numpy() > noise)
