"""Cohorts through a served gateway: statistics of one row per patient, charged, receipted
and noised as any release, with the patient — not the visit — as the unit of privacy."""

from __future__ import annotations

import json
import math
import statistics
from types import SimpleNamespace

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.client import Cohort, Gateway, GatewayError
from sandbox.cohorts.checks import grantable
from sandbox.cohorts.spec import CohortQuery
from sandbox.gateway import cohorts
from sandbox.gateway.engine import Engine
from sandbox.queries.withdrawals import Withdrawn
from tests.cohorts import oracle
from tests.cohorts.strategies import definitions, load_world

PURPOSE = "medical_research"
FIELDS = ["sex", "age_band", "visit_type", "admission_month", "diagnosis_code",
          "diagnoses.diagnosis_code", "diagnoses.diagnosed_on", "labs.test_code",
          "labs.value", "labs.sampled_on",
          "prescriptions.drug_name", "prescriptions.prescribed_on"]


@pytest.fixture(scope="module")
def served(served_on_each_engine):
    return served_on_each_engine


def _diabetes() -> Cohort:
    return (Cohort("emr-visits", Cohort.events("diagnoses", codes=["E11"]))
            .first_value("sex", Cohort.events("records"), "sex")
            .max("glucose", Cohort.events("labs", where={"test_code": "GLU"}), "value")
            .bands("control", "glucose", [0, 7, 50])
            .exists("metformin", Cohort.events("prescriptions",
                                               where={"drug_name": ["盐酸二甲双胍片"]})))


def _dataset(datasets_dir) -> SimpleNamespace:
    directory = datasets_dir / "emr-visits"
    metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    return SimpleNamespace(id="emr-visits", version=metadata["version"], metadata=metadata,
                           directory=directory)


def _exact(datasets_dir, cohort: Cohort, purpose: str = PURPOSE,
           withdrawn: Withdrawn | None = None) -> pl.DataFrame:
    """The cohort's frame as the gateway builds it — here, in the test, without noise."""
    query = CohortQuery.model_validate({"cohort": cohort.spec(), "query": {
        "dataset": "emr-visits", "kind": "count", "epsilon": 1.0}})
    return cohorts.patients(query, _dataset(datasets_dir), purpose,
                            withdrawn or Withdrawn()).collect()


def test_a_cohort_count_counts_patients_with_the_noise_of_one(served, datasets_dir):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    cohort = _diabetes()
    exact = _exact(datasets_dir, cohort)
    assert exact.height > 100

    # a patient-level count's noise is one patient's, a visit-level count's twenty visits'
    per_patient = gw.cohort(cohort).preview_count(epsilon=1.0)
    per_visit = gw.preview_count("emr-visits", epsilon=1.0)
    assert per_visit["scale"][0] == pytest.approx(20 * per_patient["scale"][0], rel=1e-6)

    answer = gw.cohort(cohort).count(epsilon=1.0)
    bound = per_patient["accuracy"][0]
    assert abs(answer.value - exact.height) <= 2 * bound
    payload = gw.verify(answer.receipt)
    assert payload["query"]["cohort"]["index"]["codes"]["codelist"] == ["E11"]
    assert payload["dataset"] == "emr-visits" and payload["epsilon"] == 1.0
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)

    grouped = gw.cohort(cohort).count(epsilon=1.0, group_by=["control", "metformin"])
    truth = exact.group_by("control", "metformin").len()
    for row in grouped.df.iter_rows(named=True):
        match = truth.filter((pl.col("control").cast(pl.String) == row["control"])
                             & (pl.col("metformin").cast(pl.String) == row["metformin"]))
        expected = match["len"].sum() if match.height else 0
        if not row["suppressed"]:
            assert abs(row["count"] - expected) <= 2 * bound * 2

    mean = gw.cohort(cohort).mean("glucose", epsilon=2.0, bounds=(0, 50),
                                  where={"glucose": (0, 50)})
    assert mean.value == pytest.approx(exact["glucose"].drop_nulls().mean(), abs=1.0)


