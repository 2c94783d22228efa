"""Round 4 of attacks on the data plane: /v1/query parsing its own body after the token's
check, the Polars engine holding integers narrow (fills skipped for clean columns, the
cast's truncation for non-negative fixed point), and withdrawals under a database
administrator (a shrinking set stops the answers; the gateway writes back, as it starts,
what its audit chain records).

Each test asserts the guarantee: it fails where the guarantee does not hold."""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import delete, func, insert, select, update

from sandbox.db import make_engine
from sandbox.gateway.app import Project
from sandbox.gateway.store import withdrawals
from sandbox.queries.exact import PolarsExecutor
from sandbox.queries.plan import ExactPlan, Value, consent_column
from sandbox.queries.spec import Filter, QuerySpec
from tests.audit_attacks import plant
from tests.services import GatewayProcess

DATASET = "emr-visits"
MR = "medical_research"
STRICT_PSEUDONYM = re.compile(r"[0-9a-f]{64}")
LIMIT = 64 * 1024  # the gateway's default body limit


# -- helpers ---------------------------------------------------------------------------------
def _start(datasets_dir: Path, root: Path, url: str | None = None, **extra) -> GatewayProcess:
    root.mkdir(parents=True, exist_ok=True)
    gateway = GatewayProcess(datasets_dir, root / "state", url or f"sqlite:///{root}/g.db",
                             options=["--max-epsilon", "1000"], **extra)
    gateway.state_dir.mkdir(parents=True, exist_ok=True)
    return gateway.start()


def _view(gateway: GatewayProcess) -> pl.DataFrame:
    files = sorted(gateway.state_dir.glob("views/**/*.parquet"))
    assert files
    return pl.read_parquet(files, columns=["pseudonym", consent_column(MR)])


def _truth(view: pl.DataFrame, excluded: set[str]) -> int:
    return view.filter(pl.col(consent_column(MR))
                       & ~pl.col("pseudonym").is_in(sorted(excluded))).height


def _heavy_patients(view: pl.DataFrame, n: int, skip: int = 0) -> list[str]:
    """``n`` consenting patients with the most rows (so that leaving them out shows)."""
    ranked = (view.filter(pl.col(consent_column(MR))).group_by("pseudonym").len()
              .sort(["len", "pseudonym"], descending=[True, False]))
    return ranked["pseudonym"][skip:skip + n].to_list()


