"""Fixtures of the sealed-sandbox tests: the project's Docker engine and the whole stack
(see stack.py), once per session, seeded with the demo accounts and project as `make run`
seeds its own."""

from __future__ import annotations

import pytest

from tests.hub.stack import start_docker, start_stack, stop_docker
from tests.tiers import tier


@pytest.fixture(scope="session")
@tier("docker")
def docker_engine():
    client, host, started = start_docker()
    yield client, host
    client.close()
    if started:
        stop_docker()


@pytest.fixture(scope="session")
@tier("docker")
def stack(docker_engine, demo_dataset, tmp_path_factory):
    client, host = docker_engine
    running = start_stack(client, host, demo_dataset, tmp_path_factory.mktemp("hub"))
    running.seed_demo()  # as `make run` does, before any test adds an account
    yield running
    running.close()
