"""Attacks on the HTTP layer of the gateway and the sites, over real processes: inputs
that end in a 500 instead of a 4xx with a reason, and unauthenticated callers writing to
a service's audit chain. The project's rule: bad input is a 4xx JSON answer with a
reason, with no state change; nothing a caller sends ends in a 500."""

from __future__ import annotations

import httpx
from sqlalchemy import create_engine, select

from sandbox import audit
from sandbox.client import Gateway
from tests.services import GatewayProcess


def _raw(process: GatewayProcess, token: str, body: str) -> httpx.Response:
    return httpx.post(f"{process.url}/v1/query", content=body, timeout=60, headers={
        "Authorization": f"Bearer {token}", "content-type": "application/json"})


def test_a_filter_literal_beyond_64_bits_is_refused_with_a_reason(datasets_dir, tmp_path):
    """Adversary: a researcher with a project token. A filter value OpenDP cannot take
    (an integer beyond 64 bits) is refused with 422 the first time a query of that shape
    is asked — OpenDP's error is wrapped while calibrating. Once the shape's scale is
    cached, ``Engine.measurement`` builds the measurement outside that wrapper and the
    same kind of value ends in 500 "internal error"."""
    gateway = GatewayProcess(datasets_dir, tmp_path / "state",
                             f"sqlite:///{tmp_path / 'gw.db'}").start()
    try:
        token = gateway.grant()["token"]
        query = ('{"dataset": "emr-visits", "kind": "count", "epsilon": 0.1, "filters": '
                 '[{"field": "length_of_stay", "op": "eq", "value": %s}]}')
        first = _raw(gateway, token, query % "1e30")  # a query of this shape: cached
        assert first.status_code == 200, first.text
        answers = {value: _raw(gateway, token, query % value)
                   for value in ("18446744073709551616", "-18446744073709551617")}
        spent = Gateway(gateway.url, token).budget()["epsilon"]["spent"]
    finally:
        gateway.stop()
    statuses = {value: (r.status_code, r.json().get("reason", "")[:80])
                for value, r in answers.items()}
    assert all(status == 422 for status, _ in statuses.values()), statuses
    assert abs(spent - 0.1) < 1e-9  # nothing charged for the refused ones


def test_service_token_inputs_are_refused_with_a_reason(datasets_dir, tmp_path):
    """Adversary: the holder of the gateway's service token (the portal, or whoever took
    its token). A grant expiring at 9999-12-31T23:59:59-23:59 (valid ISO, beyond the
    last representable instant once in UTC) and an audit page after entry 10^23 end in
    500 instead of 422."""
    gateway = GatewayProcess(datasets_dir, tmp_path / "state",
                             f"sqlite:///{tmp_path / 'gw.db'}").start()
    try:
        grant = httpx.post(f"{gateway.url}/v1/admin/grants", timeout=60, content=(
            '{"project": "p", "datasets": ["emr-visits"], "fields": ["sex"], "purpose": '
            '"medical_research", "epsilon": 1, "expires_at": "9999-12-31T23:59:59-23:59"}'),
            headers={"Authorization": f"Bearer {gateway.admin_token}",
                     "content-type": "application/json"})
        page = gateway.admin("GET", "/v1/admin/audit?after_seq=" + "9" * 23)
        hashes = gateway.admin("GET", "/v1/admin/audit/hashes?seqs=" + "9" * 23)
    finally:
        gateway.stop()
    statuses = {"grant": grant.status_code, "audit page": page.status_code,
                "audit hashes": hashes.status_code}
    assert all(400 <= s < 500 for s in statuses.values()), statuses


def test_an_unauthenticated_caller_cannot_write_a_large_entry_into_a_sites_chain(cluster):
    """Adversary: anyone who can reach a site. An unsigned request is refused (401), and
    the refusal is audited with ``query:<the payload's query_id>`` as its subject — the
    caller's string, unbounded (the key service cuts it to 64 characters; the site does
    not). Each request of ~200 kB writes ~200 kB into the site's audit chain (and on
    PostgreSQL, where the subject column holds 200 characters, the refusal becomes a
    500). Guarantee asserted: the subject stays within its column."""
    url = cluster.sites["east"]
    refused = httpx.post(f"{url}/v1/aggregate", timeout=60,
                         json={"payload": {"query_id": "x" * 200_000}, "signature": "AA=="})
    assert refused.status_code == 401, refused.text
    engine = create_engine(f"sqlite:///{cluster.root / 'site-east' / 'site.db'}")
    with engine.connect() as conn:
        subject = conn.execute(select(audit.audit_log.c.subject).where(
            audit.audit_log.c.action == "site.refused").order_by(
            audit.audit_log.c.seq.desc()).limit(1)).scalar()
    engine.dispose()
    assert subject is not None and len(subject) <= 200, \
        f"an unauthenticated request wrote a subject of {len(subject or '')} characters"
