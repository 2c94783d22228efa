"""A gateway process per database backend and engine, serving the session's onboarded
dataset: on SQLite and PostgreSQL with the Polars engine, and on SQLite with the Spark
engine against the run's one local Spark Connect server (``spark_server``)."""

from __future__ import annotations

import shutil

import pytest

from tests.services import GatewayProcess
from tests.spark import SparkConnect
from tests.tiers import tier


@pytest.fixture(scope="session")
def datasets_dir(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(dataset, root / "emr-visits")
    return root


@pytest.fixture(scope="module")
@tier("service")
def served(datasets_dir, tmp_path_factory):
    """A gateway over the session's dataset, its ledger in SQLite: one per test module
    (a module that needs another kind of ``served`` defines its own)."""
    process = GatewayProcess.on_sqlite(datasets_dir, tmp_path_factory.mktemp("served")
                                       ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["polars", "spark"])
@tier("service")
def served_on_each_engine(request, datasets_dir, tmp_path_factory):
    """A gateway over the session's dataset, its ledger in SQLite, on each engine: the
    Polars engine builds a cohort's frame and OpenDP measures it; the Spark engine builds
    it on the run's Spark Connect server and OpenDP's noise goes on its exact aggregates."""
    state = tmp_path_factory.mktemp(f"cohorts-{request.param}")
    process = GatewayProcess.on_sqlite(datasets_dir, state)
    if request.param == "spark":
        process.options = ["--engine", "spark", "--spark-remote",
                           request.getfixturevalue("spark_server").remote,
                           "--views-dir", str(request.getfixturevalue("views_dir"))]
    yield process.start()
    process.stop()


@pytest.fixture(scope="session")
@tier("service")
def spark_server(tmp_path_factory):
    """One local Spark Connect server for the whole run, started when a test needs it."""
    server = SparkConnect.start(tmp_path_factory.mktemp("spark"))
    yield server
    server.stop()


def _database_url(backend: str, postgres_factory, tmp_path) -> str:
    if backend == "postgresql":
        return postgres_factory().new_database()
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def _engine_options(backend: str, request) -> list[str]:
    if backend != "spark":
        return []
    server = request.getfixturevalue("spark_server")
    return ["--engine", "spark", "--spark-remote", server.remote,
            "--views-dir", str(request.getfixturevalue("views_dir"))]


# "spark": the ledger on SQLite, the rows read by Spark.
@pytest.fixture(scope="session", params=["sqlite", "postgresql", "spark"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def views_dir(tmp_path_factory):
    """Views shared by the gateways of a run, as one deployment's gateways share them:
    each dataset version is built once (per engine; both keep the same rows)."""
    return tmp_path_factory.mktemp("views")


def _process(backend, datasets_dir, state, url, request) -> GatewayProcess:
    return GatewayProcess(datasets_dir, state, url,
                          options=_engine_options(backend, request))


@pytest.fixture(scope="session")
@tier("service")
def gateway(backend, datasets_dir, tmp_path_factory, request):
    state = tmp_path_factory.mktemp(f"gateway-{backend}")
    url = _database_url(backend, lambda: request.getfixturevalue("postgres"), state)
    process = _process(backend, datasets_dir, state / "state", url, request).start()
    yield process
    process.stop()


@pytest.fixture
@tier("service")
def fresh_gateway(backend, datasets_dir, tmp_path, request):
    """A gateway of its own, for tests that kill or reconfigure it."""
    url = _database_url(backend, lambda: request.getfixturevalue("postgres"), tmp_path)
    process = _process(backend, datasets_dir, tmp_path / "state", url, request)
    yield process
    process.stop()
