"""A gateway process per database backend, serving the session's onboarded dataset."""

from __future__ import annotations

import shutil

import pytest

from tests.services import GatewayProcess
from tests.tiers import tier


@pytest.fixture(scope="session")
def datasets_dir(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(dataset, root / "emr-visits")
    return root


def _database_url(backend: str, postgres_factory, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return postgres_factory().new_database()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
@tier("service")
def gateway(backend, datasets_dir, tmp_path_factory, request):
    state = tmp_path_factory.mktemp(f"gateway-{backend}")
    url = _database_url(backend, lambda: request.getfixturevalue("postgres"), state)
    process = GatewayProcess(datasets_dir, state / "state", url).start()
    yield process
    process.stop()


@pytest.fixture
@tier("service")
def fresh_gateway(backend, datasets_dir, tmp_path, request):
    """A gateway of its own, for tests that kill or reconfigure it."""
    url = _database_url(backend, lambda: request.getfixturevalue("postgres"), tmp_path)
    process = GatewayProcess(datasets_dir, tmp_path / "state", url)
    yield process
    process.stop()