class Asker:
    """A researcher asking ever new counts at ε = 10 (noise scale of a few rows)."""

    def __init__(self, gateway: GatewayProcess, token: str) -> None:
        self.url, self.token, self.n = gateway.url, token, count()

    def ask(self, url: str | None = None) -> httpx.Response:
        body = {"dataset": DATASET, "kind": "count", "epsilon": 10 - next(self.n) * 1e-6}
        return httpx.post(f"{url or self.url}/v1/query", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {self.token}"})


def _excludes_or_refuses(answer: httpx.Response, truth: int, slack: int = 40) -> None:
    """The guarantee for a withdrawn patient: the answer leaves them out, or there is none
    (503, nothing answered)."""
    if answer.status_code == 503:
        assert answer.json()["error"] and "Traceback" not in answer.text
        return
    assert answer.status_code == 200, answer.text
    value = answer.json()["result"][0]["count"]
    assert abs(value - truth) < slack, (value, truth)


def _spent(gateway: GatewayProcess, grant_id: str) -> float:
    return gateway.admin("GET", f"/v1/admin/grants/{grant_id}").json()["epsilon_spent"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture(scope="module")
def served(datasets_dir, tmp_path_factory):
    gateway = _start(datasets_dir, tmp_path_factory.mktemp("round4-http"))
    yield gateway
    gateway.stop()


# == 1. /v1/query: the token first, then the body parsed from its bytes ======================
ODD_BODIES: dict[str, bytes] = {
    "empty": b"",
    "array": b"[]",
    "number": b"5",
    "null": b"null",
    "string": b'"count"',
    "truncated": b'{"dataset": "emr-visits", "kind": ',
    "not utf-8": b'{"dataset": "\xff\xfe", "kind": "count", "epsilon": 1}',
    "latin-1": '{"dataset": "emr-visits\xe9", "kind": "count", "epsilon": 1}'.encode("latin-1"),
    "raw NUL": b'{"dataset": "emr\x00visits", "kind": "count", "epsilon": 1}',
    "lone surrogate": b'{"dataset": "emr-visits", "kind": "count", "epsilon": 1, "filters": '
                      b'[{"field": "sex", "op": "eq", "value": "\\udc00"}]}',
    "deep": b'{"dataset": "emr-visits", "kind": "count", "epsilon": 1, "filters": '
            + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "digits": b'{"dataset": "emr-visits", "kind": "count", "epsilon": ' + b"9" * 6000 + b"}",
    "beyond 64 bits": b'{"dataset": "emr-visits", "kind": "count", "epsilon": 1, "filters": '
                      b'[{"field": "length_of_stay", "op": "eq", '
                      b'"value": 18446744073709551616}]}',
    "1e400": b'{"dataset": "emr-visits", "kind": "count", "epsilon": 1, "filters": '
             b'[{"field": "sex", "op": "eq", "value": 1e400}]}',
    "NaN": b'{"dataset": "emr-visits", "kind": "count", "epsilon": NaN}',
    "Infinity": b'{"dataset": "emr-visits", "kind": "count", "epsilon": Infinity}',
    "trailing": b'{"dataset": "emr-visits", "kind": "count", "epsilon": 1} {}',
    "extra key": b'{"dataset": "emr-visits", "kind": "count", "epsilon": 1, "sql": "x"}',
}


def test_without_a_valid_token_no_odd_body_is_parsed_or_charged(served):
    """Adversary: a caller with no token, a wrong one, or a token in a spelling the
    gateway does not take, sending every odd body. Guarantee: 401 (never 422 — the body is
    not parsed), JSON with a reason, no stack trace, nothing spent or audited."""
    grant = served.grant(epsilon=5.0)
    token = grant["token"]
    refused_headers = [
        [], [("Authorization", "Bearer")],
        [("Authorization", "Bearer not-a-token")], [("Authorization", f"Basic {token}")],
        [("Authorization", f"Token {token}")], [("Authorization", f"Bearer\t{token}")],
        [("Authorization", token)], [("Authorization", f"Bearer {token}x")],
        [("Authorization", f"Bearer{token}")],
        # two headers: the first one is the one read (as FastAPI's Header does)
        [("Authorization", "Bearer bogus"), ("Authorization", f"Bearer {token}")],
    ]
    audit_before = len(served.admin("GET", "/v1/admin/audit?limit=5000").json()["entries"])
    for name, body in ODD_BODIES.items():
        for headers in refused_headers:
            for content_type in ("application/json", "text/plain"):
                answer = httpx.post(f"{served.url}/v1/query", content=body, timeout=60,
                                    headers=[*headers, ("Content-Type", content_type)])
                assert answer.status_code == 401, (name, headers, answer.text)
                assert answer.json()["error"] == "unauthenticated" and answer.json()["reason"]
    assert _spent(served, grant["grant"]["id"]) == 0
    entries = served.admin("GET", "/v1/admin/audit?limit=5000").json()["entries"]
    assert not [e for e in entries[audit_before:] if e["action"].startswith(("query.",
                                                                             "release."))]


def test_malformed_bodies_from_a_valid_token_are_422_with_a_reason_and_charge_nothing(
        datasets_dir, tmp_path, db_url):
    """Adversary: a researcher with a valid token sending bodies no question parses from
    (and strings carrying NUL, which PostgreSQL's text cannot hold). Guarantee: 422
    {"error": "invalid_input", "reason"} for what does not parse, a 4xx JSON refusal with a
    reason for the rest — never a 500 or a trace — and nothing charged."""
    gateway = _start(datasets_dir, tmp_path / "gw", db_url)
    try:
        grant = gateway.grant(epsilon=5.0)
        auth = {"Authorization": f"Bearer {grant['token']}"}
        problems = []
        for name, body in ODD_BODIES.items():
            answer = httpx.post(f"{gateway.url}/v1/query", content=body, timeout=60,
                                headers=auth | {"Content-Type": "application/json"})
            if answer.status_code != 422 or answer.json().get("error") != "invalid_input" \
                    or not answer.json().get("reason") or "Traceback" in answer.text:
                problems.append((name, answer.status_code, answer.text[:200]))
        nul = "\u0000"
        for name, spec in {
            "NUL in the dataset": {"dataset": f"emr{nul}visits", "kind": "count",
                                   "epsilon": 1},
            "NUL in a filter's field": {"dataset": DATASET, "kind": "count", "epsilon": 1,
                                        "filters": [{"field": f"sex{nul}", "op": "eq",
                                                     "value": "x"}]},
            "NUL in a filter's value": {"dataset": DATASET, "kind": "count", "epsilon": 1,
                                        "filters": [{"field": "sex", "op": "eq",
                                                     "value": f"x{nul}"}]},
            "NUL in a field": {"dataset": DATASET, "kind": "sum", "field": f"total{nul}",
                               "epsilon": 1},
        }.items():
            answer = httpx.post(f"{gateway.url}/v1/query", json=spec, headers=auth,
                                timeout=60)
            if not 400 <= answer.status_code < 500 or "Traceback" in answer.text \
                    or not answer.json().get("reason"):
                problems.append((name, answer.status_code, answer.text[:200]))
        assert not problems, problems
        assert _spent(gateway, grant["grant"]["id"]) == 0
        good = httpx.post(f"{gateway.url}/v1/query", headers=auth, timeout=60,
                          json={"dataset": DATASET, "kind": "count", "epsilon": 0.5})
        assert good.status_code == 200, good.text
    finally:
        gateway.stop()


def test_a_question_in_another_content_type_is_answered_as_before(served):
    """Claim: /v1/query behaves as before the change (FastAPI's own parsing of a
    ``QuerySpec`` parameter, which /v1/preview still uses). Before, a body sent as
    text/plain or with no content type was not read as JSON (422), and a JSON body in
    UTF-16 or with a byte-order mark was. Guarantee: /v1/query and /v1/preview treat each
    of these bodies alike — but one: a body with no content type at all is read as JSON by
    /v1/query (a client that names none still sends JSON; nothing else is accepted)."""
    grant = served.grant(epsilon=5.0)
    auth = [("Authorization", f"Bearer {grant['token']}")]
    spec = {"dataset": DATASET, "kind": "count", "epsilon": 0.25}
    text = json.dumps(spec)
    cases = {
        "text/plain": (text.encode(), [("Content-Type", "text/plain")]),
        "form": (text.encode(), [("Content-Type", "application/x-www-form-urlencoded")]),
        "UTF-16 JSON": (text.encode("utf-16"), [("Content-Type", "application/json")]),
        "JSON with a BOM": (text.encode("utf-8-sig"), [("Content-Type", "application/json")]),
    }
    differ = []
    for name, (body, headers) in cases.items():
        query = httpx.post(f"{served.url}/v1/query", content=body, headers=auth + headers,
                           timeout=60)
        preview = httpx.post(f"{served.url}/v1/preview", content=body,
                             headers=auth + headers, timeout=60)
        if (query.status_code == 200) != (preview.status_code == 200):
            differ.append((name, query.status_code, preview.status_code))
    assert not differ, f"/v1/query and /v1/preview (the old parsing) differ: {differ}"
    unnamed = httpx.post(f"{served.url}/v1/query", content=text.encode(), headers=auth,
                         timeout=60)
    assert unnamed.status_code == 200, unnamed.text


def test_token_spellings_are_taken_as_on_every_other_route(served):
    """Guarantee: /v1/query takes exactly the Authorization spellings that the routes
    using FastAPI's Header dependency take (scheme in any case, spaces around the token,
    the header's name in any case), and refuses the rest."""
    grant = served.grant(epsilon=5.0)
    token = grant["token"]
    spellings = [
        [("Authorization", f"Bearer {token}")], [("authorization", f"bearer {token}")],
        [("AUTHORIZATION", f"BEARER {token}")], [("Authorization", f"Bearer   {token}")],
        [("Authorization", f"bEaReR {token}")], [("Authorization", f"Bearer\t{token}")],
        [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer bogus")],
        [("Authorization", "Bearer bogus"), ("Authorization", f"Bearer {token}")],
    ]
    body = {"dataset": DATASET, "kind": "count", "epsilon": 0.5}  # one question, repeated
    for headers in spellings:
        query = httpx.post(f"{served.url}/v1/query", json=body, headers=headers, timeout=60)
        budget = httpx.get(f"{served.url}/v1/budget", headers=headers, timeout=60)
        assert query.status_code == budget.status_code, (headers, query.text, budget.text)
    assert _spent(served, grant["grant"]["id"]) == pytest.approx(0.5)


def test_the_body_limit_holds_on_the_query_route_before_the_token(served):
    """Adversary: anyone, token or not, sending more than the body limit — declared, or
    chunked with no length. Guarantee: 413 before anything is parsed or checked; a body
    at the limit from a valid token is parsed (422); the gateway goes on serving."""
    grant = served.grant(epsilon=5.0)
    auth = {"Authorization": f"Bearer {grant['token']}"}

    def chunks(total: int):
        sent = 0
        while sent < total:
            piece = b" " * min(8192, total - sent)
            sent += len(piece)
            yield piece

    for headers in ({}, {"Authorization": "Bearer nope"}, auth):
        chunked = httpx.post(f"{served.url}/v1/query", content=chunks(4 * LIMIT),
                             headers=headers, timeout=60)
        assert chunked.status_code == 413, chunked.text
        assert chunked.json()["error"] == "too_large"
        declared = httpx.post(f"{served.url}/v1/query", content=b"{" + b" " * LIMIT + b"}",
                              headers=headers, timeout=60)
        assert declared.status_code == 413, declared.text
    at_limit = httpx.post(f"{served.url}/v1/query", timeout=60,
                          content=b"{" + b" " * (LIMIT - 2) + b"}", headers=auth)
    assert at_limit.status_code == 422 and at_limit.json()["error"] == "invalid_input"
    chunked_ok = httpx.post(f"{served.url}/v1/query", headers=auth, timeout=60, content=iter(
        [b'{"dataset": "emr-visits", ', b'"kind": "count", ', b'"epsilon": 0.5}']))
    assert chunked_ok.status_code == 200, chunked_ok.text
    assert _spent(served, grant["grant"]["id"]) == pytest.approx(0.5)


def test_the_query_routes_audit_entries_record_the_callers_address(served):
    """Guarantee: the entries /v1/query writes — a token used outside its networks, a
    charge, a refusal — carry the caller's address (the TCP peer), now that the route's
    work runs in a worker thread."""
    peer = "127.0.0.77"
    client = httpx.Client(transport=httpx.HTTPTransport(local_address=peer), timeout=60)
    bound = served.grant(epsilon=5.0)
    assert served.admin("PUT", f"/v1/admin/grants/{bound['grant']['id']}/networks",
                        {"networks": ["10.77.0.0/16"]}).status_code == 200
    outside = client.post(f"{served.url}/v1/query", content=b"not json at all",
                          headers={"Authorization": f"Bearer {bound['token']}"})
    assert outside.status_code == 403, outside.text  # not 422: the body is never parsed
    free = served.grant(epsilon=5.0)
    auth = {"Authorization": f"Bearer {free['token']}"}
    charged = client.post(f"{served.url}/v1/query", headers=auth,
                          json={"dataset": DATASET, "kind": "count", "epsilon": 0.5})
    assert charged.status_code == 200, charged.text
    refused = client.post(f"{served.url}/v1/query", headers=auth,
                          json={"dataset": DATASET, "kind": "count", "epsilon": 0.5,
                                "group_by": ["no_such_field"]})
    assert refused.status_code == 422, refused.text
    entries = served.admin("GET", "/v1/admin/audit?limit=5000").json()["entries"]
    mine = {f"grant:{bound['grant']['id']}", f"grant:{free['grant']['id']}"}
    actions = {e["action"]: e["details"] if isinstance(e["details"], dict)
               else json.loads(e["details"]) for e in entries if e["actor"] in mine}
    for action in ("token.misplaced", "release.charged", "query.refused"):
        assert action in actions, (action, actions)
        assert actions[action].get("ip") == peer, (action, actions[action])
    client.close()


def test_concurrent_questions_bad_tokens_and_bad_bodies_never_fail_the_server(served):
    """Adversary: many callers at once — valid questions, malformed bodies from a valid
    token, and bad tokens. Guarantee: each gets its own answer (200, 422 or 401), none a
    500; exactly the valid questions are charged."""
    grant = served.grant(epsilon=50.0)
    auth = {"Authorization": f"Bearer {grant['token']}"}
    calls = []
    for k in range(20):
        calls.append(("ok", auth, json.dumps({"dataset": DATASET, "kind": "count",
                                               "epsilon": 0.1 + k * 1e-6}).encode()))
        calls.append(("bad body", auth, ODD_BODIES[list(ODD_BODIES)[k % len(ODD_BODIES)]]))
        calls.append(("bad token", {"Authorization": "Bearer x" * (k + 1)},
                      b'{"dataset": "emr-visits", "kind": "count", "epsilon": 0.1}'))
    random.Random(4).shuffle(calls)

    def call(item):
        kind, headers, body = item
        return kind, httpx.post(f"{served.url}/v1/query", content=body, timeout=120,
                                headers=headers | {"Content-Type": "application/json"})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, calls))
    expected = {"ok": 200, "bad body": 422, "bad token": 401}
    wrong = [(k, a.status_code, a.text[:120]) for k, a in answers
             if a.status_code != expected[k]]
    assert not wrong, wrong
    spent = _spent(served, grant["grant"]["id"])
    assert spent == pytest.approx(sum(0.1 + k * 1e-6 for k in range(20)))


def test_the_openapi_document_of_the_query_route_is_as_before(served):
    """Claim: the OpenAPI document is the one FastAPI wrote from the route's parameters
    (``spec: QuerySpec, grant: Project``) before the route read its own body."""
    served_doc = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    reference = FastAPI()

    @reference.post("/v1/query", responses={200: {"content": {"application/json": {
        "schema": {"type": "object", "additionalProperties": True,
                   "title": "Response Query V1 Query Post"}}}}})
    def query(spec: QuerySpec, grant: Project) -> JSONResponse:  # pragma: no cover
        raise NotImplementedError

    expected = reference.openapi()
    assert served_doc["paths"]["/v1/query"] == expected["paths"]["/v1/query"]
    for name, schema in expected["components"]["schemas"].items():
        assert served_doc["components"]["schemas"][name] == schema, name


# == 2. The Polars engine: integers held narrow, fills skipped, truncation ===================
_EDGE_INTS = [-(2**63), -(2**63) + 1, -(2**31) - 1, -(2**31), -32769, -32768, -129, -128,
              -1, 0, 1, 127, 128, 255, 256, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31,
              2**53, 2**53 + 1, 2**63 - 1]
_EDGE_FLOATS = [-0.0, 0.0, 0.5, -0.5, 127.5, 128.0, -128.5, 255.0001, 1e19, -1e19,
                9.223372036854776e18, -9.223372036854776e18, 2.0**53, 2.0**53 + 2, 1e-300,
                100.000001, 3.3, 2.0**-40, 119.99999999, 1e308, -1e308]
_LITERALS = _EDGE_INTS + _EDGE_FLOATS
_BOUNDS = [-0.0, 0.0, 1.0, -1.0, 5.0, 0.3, 120.0, 127.0, 128.0, -128.0, 2.0**-40, 1e6,
           2.0**31, 0.5, 2.0**53, 1e15]


def _nasty_view(root: Path, seed: int) -> tuple[str, list[str], list[str]]:
    """A view in three files: integer columns that narrow to 8, 16, 32 bits (with and
    without nulls, negative, at their types' edges), floats with NaN, null, ±0.0 and
    values on likely bounds, clean floats, and the pseudonyms column."""
    rng = random.Random(seed)
    n = 3000

    def ints(lo, hi, nulls):
        return pl.Series([None if nulls and rng.random() < 0.05 else rng.randint(lo, hi)
                          for _ in range(n)], dtype=pl.Int64)

    frame = pl.DataFrame({
        "_consent_x": [rng.random() < 0.8 for _ in range(n)],
        "pseudonym": [f"p{rng.randint(0, 400)}" for _ in range(n)],
        "i8": ints(-128, 127, False),
        "u8": ints(0, 200, True),
        "i16": ints(-30000, 30000, False),
        "i32": ints(-(2**31), 2**31 - 1, True),
        "i64": pl.Series([rng.choice(_EDGE_INTS) for _ in range(n)], dtype=pl.Int64),
        "pos": ints(0, 120, False),
        "bound": pl.Series([rng.choice([0, 1, 5, 120, 127, 128]) for _ in range(n)],
                           dtype=pl.Int64),
        "f": [rng.choice([None, math.nan, -0.0, 0.0, 1.0, 5.0, -5.0, 1e300, -1e300, 0.5,
                          2.0**-40, 3.3, 120.0]) for _ in range(n)],
        "fc": [rng.choice([-0.0, 0.0, 1.0, 5.0, 0.3, 2.0**-40, 119.99999999, 120.0, 1e15])
               for _ in range(n)],
    })
    root.mkdir(parents=True)
    for k in range(3):
        frame[k * 1000:(k + 1) * 1000].write_parquet(root / f"part-{k}.parquet")
    ints_ = ["i8", "u8", "i16", "i32", "i64", "pos", "bound"]
    return str(root), ints_, [*ints_, "f", "fc"]


def _random_plan(rng: random.Random, numeric: list[str], people: list[str]) -> ExactPlan:
    filters = []
    for _ in range(rng.randint(0, 2)):
        column = rng.choice(numeric)
        op = rng.choice(["eq", "ne", "in", "lt", "le", "gt", "ge", "between"])
        if op == "in":
            value = rng.sample(_LITERALS, rng.randint(1, 4))
        elif op == "between":
            value = sorted(rng.sample(_LITERALS, 2))
        else:
            value = rng.choice(_LITERALS)
        filters.append(Filter(field=column, op=op, value=value))
    excluded = frozenset(rng.sample(people, rng.randint(1, 30))) if rng.random() < 0.3 \
        else frozenset()
    column = rng.choice(numeric)
    kind = rng.choice(["count", "sum", "histogram"])
    if kind == "count":
        return ExactPlan("_consent_x", tuple(filters), excluded=excluded)
    if kind == "sum":
        low, high = sorted(rng.sample(_BOUNDS, 2))
        if low == high:
            high = low + 1.0
        return ExactPlan("_consent_x", tuple(filters), value=Value(column, low, high),
                         bits=rng.choice([-3, 0, 1, 8, 20, 32]), excluded=excluded)
    edges = sorted(set(rng.sample([*_BOUNDS, 2.5, 60.0], rng.randint(2, 5))))
    if len(edges) < 2:
        edges = [0.0, 1.0]
    return ExactPlan("_consent_x", tuple(filters), edges=tuple(edges),
                     value=Value(column, edges[0], edges[-1]), excluded=excluded)


def _answer(executor, plan: ExactPlan, view: str):
    try:
        return executor.aggregate(plan, view)
    except Exception as exc:
        return type(exc).__name__


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.equals(b)


@pytest.mark.parametrize("seed", [11, 12])
def test_narrow_integers_and_skipped_fills_answer_as_a_scan_of_the_files(tmp_path, seed):
    """Adversary: a researcher choosing filter literals, clamp bounds and bin edges at
    and beyond the narrowed types' ranges, -0.0 bounds and values exactly on bounds, over
    columns with nulls, NaN and ±0.0; withdrawals masked or not. Guarantee: every exact
    aggregate of the in-memory engine equals a scan of the Parquet files."""
    view, ints_, numeric = _nasty_view(tmp_path / "view", seed)
    held, files = PolarsExecutor(), PolarsExecutor(in_memory=False)
    schema = held.frame(view, numeric).collect_schema()
    assert {schema[c] for c in ints_} >= {pl.Int8, pl.Int16, pl.Int32}  # narrowed indeed
    people = sorted(set(pl.read_parquet(view)["pseudonym"]))
    rng = random.Random(seed)
    differ = []
    for _ in range(700):
        plan = _random_plan(rng, numeric, people)
        here, there = _answer(held, plan, view), _answer(files, plan, view)
        if not _same(here, there):
            differ.append((plan, here, there))
    assert not differ, differ[:3]


@pytest.fixture(scope="module")
def spark(spark_server):
    from sandbox.queries.spark import SparkExecutor

    executor = SparkExecutor(spark_server.remote)
    yield executor
    executor.stop()


def test_narrow_integers_answer_as_spark_does_at_the_types_edges(tmp_path, spark):
    """Guarantee: the in-memory Polars engine (narrow integers, clean columns unfilled,
    truncation over non-negative bounds) gives the Spark engine's answer, bit for bit, for
    literals at every narrowed type's edge, -0.0 and [0, x] bounds with values on them."""
    view, ints_, _ = _nasty_view(tmp_path / "view", 21)
    held = PolarsExecutor()
    plans = []
    for column in ints_:
        for value in (-129, -128, 127, 128, 255, 256, 32767, 32768, 2**31, 2**63 - 1,
                      -(2**63), 127.5, -0.0, 1e19, 100.000001):
            plans.append(ExactPlan("_consent_x", (Filter(field=column, op="ge",
                                                         value=value),)))
        plans.append(ExactPlan("_consent_x", (Filter(field=column, op="in",
                                                     value=[259, 300, -129, 3]),)))
    for column in ("bound", "pos", "fc", "f"):
        for low, high in ((-0.0, 120.0), (0.0, 127.0), (0.0, 1.0), (-1.0, 5.0),
                          (5.0, 128.0), (0.3, 0.5)):
            plans.append(ExactPlan("_consent_x", (), value=Value(column, low, high), bits=20))
            plans.append(ExactPlan("_consent_x", (), edges=(low, (low + high) / 2, high),
                                   value=Value(column, low, high)))
    differ = []
    for plan in plans:
        here, there = _answer(held, plan, view), _answer(spark, plan, view)
        if not _same(here, there):
            differ.append((plan, here, there))
    assert not differ, differ[:3]


# == 3. Withdrawals under the gateway database's administrator ==============================
def test_rows_changed_in_place_never_put_a_withdrawn_patient_back(datasets_dir, tmp_path,
                                                                   db_url):
    """Adversary: the database's administrator, with the gateway running: changing
    withdrawn rows' pseudonyms and purposes in place (the row count unchanged), deleting
    rows while inserting as many in the same transaction, moving ids, then deleting
    outright. Guarantee: every answer leaves the withdrawn patients out or is a 503;
    a refused question is not charged and its reason names no patient; after a restart
    the rows are written back from the audit chain and the patients stay out."""
    gateway = _start(datasets_dir, tmp_path / "gw", db_url)
    db = make_engine(gateway.database_url)
    try:
        view = _view(gateway)
        grant = gateway.grant(purpose=MR, epsilon=400.0)
        asker = Asker(gateway, grant["token"])
        patients = _heavy_patients(view, 120)
        a, b, c, d = patients[:30], patients[30:60], patients[60:90], patients[90:]
        assert gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
            "withdrawals": [{"pseudonym": p, "purposes": [MR]} for p in a + b + c]}
        ).status_code == 201
        out = set(a + b + c)
        assert _truth(view, set()) - _truth(view, out) > 500
        _excludes_or_refuses(asker.ask(), _truth(view, out))

        with db.begin() as conn:  # change in place: pseudonyms and purposes
            for p in a:
                conn.execute(update(withdrawals).where(withdrawals.c.pseudonym == p)
                             .values(pseudonym=secrets.token_hex(32)))
            conn.execute(update(withdrawals).where(withdrawals.c.pseudonym.in_(b))
                         .values(purpose="public_health"))
        _excludes_or_refuses(asker.ask(), _truth(view, out))
        with db.begin() as conn:  # delete and insert as many, one transaction; ids moved
            conn.execute(delete(withdrawals).where(withdrawals.c.pseudonym.in_(c)))
            conn.execute(insert(withdrawals), [
                {"pseudonym": secrets.token_hex(32), "purpose": MR,
                 "recorded_at": "2026-01-01T00:00:00+00:00", "recorded_by": "dba"}
                for _ in c])
            conn.execute(update(withdrawals).values(id=withdrawals.c.id + 100_000))
        _excludes_or_refuses(asker.ask(), _truth(view, out))
        # a legitimate withdrawal afterwards: the set is read again (the intake is
        # recorded; its answer may already be the 503 of the tampered set)
        intake = gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
            "withdrawals": [{"pseudonym": p, "purposes": [MR]} for p in d]})
        assert intake.status_code in (201, 503), intake.text
        with db.connect() as conn:
            assert conn.execute(select(func.count()).select_from(withdrawals).where(
                withdrawals.c.pseudonym.in_(d))).scalar() == len(d)
        out |= set(d)
        spent = _spent(gateway, grant["grant"]["id"])
        answers = [asker.ask() for _ in range(3)]
        for answer in answers:
            _excludes_or_refuses(answer, _truth(view, out))
            if answer.status_code == 503:
                assert not any(p in answer.text for p in patients)
        refused = sum(answer.status_code == 503 for answer in answers)
        assert _spent(gateway, grant["grant"]["id"]) == pytest.approx(
            spent + (3 - refused) * 10, abs=1e-3)  # a refused question costs nothing

        gateway.stop()
        gateway.start()
        with db.connect() as conn:
            held = {(r.pseudonym, r.purpose) for r in conn.execute(
                select(withdrawals.c.pseudonym, withdrawals.c.purpose))}
        assert {(p, MR) for p in out} <= held
        for _ in range(2):
            _excludes_or_refuses(asker.ask(), _truth(view, out))
            assert asker.ask().status_code == 200
    finally:
        db.dispose()
        gateway.stop()


