"""The example cohort study runs inside a live sandbox over the demo's 100,000 patients
(nbclient, the sandbox's own kernel): on dummy data first, then through the gateway — rates,
a logistic regression and survival curves, each plotted, every release's receipt verified
against the gateway's key and charged to the project once."""

from __future__ import annotations

import httpx
import pytest

from sandbox import receipts
from sandbox.hub.names import server_name
from tests.hub.stack import WORK, run_notebook

NOTEBOOK = "cohort-study.ipynb"
FIELDS = ["sex", "age_band", "admission_month", "diagnoses.diagnosis_code",
          "diagnoses.diagnosed_on", "labs.test_code", "labs.value", "labs.sampled_on",
          "visits.visit_type", "visits.admitted_on"]
PLOTS = ["readmission-by-age.png", "odds-ratios.png", "survival-by-control.png"]


def test_the_cohort_study_runs_in_a_sandbox(stack):
    project, researcher = stack.approved_project(fields=FIELDS)
    assert stack.hub().wait_ready(f"user-{researcher.id}", server_name(project)).ready
    box = stack.container(project, researcher)
    printed, released = run_notebook(box, NOTEBOOK)

    public_key = httpx.get(f"{stack.gateway.url}/v1/public-key").text.encode()
    payloads = [receipts.verify(r, public_key, receipts.Domain.RECEIPT) for r in released]
    assert {p["project"] for p in payloads} == {f"application-{project}"}
    assert len({p["release"] for p in payloads}) == 4
    assert sum(p["epsilon"] for p in payloads) == pytest.approx(1.4)
    kinds = {tuple(p["query"]["query"]["group_by"]) for p in payloads}
    assert ("control", "sex", "readmitted_1y") in kinds  # the logistic regression's cells
    for plot in PLOTS:
        code, _ = box.exec_run(["test", "-s", plot], user="1000:1000", workdir=WORK)
        assert code == 0, f"{plot} was saved in the workspace"
    # on the demo's patients the study has its numbers: a curve, a test, a fitted model
    assert "'p_value': None" not in printed, printed[-3000:]
