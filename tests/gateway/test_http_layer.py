"""The gateway's HTTP layer under attack, over real HTTP to a gateway process: a forged
client address from the gateway's own host, a chunked body far over the limit, and a grant
above the largest ε a committee may set."""

from __future__ import annotations

import json

import httpx
import pytest

from approvals.decisions import MAX_EPSILON  # the portal's maximum
from tests.oversize import MIB, peak_rss, send_chunked

SANDBOX_NET, FORGED = "10.99.0.16/28", "10.99.0.17"
# Every header a proxy might use to name the client, all claiming the sandbox's address.
FORGERY = {"X-Forwarded-For": FORGED, "X-Real-IP": FORGED, "Forwarded": f"for={FORGED}"}


def audit_of(gateway) -> list[dict]:
    entries: list[dict] = []
    while page := gateway.admin("GET", f"/v1/admin/audit?limit=5000&after_seq="
                                f"{entries[-1]['seq'] if entries else 0}").json()["entries"]:
        entries += page
    return [{**e, "details": json.loads(e["details"])} for e in entries]


def bound_grant(gateway) -> dict:
    grant = gateway.grant(epsilon=1.0)
    assert gateway.admin("PUT", f"/v1/admin/grants/{grant['grant']['id']}/networks",
                         {"networks": [SANDBOX_NET]}).status_code == 200
    return grant


def test_a_forged_forwarded_for_neither_passes_the_binding_nor_enters_the_audit(gateway):
    """Adversary: anyone with a shell on the gateway's host (or any local process) holding
    a project's token, claiming to be its sandbox."""
    grant = bound_grant(gateway)
    headers = {"Authorization": f"Bearer {grant['token']}", **FORGERY}
    refused = httpx.post(f"{gateway.url}/v1/query", headers=headers, timeout=60,
                         json={"dataset": "emr-visits", "kind": "count", "epsilon": 0.1})
    assert refused.status_code == 403, refused.text
    assert "only from the project's sandbox" in refused.json()["reason"]
    spent = gateway.admin("GET", f"/v1/admin/grants/{grant['grant']['id']}").json()
    assert spent["epsilon_spent"] == 0

    # An unbound grant answers from the host; its release is audited with the real peer.
    free = gateway.grant(epsilon=1.0)
    answered = httpx.post(f"{gateway.url}/v1/query", timeout=60,
                          headers={"Authorization": f"Bearer {free['token']}", **FORGERY},
                          json={"dataset": "emr-visits", "kind": "count", "epsilon": 0.1})
    assert answered.status_code == 200, answered.text

    entries = audit_of(gateway)
    misplaced = [e for e in entries if e["action"] == "token.misplaced"
                 and e["subject"] == f"grant:{grant['grant']['id']}"]
    assert [e["details"]["client"] for e in misplaced] == ["127.0.0.1"]
    release = [e for e in entries if e["actor"] == f"grant:{free['grant']['id']}"]
    assert release and all(e["details"]["ip"] == "127.0.0.1" for e in release)
    assert FORGED not in json.dumps(entries)


@pytest.fixture
def behind_proxy(fresh_gateway):
    """A gateway deployed behind a reverse proxy on its own host (127.0.0.1)."""
    fresh_gateway.options = ["--trusted-proxy", "127.0.0.1"]
    return fresh_gateway.start()


def test_a_configured_proxy_is_believed(behind_proxy):
    grant = bound_grant(behind_proxy)
    headers = {"Authorization": f"Bearer {grant['token']}", "X-Forwarded-For": FORGED}
    answered = httpx.get(f"{behind_proxy.url}/v1/budget", headers=headers, timeout=60)
    assert answered.status_code == 200, answered.text
    without = httpx.get(f"{behind_proxy.url}/v1/budget", timeout=60,
                        headers={"Authorization": f"Bearer {grant['token']}"})
    assert without.status_code == 403  # the proxy itself is not the sandbox