def test_a_planted_entry_with_deep_json_does_not_stop_the_gateway_starting(datasets_dir,
                                                                          tmp_path):
    """Adversary: the database's administrator planting a ``consent.withdrawn`` entry
    whose details are deeply nested JSON (the chain kept consistent). Guarantee: the
    gateway starts (restore passes the entry by) and the deleted withdrawals come back."""
    gateway = _start(datasets_dir, tmp_path / "gw")
    try:
        view = _view(gateway)
        patient = _heavy_patients(view, 1)[0]
        assert gateway.admin("POST", "/v1/admin/consent-withdrawals",
                             {"pseudonym": patient}).status_code == 201
        gateway.stop()
        plant(gateway.database_url, "consent.withdrawn", "[" * 100_000 + "]" * 100_000,
              subject=f"patient:{'a' * 64}")
        db = make_engine(gateway.database_url)
        with db.begin() as conn:
            conn.execute(delete(withdrawals))
        gateway.start()  # fails here if the planted entry stops the start
        with db.connect() as conn:
            back = conn.execute(select(withdrawals.c.pseudonym)).scalars().all()
        db.dispose()
        assert back == [patient]
    finally:
        gateway.stop()


def test_a_planted_entry_cannot_make_restore_write_a_malformed_pseudonym(datasets_dir,
                                                                         tmp_path, db_url):
    """Adversary: the database's administrator planting ``consent.withdrawn`` entries
    whose subjects only look like a pseudonym (a trailing newline, upper case, too long)
    and whose purposes are not strings. Guarantee: the gateway starts, restore writes back
    the real withdrawal and nothing that is not 64 lower-case hexadecimal characters."""
    gateway = _start(datasets_dir, tmp_path / "gw", db_url)
    try:
        view = _view(gateway)
        patient = _heavy_patients(view, 1)[0]
        assert gateway.admin("POST", "/v1/admin/consent-withdrawals",
                             {"pseudonym": patient}).status_code == 201
        gateway.stop()
        for subject, details in (
                (f"patient:{'b' * 64}\n", '{"purposes": ["*"]}'),
                (f"patient:{'C' * 64}", '{"purposes": ["*"]}'),
                (f"patient:{'d' * 65}", '{"purposes": ["*"]}'),
                (f"patient:{'e' * 64}", '{"purposes": [{"a": 1}, ["x"], null, 5, "*"]}'),
                (f"patient:{'f' * 64}", '{"purposes": "*"}')):
            plant(gateway.database_url, "consent.withdrawn", details, subject=subject)
        db = make_engine(gateway.database_url)
        with db.begin() as conn:
            conn.execute(delete(withdrawals))
        gateway.start()  # fails here if a planted entry stops the start
        with db.connect() as conn:
            back = conn.execute(select(withdrawals.c.pseudonym)).scalars().all()
        db.dispose()
        assert patient in back
        assert all(STRICT_PSEUDONYM.fullmatch(p) for p in back), back
    finally:
        gateway.stop()


