"""The sites' and the key service's HTTP layer under attack, over real HTTP to their
processes: a chunked body far over the limit, sent without credentials, and a forged
client address."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import create_engine, select

from sandbox import audit
from tests.oversize import MIB, peak_rss, send_chunked

FORGED = "10.99.0.17"


@pytest.mark.parametrize(("service", "path", "limit"), [
    ("north", "/v1/aggregate", 256 * 1024),
    ("north", "/v1/withdrawals", 32 * MIB),  # forwarded bulk intakes
    ("keys", "/v1/decrypt", 16 * MIB),
])
def test_a_chunked_oversize_body_is_refused_while_it_streams(cluster, service, path, limit):
    """Adversary: anyone who reaches a site or the key service, unsigned, streaming an
    endless chunked body (no Content-Length to refuse it by)."""
    url = cluster.keys_url if service == "keys" else cluster.sites[service]
    pid = cluster.processes[service].pid
    before = peak_rss(pid)
    total = limit + 64 * MIB
    upload = send_chunked(url, path, total)  # unsigned, and not JSON
    grown = peak_rss(pid) - before
    # 413 before the signature check (403) or parsing (422) …
    assert upload.status == 413, upload
    assert upload.body == {"error": "too_large", "reason": f"request body over {limit} bytes"}
    # … answered mid-body: the service stopped reading, and never held the body
    assert upload.sent < total - 16 * MIB, upload.sent
    assert grown < limit + 16 * MIB, f"peak memory grew by {grown / MIB:.1f} MiB"
    assert httpx.get(f"{url}/v1/health", timeout=30).status_code == 200


def test_a_forged_forwarded_for_does_not_enter_a_sites_audit(cluster):
    """Adversary: a local process sending the site an unsigned query under a forged
    address; the refusal is audited with the real peer."""
    refused = httpx.post(f"{cluster.sites['south']}/v1/aggregate", timeout=30,
                         json={"payload": {"query_id": "forged-origin"}, "signature": ""},
                         headers={"X-Forwarded-For": FORGED, "X-Real-IP": FORGED})
    assert refused.status_code in (401, 403, 422), refused.text
    engine = create_engine(f"sqlite:///{cluster.root / 'site-south' / 'site.db'}")
    with engine.connect() as conn:
        rows = conn.execute(select(audit.audit_log)).mappings().all()
    engine.dispose()
    mine = [json.loads(r["details"]) for r in rows if r["subject"] == "query:forged-origin"]
    assert mine and all(d["ip"] == "127.0.0.1" for d in mine)
    assert FORGED not in json.dumps([dict(r) for r in rows])
