"""Gateway replicas on one PostgreSQL database: a project token spread over two replicas
gets one rate limit, not two; a grant made on one is served by the other, and a budget
spent on one is spent on both."""

from __future__ import annotations

import time

import httpx

from tests.services import GatewayProcess


def test_two_replicas_share_a_tokens_rate_limit_and_its_budget(postgres, datasets_dir,
                                                               tmp_path):
    url = postgres.new_database()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = GatewayProcess(datasets_dir, tmp_path / "a" / "state", url, rate_limit=1).start()
    second = GatewayProcess(datasets_dir, tmp_path / "b" / "state", url, rate_limit=1)
    second.state_dir.mkdir()
    # the replicas share their service token (as a deployment would hand it to both)
    (second.state_dir / "admin.token").write_text(first.admin_token)
    second.start()
    try:
        made = first.grant(epsilon=1.0)
        headers = {"Authorization": f"Bearer {made['token']}"}
        codes = [httpx.get(f"{gateway.url}/v1/budget", headers=headers, timeout=30).status_code
                 for _ in range(8) for gateway in (first, second)]
        # burst 10 at 1 request per second: 16 quick requests over both replicas meet the
        # one shared bucket (each replica alone would have allowed all 8 of its own)
        assert codes[:10] == [200] * 10 and 429 in codes[10:]
        time.sleep(3)  # the bucket refills (1 a second)
        spent = httpx.post(f"{first.url}/v1/query", headers=headers, timeout=60, json={
            "dataset": "emr-visits", "kind": "count", "epsilon": 0.6})
        assert spent.status_code == 200, spent.text
        over = httpx.post(f"{second.url}/v1/query", headers=headers, timeout=60, json={
            "dataset": "emr-visits", "kind": "count", "group_by": ["sex"], "epsilon": 0.6})
        assert over.status_code == 403 and "remain" in over.json()["reason"]
    finally:
        first.stop()
        second.stop()