def test_two_replicas_taking_intakes_at_once_never_see_a_shrink(datasets_dir, tmp_path,
                                                                 postgres):
    """Adversary: none — two replicas on one PostgreSQL database taking single and bulk
    intakes at once (the same patients on both too), while questions go to both.
    Guarantee: no false alarm (no 503), and every question begun after an intake returned
    leaves its patients out."""
    url = postgres.new_database()
    first = _start(datasets_dir, tmp_path / "a", url)
    second = GatewayProcess(datasets_dir, tmp_path / "b" / "state", url,
                            options=["--max-epsilon", "1000"])
    second.state_dir.mkdir(parents=True)
    (second.state_dir / "admin.token").write_text(first.admin_token)
    second.start()
    try:
        view = _view(first)
        grant = first.grant(purpose=MR, epsilon=900.0)
        asker = Asker(first, grant["token"])
        patients = _heavy_patients(view, 400)
        batches = [patients[k:k + 40] for k in range(0, 400, 40)]
        done: set[str] = set()
        lock = threading.Lock()
        failures = []

        def intake(k: int) -> None:
            replica = (first, second)[k % 2]
            batch = batches[k] + batches[(k + 1) % len(batches)][:5]  # overlapping
            if k % 3 == 0:
                answers = [replica.admin("POST", "/v1/admin/consent-withdrawals",
                                         {"pseudonym": p, "purposes": [MR]}) for p in batch]
            else:
                answers = [replica.admin("POST", "/v1/admin/consent-withdrawals/batch", {
                    "withdrawals": [{"pseudonym": p, "purposes": [MR]} for p in batch]})]
            if any(a.status_code != 201 for a in answers):
                failures.append([a.text for a in answers if a.status_code != 201])
            with lock:
                done.update(batch)

        def question(k: int) -> None:
            with lock:
                before = set(done)
            answer = asker.ask((first, second)[k % 2].url)
            if answer.status_code != 200:
                failures.append(answer.text)
                return
            value = answer.json()["result"][0]["count"]
            if value > _truth(view, before) + 40:  # someone withdrawn before was read
                failures.append(("counted", value, _truth(view, before)))

        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(intake, k) for k in range(len(batches))]
            jobs += [pool.submit(question, k) for k in range(24)]
            for job in jobs:
                job.result()
        assert not failures, failures[:3]
        for replica in (first, second):
            _excludes_or_refuses(asker.ask(replica.url), _truth(view, done))
            assert asker.ask(replica.url).status_code == 200
    finally:
        first.stop()
        second.stop()
