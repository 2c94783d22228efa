"""Attacks on the data plane, played over the real process boundary: the federation of
tests/federated (site and key-service processes, the gateway as its own process) and a
gateway process over the session's central dataset."""

from __future__ import annotations

from tests.federated.conftest import cluster, exact, noisy  # noqa: F401
from tests.gateway.conftest import datasets_dir, postgres  # noqa: F401
