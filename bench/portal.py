"""Benchmark: portal pages with 10,000 applications in the database.

Fills a fresh SQLite database (or ``--database-url``) with researchers, experts and
applications in every state, serves the portal with ``sandboxctl portal serve`` (waitress),
signs in as a researcher and as the chair (both with TOTP), and times the main pages sequentially
(p50, p95) and under 8 concurrent clients (requests/s). Beside them, in the same run, the
same server stack answers a static health page — the floor any page costs.

    .venv/bin/python bench/portal.py [--applications 10000] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyotp
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from approvals.institutions import key  # noqa: E402
from portal.db import connect  # noqa: E402
from portal.models import (  # noqa: E402
    Application,
    Assignment,
    Institution,
    InstitutionKey,
    Profile,
    RequestedField,
    User,
)
from portal.security import hash_password  # noqa: E402
from tests.services import free_port  # noqa: E402

PASSWORD = "bench-password-1"
STATES = ("submitted", "under_review", "approved", "rejected", "active", "draft",
          "revision_requested", "closed")


def fill(database_url: str, applications: int) -> tuple[str, str, str]:
    engine, _ = connect(database_url)
    secret = pyotp.random_base32()
    digest = hash_password(PASSWORD)
    with engine.begin() as conn:
        # every row names every column: an executemany takes its columns from the first row
        plain = {"password_hash": digest, "totp_secret": None, "totp_enabled": False}
        users = [{"email": f"r{i}@bench.cn", "name": f"研究员{i}", "role": "researcher",
                  **plain} for i in range(200)]
        users[0] |= {"totp_secret": secret, "totp_enabled": True}  # the one who signs in
        users += [{"email": f"e{i}@bench.cn", "name": f"专家{i}", "role": "expert", **plain}
                  for i in range(10)]
        users.append({"email": "chair@bench.cn", "name": "主任", "role": "chair",
                      "password_hash": digest, "totp_secret": secret, "totp_enabled": True})
        conn.execute(insert(User), users)
        conn.execute(insert(Institution), [{"id": k + 1, "name_zh": f"机构{k}",
                                            "name_en": f"Institute {k}", "aliases": []}
                                           for k in range(40)])
        conn.execute(insert(InstitutionKey), [{"key": key(name), "institution_id": k + 1}
                                              for k in range(40)
                                              for name in (f"机构{k}", f"Institute {k}")])
        conn.execute(insert(Profile), [{"user_id": i + 1, "institution_id": 1 + i % 40,
                                        "title": "研究员", "years_experience": 10,
                                        "credit_grade": "A"} for i in range(len(users))])
        conn.execute(insert(Application), [{
            "researcher_id": 1 + i % 200, "title": f"研究项目 {i}", "summary": "摘要" * 20,
            "purpose": "medical_research", "non_profit": True, "epsilon_requested": 1.0,
            "term_months": 12, "team": [], "state": STATES[i % len(STATES)],
        } for i in range(applications)])
        conn.execute(insert(RequestedField), [{
            "application_id": 1 + i // 3, "dataset": "emr-visits",
            "field": ("sex", "age_band", "total_cost")[i % 3], "justification": "需要"}
            for i in range(applications * 3)])
        conn.execute(insert(Assignment), [{"application_id": 2 + 8 * k, "expert_id": 201 + j}
                                          for k in range(applications // 8) for j in range(3)])
    engine.dispose()
    return "r0@bench.cn", "chair@bench.cn", secret


def sign_in(base: str, email: str, secret: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60, follow_redirects=False)
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    if secret:
        page = client.get("/mfa").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        client.post("/mfa", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    return client


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return out


def throughput(clients: list[httpx.Client], path: str, n: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(lambda c: [c.get(path) for _ in range(n // len(clients))], clients))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'portal.db'}"
        researcher, chair, secret = fill(url, args.applications)
        port = free_port()
        env = os.environ | {"SANDBOX_PORTAL_DATABASE_URL": url,
                            "SANDBOX_PORTAL_STATE_DIR": str(Path(tmp) / "state"),
                            "SANDBOX_PORTAL_DATASETS_DIR": str(ROOT / "var" / "datasets"),
                            "SANDBOX_PORTAL_LOGIN_RATE": "1000 per minute"}
        server = subprocess.Popen([str(Path(sys.executable).parent / "sandboxctl"), "portal",
                                   "serve", "--port", str(port)], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    httpx.get(f"{base}/login", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            as_researcher = sign_in(base, researcher, secret)
            as_chair = sign_in(base, chair, secret)
            pages = [("baseline: sign-in page", as_researcher, "/login"),
                     ("catalog", as_researcher, "/"),
                     ("researcher: my applications", as_researcher, "/applications/"),
                     ("researcher: one application", as_researcher, "/applications/1"),
                     ("chair: review queue", as_chair, "/committee/"),
                     ("chair: application scores", as_chair, "/committee/applications/2"),
                     ("chair: API list", as_chair, "/api/v1/applications")]
            print(f"{args.applications:,} applications in the database\n")
            print(f"{'page':<30} {'p50 ms':>8} {'p95 ms':>8} {'req/s (8 clients)':>18}")
            for name, client, path in pages:
                times = timed(client, path, max(20, args.requests // 4))
                helpers = [sign_in(base, chair, secret) if client is as_chair
                           else sign_in(base, researcher) for _ in range(8)]
                rate = throughput(helpers, path, args.requests)
                print(f"{name:<30} {statistics.median(times):>8.1f} "
                      f"{statistics.quantiles(times, n=20)[-1]:>8.1f} {rate:>18.1f}",
                      flush=True)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
