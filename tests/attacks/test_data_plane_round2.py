"""Attacks on exact ε, per-site withdrawal deliveries and accounting once per shape.

A federated question whose first attempt reached the sites but not the key service is
answered, when sent again, under the same charge and query id. A site keeps the noisy share
it drew for a query id (one query id, one draw): a share drawn before a consent withdrawal
must not be what answers the question after it. Adversary: no one — a key-service outage
racing a patient's withdrawal; the patient's rows must not be in what is released after
the withdrawal was recorded and told to every site."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest
import uvicorn

from sandbox.client import Gateway, GatewayError
from tests.federated.conftest import DATASET, grant


def _serve_again(served) -> None:
    """A served app back on its port (the same process state: an outage, not a restart)."""
    config = served.server.config
    served.server = uvicorn.Server(uvicorn.Config(config.app, host="127.0.0.1",
                                                  port=served.port, log_level="warning"))
    served.thread = threading.Thread(target=served.server.run, daemon=True)
    served.thread.start()
    deadline = time.monotonic() + 30
    while not served.server.started and time.monotonic() < deadline:
        time.sleep(0.05)


def _site_patients(cluster, name: str) -> list[str]:
    records = pl.read_parquet(cluster.parts / name / "restricted" / "records.parquet")
    return records.group_by("pseudonym").len().sort(
        ["len", "pseudonym"], descending=[True, False])["pseudonym"].to_list()


def test_a_share_drawn_before_a_withdrawal_does_not_answer_after_it(cluster, exact):
    name = sorted(cluster.sites)[1]
    patient = _site_patients(cluster, name)[5]
    gw = Gateway(exact.url, grant(exact, fields=["length_of_stay"])["token"])
    keys = cluster.processes["exact-keys"]
    keys.close()  # the sites draw and keep their shares; the key service is out of reach
    try:
        with pytest.raises(GatewayError) as failed:
            gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.3)
        assert failed.value.status == 503
        told = exact.admin("POST", "/v1/admin/consent-withdrawals", {"pseudonym": patient})
        assert told.status_code == 201 and told.json()["sites_missed"] == []
    finally:
        _serve_again(keys)
    retried = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.3)
    fresh = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.5)  # the first charge reused
    # noise-free sites: the question asked again counts what a new question counts
    assert retried.df["count"][0] == fresh.df["count"][0]


def test_many_shapes_do_not_grow_the_engines_memory(datasets_dir, tmp_path, monkeypatch):
    """Adversary: a researcher with a token — even one whose grant is spent, since a shape
    is compiled before its charge — sending query after query of a new shape (ε in
    millionths alone gives ten million). The engine keeps the accounting of a bounded number
    of recent shapes; the noise scales and calibration locks it keeps beside them must be
    bounded by the same number (else ~3 KB a shape: gigabytes in a day at the rate limit),
    including shapes that OpenDP refuses to calibrate."""
    from sandbox.errors import InputError
    from sandbox.gateway import engine as dpengine
    from sandbox.queries.spec import QuerySpec
    from sandbox.queries.view import prepare

    monkeypatch.setattr(dpengine, "COMPILED_SHAPES", 8)
    dataset = prepare(datasets_dir / "emr-visits", tmp_path / "views")
    engine = dpengine.Engine()
    for i in range(1, 41):
        for kind in ("histogram", "quantiles"):  # exact plans, and OpenDP's own
            engine.compile(QuerySpec(
                dataset=dataset.id, kind=kind, field="length_of_stay", bins=[0, 5, 30]
                if kind == "histogram" else None, quantiles=[0.5] if kind == "quantiles"
                else None, epsilon=i / 1000), dataset, "medical_research")
        with pytest.raises(InputError):  # a shape OpenDP cannot calibrate
            engine.compile(QuerySpec(dataset=dataset.id, kind="count", group_by=["sex"],
                                     keys="private", epsilon=i / 1000, delta=1e-18),
                           dataset, "medical_research")
    assert len(engine._compiled) <= 8
    assert len(engine._scales) <= 8
    assert len(engine._calibrating) <= 8


@pytest.mark.parametrize("build", ["at-once", "buckets", "spark"])
def test_a_patient_with_two_consent_rows_keeps_no_more_than_the_bound(dataset, tmp_path,
                                                                       monkeypatch, build,
                                                                       request):
    """Adversary: no one — a dataset directory whose consent table lists a patient twice
    (one consenting row and one withdrawn, say: an extract joined twice). The view keeps a
    patient's rows up to the contribution bound, then joins consent: each consent row would
    copy the patient's kept rows, and the noise, calibrated to the bound, would no longer
    cover them. Built at once or in buckets, a patient keeps at most the bound, and counts
    as consenting only if every row of theirs consents — by either engine."""
    import shutil

    from sandbox.queries import bounded
    from sandbox.queries.view import RANK_KEY, prepare

    copy = tmp_path / "emr-visits"
    shutil.copytree(dataset, copy)
    consent_file = copy / "restricted" / "consent.parquet"
    consent = pl.read_parquet(consent_file)
    records = pl.read_parquet(copy / "restricted" / "records.parquet")
    patient = records.group_by("pseudonym").len().sort(
        ["len", "pseudonym"], descending=[True, False])["pseudonym"][0]
    twice = consent.filter(pl.col("pseudonym") == patient)
    withdrawn = twice.with_columns(pl.col("withdrawn_at").fill_null(
        pl.lit("2025-01-01").str.to_date()))
    pl.concat([consent, twice, withdrawn]).write_parquet(consent_file)
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / RANK_KEY).write_bytes(b"r" * 32)
    builder = None
    if build == "buckets":
        monkeypatch.setattr(bounded, "BUCKET_ROWS", records.height // 7)
    elif build == "spark":
        from sandbox.queries.spark import SparkExecutor
        builder = SparkExecutor(request.getfixturevalue("spark_server").remote)
    try:
        built = prepare(copy, tmp_path / "views", builder)
    finally:
        if builder is not None:
            builder.stop()
    view = pl.read_parquet(f"{built.view}/**/*.parquet", hive_partitioning=False)
    counts = view.group_by("pseudonym").len()
    assert counts["len"].max() <= built.contribution_bound
    mine = view.filter(pl.col("pseudonym") == patient)
    consent_columns = [c for c in view.columns if c.startswith("_consent_")]
    assert mine.height == built.contribution_bound
    assert not mine.select(pl.any_horizontal(consent_columns)).to_series().any()


def test_one_site_name_cannot_stand_for_two_urls(cluster, tmp_path):
    """Adversary: no one — a federation file in which two datasets name a site alike at
    different URLs (two processes of one hospital). What a site has been told of the
    withdrawals is kept by its name: the second URL would count as told when only the first
    was, and answer federated questions with rows of a withdrawn patient. The gateway
    refuses such a file."""
    import json

    from sandbox.errors import InputError
    from sandbox.gateway.federation import Federation
    from sandbox.receipts import Signer

    document = json.loads((cluster.parts / "metadata.json").read_text(encoding="utf-8"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(document | {"id": "emr-visits-other"}), encoding="utf-8")
    sites = {name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(cluster.sites)}
    moved = {name: url.replace("127.0.0.1", "127.0.0.2") for name, url in sites.items()}
    config = tmp_path / "federation.json"
    config.write_text(json.dumps({"keys_url": "http://127.0.0.1:9999", "datasets": {
        DATASET: {"metadata": str(cluster.parts / "metadata.json"), "sites": sites},
        "emr-visits-other": {"metadata": str(other), "sites": moved}}}))
    with pytest.raises(InputError) as refused:
        Federation(config, Signer(tmp_path / "signing-key.pem"))
    assert "has two URLs" in refused.value.reason
