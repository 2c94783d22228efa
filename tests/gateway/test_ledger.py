"""Budgets hold: under 200 concurrent queries, and across a kill -9 in the middle of a
burst. Nothing is ever released without its charge."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import create_engine, select

from sandbox import audit
from sandbox.gateway.store import grants, releases


def fire(gateway, token: str, specs: list[dict], workers: int = 40) -> list[tuple[int, dict]]:
    headers = {"Authorization": f"Bearer {token}"}

    def one(spec: dict) -> tuple[int, dict]:
        try:
            r = httpx.post(f"{gateway.url}/v1/query", json=spec, headers=headers, timeout=120)
            return r.status_code, r.json()
        except httpx.HTTPError as exc:
            return -1, {"reason": str(exc)}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, specs))


def spec(i: int, epsilon: float = 0.1) -> dict:
    return {"dataset": "emr-visits", "kind": "count", "epsilon": epsilon,
            "filters": [{"field": "length_of_stay", "op": "ge", "value": i}]}


def ledger(database_url: str, grant_id: str) -> tuple[dict, list[dict]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        g = conn.execute(select(grants).where(grants.c.id == grant_id)).mappings().one()
        rows = conn.execute(select(releases).where(releases.c.grant_id == grant_id)
                            ).mappings().all()
        chain = audit.verify(conn)
    engine.dispose()
    assert chain.ok, chain.problem
    return dict(g), [dict(r) for r in rows]


def test_200_parallel_queries_against_a_budget_for_50(gateway):
    grant = gateway.grant(epsilon=5.0)
    gateway_warm = httpx.post(f"{gateway.url}/v1/preview", json=spec(0), timeout=120,
                              headers={"Authorization": f"Bearer {grant['token']}"})
    assert gateway_warm.status_code == 200
    results = fire(gateway, grant["token"], [spec(i) for i in range(200)])
    ok = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 403]
    assert len(ok) == 50 and len(refused) == 150
    assert all(body["error"] == "budget_exhausted" for body in refused)
    g, rows = ledger(gateway.database_url, grant["grant"]["id"])
    # ε in exact millionths: 50 × 0.1 is the whole 5.0, to the unit
    assert g["epsilon_spent_micro"] == g["epsilon_total_micro"] == 5_000_000
    assert len(rows) == 50 and all(r["status"] == "released" for r in rows)
    assert sum(r["epsilon_micro"] for r in rows) == g["epsilon_spent_micro"]
    assert {body["release"] for body in ok} == {r["id"] for r in rows}


def test_kill_9_during_a_burst_leaves_the_ledger_consistent(fresh_gateway):
    fresh_gateway.options = ["--max-epsilon", "100"]  # 400 queries of ε = 0.2
    gateway = fresh_gateway.start()
    grant = gateway.grant(epsilon=100.0)
    token = grant["token"]
    httpx.post(f"{gateway.url}/v1/preview", json=spec(0, 0.2),
               headers={"Authorization": f"Bearer {token}"}, timeout=120)
    results: list[tuple[int, dict]] = []
    burst = threading.Thread(target=lambda: results.extend(
        fire(gateway, token, [spec(i, 0.2) for i in range(400)], workers=20)))
    burst.start()
    engine = create_engine(gateway.database_url)
    deadline = time.monotonic() + 60
    with engine.connect() as conn:  # kill once the burst is well under way
        while time.monotonic() < deadline:
            done = conn.execute(select(releases.c.id).where(
                releases.c.status == "released")).all()
            conn.rollback()
            if len(done) >= 30:
                break
            time.sleep(0.05)
    engine.dispose()
    gateway.kill9()
    burst.join()
    answered = {body["release"]: body for status, body in results if status == 200}
    assert 0 < len(answered) < 400, "the kill should land mid-burst"
    assert any(status == -1 for status, _ in results)

    g, rows = ledger(gateway.database_url, grant["grant"]["id"])
    by_id = {r["id"]: r for r in rows}
    # every answer a client received was recorded, with its value, before it was sent
    for release_id, body in answered.items():
        assert by_id[release_id]["status"] == "released"
        assert json.loads(by_id[release_id]["value"]) == body["result"]
    # every row is charged; the grant's total is exactly the sum of its rows
    assert sum(r["epsilon_micro"] for r in rows) == g["epsilon_spent_micro"]
    assert all(r["status"] in ("charged", "released", "failed") for r in rows)
    assert all(r["value"] is None for r in rows if r["status"] != "released")

    gateway.start()
    before = g["epsilon_spent_micro"]
    unfinished = [json.loads(r["spec"]) for r in rows if r["status"] != "released"]
    for again in unfinished[:3]:  # re-sending a charged, unanswered query costs nothing
        response = httpx.post(f"{gateway.url}/v1/query", json=again,
                              headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert response.status_code == 200, response.text
    g_after, _ = ledger(gateway.database_url, grant["grant"]["id"])
    assert g_after["epsilon_spent_micro"] == before
