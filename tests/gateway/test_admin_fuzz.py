"""The gateway's admin reads, fuzzed over HTTP by schemathesis with the service token: no
query or path parameter the token's holder sends ends in a server error — on SQLite and on
PostgreSQL (where a NUL character or a number beyond the column's range fails in the
driver, not in a check)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error


def test_admin_reads_never_end_in_a_server_error(gateway):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    reads = [op for op in (result.ok() for result in schema.get_all_operations())
             if op.method.upper() == "GET" and op.path.startswith("/v1/admin/")]
    assert {"/v1/admin/audit", "/v1/admin/audit/anchors", "/v1/admin/audit/hashes",
            "/v1/admin/exports"} <= {op.path for op in reads}
    headers = {"Authorization": f"Bearer {gateway.admin_token}"}

    for operation in reads:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            response = case.call(headers=headers, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()


BAD = [
    ("GET", "/v1/admin/audit?after_seq=" + "9" * 23, "after_seq"),
    ("GET", "/v1/admin/audit?after_seq=-1", "after_seq"),
    ("GET", "/v1/admin/audit?since=%00", "since"),
    ("GET", "/v1/admin/audit?since=0001-01-01T00:00:00%2B01:00", "since"),
    ("GET", "/v1/admin/exports?after=yesterday", "after"),
    ("GET", "/v1/admin/audit/anchors?service=%00", "service"),
    ("GET", "/v1/admin/audit/anchors?service=portal&after_seq=" + "9" * 12, "after_seq"),
    ("GET", "/v1/admin/audit/hashes?seqs=1," + "9" * 23, "seqs"),
    ("GET", "/v1/admin/grants/a%00b/releases", "no grant"),
    ("POST", "/v1/admin/grants/a%00b/suspend", "no grant"),
    ("PUT", "/v1/admin/grants/a%00b/networks", "no grant"),
]


def test_parameters_out_of_range_get_a_reason_and_change_nothing(gateway):
    """What the fuzzing found, and the inputs of the same kinds, kept as cases: each a 4xx
    with a reason naming what was wrong, and no entry written."""
    before = gateway.admin("GET", "/v1/admin/audit/hashes").json()["last"]
    answers = {(method, path): gateway.admin(method, path, {"reason": "x", "networks": [
        "10.0.0.0/8"]} if method != "GET" else None) for method, path, _ in BAD}
    grant = gateway.admin("POST", "/v1/admin/grants", {
        "project": "p", "datasets": ["emr-visits"], "fields": ["sex"],
        "purpose": "medical_research", "epsilon": 1,
        "expires_at": "9999-12-31T23:59:59-23:59"})
    assert grant.status_code == 422 and "expires_at" in grant.json()["reason"]
    for method, path, reason in BAD:
        answer = answers[(method, path)]
        assert 400 <= answer.status_code < 500 and reason in answer.json()["reason"], \
            (method, path, answer.status_code, answer.text)
    assert gateway.admin("GET", "/v1/admin/audit/hashes").json()["last"] == before

