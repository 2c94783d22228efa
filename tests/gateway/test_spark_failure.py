"""A Spark failure after the charge — the server out of reach, or the plan failing on the
server mid-run — leaves the release ``failed`` and the charge kept; the identical query
later is released under that same charge, never charged twice."""

from __future__ import annotations

import httpx
import pytest

from sandbox.client import Gateway, GatewayError
from tests.services import GatewayProcess, free_port

COUNT = {"where": {"visit_type": "住院"}, "epsilon": 0.5}


def _spent(gateway: GatewayProcess, grant: dict) -> float:
    return gateway.admin("GET", f"/v1/admin/grants/{grant['grant']['id']}").json()[
        "epsilon_spent"]


def _failed_then_released(gateway: GatewayProcess, gw: Gateway, grant: dict,
                          repair) -> None:
    with pytest.raises(GatewayError) as failed:
        gw.count("emr-visits", **COUNT)
    assert failed.value.status == 503
    assert "under that same charge" in failed.value.reason
    (release,) = gw.releases()
    assert release["status"] == "failed" and release["epsilon"] == 0.5
    assert _spent(gateway, grant) == pytest.approx(0.5)
    gateway = repair()
    again = gw.count("emr-visits", **COUNT)
    assert isinstance(again.value, int) and again.value > 0
    (release,) = gw.releases()
    assert release["status"] == "released" and release["release"] == again.release_id
    assert _spent(gateway, grant) == pytest.approx(0.5)  # the one charge, kept and used
    assert gw.count("emr-visits", **COUNT).repeated


def _spark_gateway(datasets_dir, tmp_path, remote: str, views) -> GatewayProcess:
    return GatewayProcess(datasets_dir, tmp_path / "state", f"sqlite:///{tmp_path / 'g.db'}",
                          options=["--engine", "spark", "--spark-remote", remote,
                                   "--views-dir", str(views)])


def test_the_plan_failing_on_spark_after_the_charge(spark_server, datasets_dir, tmp_path):
    views = tmp_path / "views"  # this gateway's own view, whose files the engine loses
    gateway = _spark_gateway(datasets_dir, tmp_path, spark_server.remote, views).start()
    try:
        grant = gateway.grant(epsilon=2.0)
        gw = Gateway(gateway.url, grant["token"])
        (view,) = [p for p in views.iterdir() if (p / "view.json").is_file()]
        parts = sorted(view.glob("_part=*"))
        hidden = tmp_path / "hidden"
        hidden.mkdir()
        for part in parts:  # the compiled plan then fails on the server, after the charge
            part.rename(hidden / part.name)

        def repair() -> GatewayProcess:
            for part in parts:
                (hidden / part.name).rename(part)
            return gateway

        _failed_then_released(gateway, gw, grant, repair)
    finally:
        gateway.stop()


def test_the_spark_server_out_of_reach_after_the_charge(spark_server, datasets_dir, views_dir,
                                                        tmp_path):
    # The view is built (once, on the live server); then this gateway is restarted
    # against an address where no Spark server answers, as if the server had died.
    gateway = _spark_gateway(datasets_dir, tmp_path, spark_server.remote, views_dir).start()
    gateway.stop()
    gateway.options[gateway.options.index("--spark-remote") + 1] = \
        f"sc://127.0.0.1:{free_port()}"
    gateway.start()
    try:
        grant = gateway.grant(epsilon=2.0)
        gw = Gateway(gateway.url, grant["token"])
        assert httpx.get(f"{gateway.url}/v1/health").status_code == 200

        def repair() -> GatewayProcess:  # the server is back: the gateway points at it
            gateway.stop()
            gateway.options[gateway.options.index("--spark-remote") + 1] = spark_server.remote
            return gateway.start()

        _failed_then_released(gateway, gw, grant, repair)
    finally:
        gateway.stop()
