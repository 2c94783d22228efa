"""Attacks on the federated path after its canonical filters, grant statement relay and
row counts, over the real process boundary: site and key-service processes started with
``sandboxctl``, the gateway as its own process.

Each test asserts a guarantee of docs/federated.md, docs/threat-model.md, ADR 0011 or the
project's rules for bad input; a test that fails shows the weakness is there.
"""

from __future__ import annotations

import json
import uuid

import httpx

from tests.federated.conftest import DATASET, grant


def _ask(gateway, token: str, body: str, path: str = "/v1/federated/query") -> httpx.Response:
    """The researcher's request as raw JSON text (spelled exactly as written)."""
    return httpx.post(f"{gateway.url}{path}", content=body.encode(), timeout=300,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": "application/json"})


def _spent(gateway, grant_id: str) -> float:
    return gateway.admin("GET", f"/v1/admin/grants/{grant_id}").json()["epsilon_spent"]


def test_a_filter_value_beyond_a_double_is_refused_before_anything_is_charged(cluster,
                                                                              noisy):
    """Adversary: a researcher with a project token (or a notebook's bug) — bad input.

    The project's rule for bad input: "HTTP 4xx JSON with a reason …; no stack trace, no
    state change"; docs/federated.md: the gateway "refuses what cannot be answered" before
    it charges the ledger. ``{"op": "eq", "value": 1e400}`` is valid JSON (the number
    overflows to infinity when read; so do ``NaN`` and ``Infinity`` literals, which the
    gateway also reads). The filter model checks finiteness only for ``lt``/``le``/``gt``/
    ``ge``/``between``, so an ``eq``, ``ne`` or ``in`` filter with it passes the spec, the
    plan and the preview; the gateway charges the ledger and then fails while asking the
    sites: ``500 internal`` — "a charge already made stands" — and the ε is gone, for a
    question that can never be answered."""
    granted = grant(noisy, project=f"inf4-{uuid.uuid4().hex[:6]}")
    token, grant_id = granted["token"], granted["grant"]["id"]
    answers = {}
    for op, value in (("eq", "1e400"), ("ne", "-1e400"), ("in", "[1e400, 5]")):
        body = (f'{{"dataset": "{DATASET}", "kind": "mean", "field": "total_cost", '
                f'"epsilon": 0.5, "filters": [{{"field": "total_cost", "op": "{op}", '
                f'"value": {value}}}]}}')
        response = _ask(noisy, token, body)
        answers[op] = (response.status_code, response.text[:160])
    assert all(400 <= code < 500 for code, _ in answers.values()), (
        f"a filter on an infinite value was not refused as bad input: {answers}")
    assert _spent(noisy, grant_id) == 0.0, (
        f"bad input spent ε = {_spent(noisy, grant_id):g} of the grant: {answers}")


def test_zero_written_as_minus_zero_draws_no_fresh_noise(cluster, noisy):
    """Adversary: a researcher with a project token.

    docs/federated.md: "One question has one spelling … the gateway writes in the public
    bounds the researcher left out before it derives the id"; "one question under one
    authorization has one id, so one noise share per site and one decision, however often
    or under whatever id it is asked". Filters are canonical (``-0.0`` becomes ``0``), but
    the other numbers of a question are not: ``bounds (0, 50000)`` and ``(-0.0, 50000)``
    are the same bounds (``-0.0 < 0`` is false, so the plan takes them), and ``delta``
    ``0.0`` and ``-0.0`` the same δ (``ge=0, le=0`` both hold), yet each writes its own
    JSON, so its own fingerprint, query id, fresh noise shares at every site and a fresh
    decryption of one and the same mean. Every question has such a twin: ``delta: -0.0``
    fits any of them."""
    token = grant(noisy, project=f"zero4-{uuid.uuid4().hex[:6]}")["token"]

    def ask(low: str, delta: str) -> tuple[int, float]:
        body = (f'{{"dataset": "{DATASET}", "kind": "mean", "field": "total_cost", '
                f'"epsilon": 1.0, "bounds": [{low}, 50000], "delta": {delta}}}')
        response = _ask(noisy, token, body)
        assert response.status_code == 200, response.text
        row = response.json()["result"][0]
        return row["count"], round(row["mean"], 9)

    answers = {"as asked": ask("0", "0"), "low bound -0.0": ask("-0.0", "0"),
               "delta -0.0": ask("0", "-0.0")}
    assert len(set(answers.values())) == 1, (
        f"one question drew {len(set(answers.values()))} different noisy answers: {answers}")


def test_a_histogram_with_bounds_it_ignores_draws_no_fresh_noise(cluster, noisy):
    """Adversary: a researcher with a project token.

    docs/federated.md: "One question has one spelling"; "one question under one
    authorization has one id, so one noise share per site and one decision". A histogram
    takes its range from its bins; the spec still accepts ``bounds`` with it, which the
    plan never reads (no check against the public bounds, no effect on a slot) but the
    fingerprint does: every pair of finite numbers is another spelling of the same
    histogram, so another query id, fresh noise shares and a fresh decryption. A
    histogram's bounds are now refused (422, nothing charged)."""
    granted = grant(noisy, project=f"hist4-{uuid.uuid4().hex[:6]}")
    token, grant_path = granted["token"], f"/v1/admin/grants/{granted['grant']['id']}"

    def ask(bounds: list[float] | None):
        body = {"dataset": DATASET, "kind": "histogram", "field": "total_cost",
                "bins": [0, 2000, 5000, 50000], "epsilon": 1.0,
                **({"bounds": bounds} if bounds else {})}
        return _ask(noisy, token, json.dumps(body))

    asked = ask(None)
    assert asked.status_code == 200, asked.text
    spent = noisy.admin("GET", grant_path).json()["epsilon_spent"]
    assert spent == 1.0
    for bounds in ([1, 2], [-1e9, 1e9]):  # refused: a histogram takes bins, not bounds
        other = ask(bounds)
        assert other.status_code == 422 and "bins, not bounds" in other.json()["reason"], \
            other.text
    assert noisy.admin("GET", grant_path).json()["epsilon_spent"] == spent  # not charged


def test_a_regression_with_its_features_in_another_order_draws_no_fresh_noise(cluster,
                                                                              noisy):
    """Adversary: a researcher with a project token.

    docs/federated.md: "One question has one spelling"; "one question under one
    authorization has one id, so one noise share per site and one decision". A
    regression's features are a set as much as its filters are: ``total_cost ~ sex +
    length_of_stay`` and ``total_cost ~ length_of_stay + sex`` fit the same model with
    the same coefficients. The filters are sorted; the features are not, so each order is its own
    fingerprint, query id, fresh noise shares and fresh decryption — with p features, p!
    draws of one regression."""
    token = grant(noisy, project=f"order4-{uuid.uuid4().hex[:6]}")["token"]

    def ask(features: list[str]) -> dict[str, float]:
        body = {"dataset": DATASET, "kind": "linear_regression", "target": "total_cost",
                "features": features, "bounds": [0, 50000], "epsilon": 4.0}
        response = _ask(noisy, token, json.dumps(body))
        assert response.status_code == 200, response.text
        return {row["term"]: round(row["coefficient"], 6)
                for row in response.json()["result"]}

    forward, backward = ask(["sex", "length_of_stay"]), ask(["length_of_stay", "sex"])
    assert forward == backward, (
        f"one regression drew two different noisy fits: {forward} and {backward}")
