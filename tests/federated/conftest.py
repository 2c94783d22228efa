"""A federation of three site processes and a key service over the session's dataset,
split by patient; gateways with and without the test-only noise switch."""

from __future__ import annotations

import pytest

from sandbox.gateway.service import GatewayService
from tests.conftest import run_cli
from tests.federated.cluster import SITES, ServedApp, authorize, start_cluster, start_exact
from tests.services import GatewayProcess
from tests.tiers import tier

DATASET = "emr-visits-federated"
FIELDS = ["length_of_stay", "total_cost", "sex", "visit_type", "age_band"]


# The portal's grant key of the session's federation (what ``grant`` signs with).
PORTAL: list = []


@pytest.fixture(scope="session")
@tier("service")
def cluster(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    split = run_cli("site", "split", dataset, "--sites", ",".join(SITES), "--out",
                    root / "parts", "--catalog-dir", root / "central")
    assert split.code == 0, split.stderr
    running = start_cluster(root / "parts", DATASET, root)
    PORTAL[:] = [running.portal_signer()]
    yield running
    running.close()


@pytest.fixture(scope="session")
@tier("service")
def exact(cluster):
    """A gateway over a federation of the same partitions whose sites add no noise
    (tests only): its answers can be compared with the pooled computation."""
    served = ServedApp(GatewayService(cluster.gateway_settings(
        "exact", federation_file=start_exact(cluster))))
    yield served
    served.close()


@pytest.fixture(scope="session")
@tier("service")
def noisy(cluster):
    """The gateway as deployed: its own process, configuration only."""
    process = GatewayProcess(cluster.root / "central", cluster.gateway_state,
                             f"sqlite:///{cluster.root / 'noisy.db'}",
                             federation_file=cluster.federation_file,
                             options=["--portal-key", str(cluster.portal_key)])
    (cluster.root / "central").mkdir(exist_ok=True)
    yield process.start()
    process.stop()


def grant(gateway, **overrides: object) -> dict:
    """A grant on the federated dataset, with the portal's signed authorization of its
    terms (as the portal sends it when an agreement is signed)."""
    body = {"project": "fed-project", "datasets": [DATASET], "fields": FIELDS,
            "purpose": "medical_research", "epsilon": 10.0,
            "expires_at": "2030-01-01T00:00:00Z"} | overrides
    if "authorization" not in body:
        body["authorization"] = authorize(PORTAL[0], body)
    response = gateway.admin("POST", "/v1/admin/grants", body)
    assert response.status_code == 201, response.text
    return response.json() | {"authorization": body["authorization"]}