@pytest.mark.parametrize("path", ["/v1/query", "/v1/exports", "/v1/admin/grants"])
def test_a_chunked_oversize_body_is_refused_while_it_streams(fresh_gateway, path):
    """Adversary: any caller, even without a token, sending an endless chunked body (no
    Content-Length to refuse it by). The limit is 64 KiB (30 MiB for exports)."""
    gateway = fresh_gateway.start()
    assert httpx.get(f"{gateway.url}/v1/health", timeout=30).status_code == 200
    limit = 30 * MIB if path.endswith("/exports") else 64 * 1024
    before = peak_rss(gateway.proc.pid)
    total = limit + 64 * MIB
    upload = send_chunked(gateway.url, path, total)  # no token, and not JSON
    grown = peak_rss(gateway.proc.pid) - before
    # 413 before authentication (401) or parsing (422) …
    assert upload.status == 413, upload
    assert upload.body == {"error": "too_large", "reason": f"request body over {limit} bytes"}
    # … answered mid-body: the gateway stopped reading, and never held the body
    assert upload.sent < total - 16 * MIB, upload.sent
    assert grown < limit + 16 * MIB, f"peak memory grew by {grown / MIB:.1f} MiB"
    # and it still serves
    assert httpx.get(f"{gateway.url}/v1/health", timeout=30).status_code == 200
    grant = gateway.grant(epsilon=1.0)
    assert httpx.get(f"{gateway.url}/v1/budget", timeout=30, headers={
        "Authorization": f"Bearer {grant['token']}"}).status_code == 200


def test_a_declared_oversize_body_is_refused_before_it_is_read(gateway):
    grant = gateway.grant()
    response = httpx.post(f"{gateway.url}/v1/query", content=b" " * 100_000, headers={
        "Authorization": f"Bearer {grant['token']}", "content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"error": "too_large", "reason": "request body over 65536 bytes"}


def test_a_grant_above_the_maximum_epsilon_is_refused(gateway):
    """Adversary: a caller holding the service token (a compromised portal, or a mistake)
    asking for more ε than any committee may grant."""
    project = "over-the-limit"
    for epsilon in (MAX_EPSILON + 0.5, 100.0, 1e6):
        response = gateway.admin("POST", "/v1/admin/grants", {
            "project": project, "datasets": ["emr-visits"], "fields": ["sex"],
            "purpose": "medical_research", "epsilon": epsilon,
            "expires_at": "2030-01-01T00:00:00Z"})
        assert response.status_code == 422, response.text
        assert response.json()["reason"] == (
            f"ε = {epsilon:g} is above the largest total a grant may have "
            f"(ε ≤ {MAX_EPSILON:g})")
    assert not [e for e in audit_of(gateway) if e["action"] == "grant.created"
                and e["details"]["project"] == project]
    assert gateway.grant(epsilon=MAX_EPSILON)["grant"]["epsilon_total"] == MAX_EPSILON


def test_the_query_route_checks_the_token_before_it_reads_the_question(fresh_gateway):
    """Adversary: a caller without a valid token (or past its rate) probing /v1/query with
    malformed questions — /v1/query parses its body itself, after the token's check."""
    fresh_gateway.rate_limit = 3
    fresh_gateway.start()
    url, bad = f"{fresh_gateway.url}/v1/query", b'{"dataset": "emr-visits", "kind": '
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        refused = httpx.post(url, content=bad, headers=headers, timeout=60)
        assert refused.status_code == 401, refused.text  # not 422: the body is never read
        assert refused.json()["error"] == "unauthenticated"
    grant = fresh_gateway.grant(epsilon=1.0)
    auth = {"Authorization": f"Bearer {grant['token']}"}
    invalid = httpx.post(url, content=bad, headers=auth, timeout=60)
    assert invalid.status_code == 422 and invalid.json()["error"] == "invalid_input"
    unknown = httpx.post(url, headers=auth, timeout=60,
                         json={"dataset": "emr-visits", "kind": "count", "epsilon": 0.1,
                               "extra": 1})
    assert unknown.status_code == 422 and "extra" in unknown.json()["reason"]
    # malformed questions spend the token's rate like any other request
    codes = [httpx.post(url, content=bad, headers=auth, timeout=60).status_code
             for _ in range(15)]  # (a burst of 10 at once)
    assert 429 in codes, codes
    spent = fresh_gateway.admin("GET", f"/v1/admin/grants/{grant['grant']['id']}").json()
    assert spent["epsilon_spent"] == 0