def test_a_proportion_per_group_comes_with_its_interval(served, datasets_dir):
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    cohort = _diabetes()
    exact = _exact(datasets_dir, cohort).with_columns(pl.col(pl.Enum).cast(pl.String))
    shares = gw.cohort(cohort).proportion("metformin", by=["sex"], epsilon=1.0)
    assert shares.df.columns == ["sex", "yes", "total", "proportion", "low", "high"]
    for row in shares.df.iter_rows(named=True):
        group = exact.filter(pl.col("sex") == row["sex"])
        truth = (group["metformin"] == "yes").mean()
        assert row["low"] <= row["proportion"] <= row["high"]
        assert row["high"] - row["low"] < 0.3
        assert abs(row["proportion"] - truth) < 0.1
    assert gw.verify(shares.receipt)["query"]["query"]["group_by"] == ["sex", "metformin"]
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)  # the preview is free
    for wrong in ({"value": "Yes"}, {"level": 1.0}):  # refused before anything is spent
        with pytest.raises(ValueError):
            gw.cohort(cohort).proportion("metformin", epsilon=0.5, **wrong)
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)


def test_a_survival_curve_by_group_with_its_log_rank_test(served):
    gw = Gateway(served.url, served.grant(fields=[*FIELDS, "visits.visit_type",
                                                  "visits.admitted_on"])["token"])
    cohort = _diabetes().survival(
        "back", Cohort.events("visits", where={"visit_type": "住院"}, after_index=(1, 365)),
        Cohort.events("visits"), horizon=365).bands("time_bin", "glucose", [0, 7, 50])
    curve = gw.cohort(cohort).survival("back", [0, 30, 90, 180, 365], by="sex", epsilon=1.0)
    assert curve.df.columns == ["sex", "bin", "at_risk", "events", "censored", "survival",
                                "low", "high", "withheld"]
    for _, group in curve.df.group_by("sex"):
        values = group["survival"].to_list()
        assert len(values) == 4 and values == sorted(values, reverse=True)
        assert all(lo <= s <= hi for lo, s, hi in group.select("low", "survival", "high")
                   .iter_rows())
    # (with this extract's month-level dates nearly every cell is withheld: no test then)
    test = curve.comparison
    assert test["test"] == "log-rank" and (
        0 <= test["p_value"] <= 1 if test["p_value"] is not None else "withheld" in test[
            "reason"] or "fewer than" in test["reason"])
    # the curve's bins take a name of their own, never the cohort's "time_bin"
    asked = gw.verify(curve.receipt)["query"]
    assert asked["query"]["group_by"] == ["sex", "time_bin1", "back_event"]
    assert asked["cohort"]["variables"]["time_bin"]["of"] == "glucose"
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="horizon"):
        gw.cohort(cohort).survival("back", [0, 30, 90], epsilon=1.0)


def test_a_cohort_outside_the_grant_or_malformed_is_refused_and_costs_nothing(served):
    grant = served.grant(fields=["sex", "diagnoses.diagnosis_code", "diagnoses.diagnosed_on"])
    gw = Gateway(served.url, grant["token"])
    with pytest.raises(GatewayError) as refused:
        gw.cohort(_diabetes()).count(epsilon=1.0)
    assert refused.value.status == 403 and "outside this project's grant" in refused.value.reason
    with pytest.raises(GatewayError) as bad:
        gw._call("POST", "/v1/cohort/query", {"cohort": {"dataset": "emr-visits",
                                                          "index": {"table": "diagnoses",
                                                                    "codes": {
                                                                        "field": "x",
                                                                        "codelist": ["DROP"]}}},
                                               "query": {"dataset": "emr-visits",
                                                         "kind": "count", "epsilon": 1}})
    assert bad.value.status == 422 and "not an ICD-10 code" in bad.value.reason
    with pytest.raises(GatewayError) as unknown:
        gw.cohort({"dataset": "emr-visits", "index": {"table": "diagnoses"},
                   "variables": {"n": {"kind": "count", "events": {"table": "diagnoses"}}}}
                  ).count(epsilon=1.0, group_by=["n"])
    assert unknown.value.status == 422 and "group_by needs text" in unknown.value.reason
    nan_edges = {"dataset": "emr-visits", "index": {"table": "diagnoses"}, "variables": {
        "n": {"kind": "count", "events": {"table": "diagnoses"}},
        "band": {"kind": "bands", "of": "n", "edges": [0, float("nan"), 50]}}}
    body = json.dumps({"cohort": nan_edges, "query": {  # NaN, as JSON's parsers read it
        "dataset": "emr-visits", "kind": "count", "epsilon": 1, "group_by": ["band"]}})
    for path in ("/v1/cohort/preview", "/v1/cohort/query"):
        nan = gw._http.post(path, content=body, headers={"content-type": "application/json"})
        assert nan.status_code == 422 and "finite" in nan.json()["reason"]
    assert gw.budget()["epsilon"]["spent"] == 0


def test_a_withdrawal_leaves_every_later_cohort_answer(served, datasets_dir):
    purpose = "public_health"
    gw = Gateway(served.url, served.grant(fields=FIELDS, purpose=purpose)["token"])
    cohort = _diabetes()
    exact = _exact(datasets_dir, cohort, purpose)
    gone = exact[cohorts.frame.PATIENT].head(150).to_list()
    before = gw.cohort(cohort).count(epsilon=2.0).value
    response = served.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": p, "purposes": [purpose]} for p in gone]})
    assert response.status_code == 201, response.text
    after = gw.cohort(cohort).count(epsilon=1.9)  # (the same question: its stored answer)
    assert abs(after.value - (exact.height - 150)) <= 8 and before - after.value > 130
    assert gw.verify(after.receipt)["withdrawals_version"] >= 1


def test_one_patient_with_many_visits_changes_one_row_of_the_frame(datasets_dir, tmp_path):
    """Neighbouring datasets: the extract with one patient given 80 visits (their own
    records, diagnoses and visits repeated) and the extract without that patient — every
    record, every event — give frames one row apart: a count moves by at most 1."""
    cohort = (Cohort("emr-visits", Cohort.events("records"))
              .count("visits", Cohort.events("records"))
              .count("diagnoses", Cohort.events("diagnoses"))
              .exists("inpatient", Cohort.events("records", where={"visit_type": "住院"})))
    source = datasets_dir / "emr-visits"
    records = pl.read_parquet(source / "restricted" / "records.parquet")
    busiest = records.group_by("pseudonym").len().sort("len", "pseudonym").row(-1)[0]

    def extract(name: str, rows) -> None:
        (tmp_path / name / "emr-visits" / "restricted").mkdir(parents=True)
        target = tmp_path / name / "emr-visits"
        (target / "metadata.json").write_bytes((source / "metadata.json").read_bytes())
        for table in (source / "restricted").glob("*.parquet"):
            rows(pl.read_parquet(table), table.stem).write_parquet(
                target / "restricted" / table.name)

    def eighty(frame: pl.DataFrame, table: str) -> pl.DataFrame:
        if table not in ("records", "visits", "diagnoses"):
            return frame
        theirs = frame.filter(pl.col("pseudonym") == busiest)
        more = pl.concat([theirs] * (80 // theirs.height + 1)).head(80 - theirs.height)
        return pl.concat([frame, more])

    extract("with", eighty)
    extract("without", lambda frame, _: frame.filter(pl.col("pseudonym") != busiest))
    full = _exact(tmp_path / "with", cohort)
    less = _exact(tmp_path / "without", cohort)
    assert full.filter(pl.col(cohorts.frame.PATIENT) == busiest)["visits"][0] == 80
    assert full.height - less.height == 1
    assert full.filter(pl.col(cohorts.frame.PATIENT) != busiest).sort(
        cohorts.frame.PATIENT).equals(less.sort(cohorts.frame.PATIENT))


def test_the_spread_of_cohort_counts_matches_the_reported_scale(datasets_dir):
    """2,000 releases of one count (in this process: no served gateway draws noise for a
    test): their standard deviation is the noise scale's, within 10 %."""
    engine = Engine()
    query = CohortQuery.model_validate({"cohort": _diabetes().spec(), "query": {
        "dataset": "emr-visits", "kind": "count", "epsilon": 0.1}})
    dataset = _dataset(datasets_dir)
    described = cohorts.describe(query, dataset, set(FIELDS), PURPOSE)
    measurement = engine.measurement(query.query, described, PURPOSE)
    scale = cohorts.preview(query, dataset, SimpleNamespace(fields=FIELDS, purpose=PURPOSE),
                            engine, 0.05)[0]["scale"]
    assert scale == pytest.approx(10.0, rel=1e-6)  # 1/ε: one patient, one row
    frame = cohorts.build(query, dataset, described, PURPOSE, Withdrawn()).collect().lazy()
    draws = [measurement(frame).collect().item() for _ in range(2000)]
    # OpenDP's discrete Laplace at scale s: variance 2 e^(-1/s) / (1 - e^(-1/s))²
    r = math.exp(-1 / scale)
    expected = math.sqrt(2 * r) / (1 - r)
    assert statistics.stdev(draws) == pytest.approx(expected, rel=0.10)


@pytest.fixture(scope="module")
def world(raw, key_file, datasets_dir):
    return load_world(raw, key_file, datasets_dir / "emr-visits")


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_cohorts_counted_by_the_served_gateway_match_the_raw_extract(served, world,
                                                                           data):
    """Random definitions asked of the served gateway: each count is the independent
    computation over the raw extract plus noise of scale 1/ε = 1 (|noise| > 14 with
    probability e⁻¹⁴ ≈ 10⁻⁶)."""
    definition = data.draw(definitions(world))
    expected = oracle.frame(definition, world["events"], world["consent"],
                            world["categories"])
    grant = served.grant(fields=sorted(grantable(world["metadata"])), epsilon=1.0)
    answer = Gateway(served.url, grant["token"]).cohort(definition).count(epsilon=1.0)
    assert abs(answer.value - len(expected)) <= 14


def test_cohort_quantiles_are_answered_by_polars_and_refused_with_a_reason_by_spark(served):
    """OpenDP scores a quantile's candidates itself, which it cannot do over Spark's rows
    (docs/adr/0013): the Spark engine refuses them — preview and query — before any
    charge, and says what to ask instead."""
    gw = Gateway(served.url, served.grant(fields=FIELDS)["token"])
    stats = gw.cohort(_diabetes())
    if "spark" not in served.options:
        answer = stats.quantiles("glucose", [0.25, 0.5], epsilon=1.0, bounds=(0, 50))
        assert answer.df.columns == ["q0.25", "q0.5"]
        assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)
        return
    for ask in (lambda: stats.preview(stats._query("quantiles", 1.0, field="glucose",
                                                    quantiles=[0.5], bounds=[0, 50])),
                lambda: stats.quantiles("glucose", [0.5], epsilon=1.0, bounds=(0, 50))):
        with pytest.raises(GatewayError) as refused:
            ask()
        assert refused.value.status == 422 and "histogram" in refused.value.reason
    assert gw.budget()["epsilon"]["spent"] == 0


def test_long_filters_and_many_bins_are_answered_on_both_engines(served):
    """Within the spec's limits on either engine: a filter of 60 values and a histogram
    of 90 bins (Spark Connect refuses a plan nested past about a hundred levels)."""
    gw = Gateway(served.url, served.grant(fields=[*FIELDS, "length_of_stay"])["token"])
    drugs = ["盐酸二甲双胍片"] * 60
    cohort = (Cohort("emr-visits", Cohort.events("prescriptions", where={"drug_name": drugs}))
              .count("n", Cohort.events("prescriptions")))
    histogram = gw.cohort(cohort).histogram("n", list(range(91)), epsilon=0.5)
    assert len(histogram.df) == 90
    visits = gw.histogram("emr-visits", "length_of_stay", list(range(91)), epsilon=0.5)
    assert len(visits.df) == 90
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)
