"""Attacks on consent at query time over gateway replicas on one PostgreSQL database.

Adversary: no one malicious — the load itself. Replicas record withdrawals at once: a slow
intake on one takes a lower id and commits after a single withdrawal on another. The
guarantee: every receipt's ``withdrawals_version`` names exactly one withdrawal set (two
receipts naming the same version were computed under the same set, on any replica)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
from sqlalchemy import create_engine, text

from sandbox.client import Gateway
from tests.services import GatewayProcess


def _served(postgres, datasets_dir, tmp_path) -> GatewayProcess:
    url = postgres.new_database()
    gateway = GatewayProcess(datasets_dir, tmp_path / "state", url)
    gateway.state_dir.mkdir(parents=True)
    return gateway.start()


def _patients(datasets_dir, n: int) -> list[str]:
    records = pl.read_parquet(datasets_dir / "emr-visits" / "restricted" / "records.parquet")
    return records["pseudonym"].unique(maintain_order=True).head(n).to_list()


def test_a_receipts_withdrawal_version_names_one_set_when_rows_commit_out_of_order(
        postgres, datasets_dir, tmp_path):
    gateway = _served(postgres, datasets_dir, tmp_path)
    slow = create_engine(gateway.database_url)
    try:
        token = gateway.grant()["token"]
        client = Gateway(gateway.url, token)
        late, early = _patients(datasets_dir, 2)
        # another replica's intake: its row takes the lower id, and commits last
        with slow.connect() as conn:
            tx = conn.begin()
            conn.execute(text(
                "INSERT INTO withdrawals (pseudonym, purpose, recorded_at, recorded_by) "
                "VALUES (:p, '*', :at, 'replica-b')"),
                {"p": late, "at": datetime.now(UTC).isoformat()})
            taken = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                                  {"pseudonym": early})
            assert taken.status_code == 201, taken.text
            first = client.count("emr-visits", epsilon=1.0)
            tx.commit()
        second = client.count("emr-visits", epsilon=1.1)  # not a repeat
        one, two = (r.receipt["payload"]["withdrawals_version"] for r in (first, second))
        # the second answer excludes `late` as well: another set, so another version
        assert one != two, (one, two)
        again = gateway.admin("POST", "/v1/admin/consent-withdrawals", {"pseudonym": early})
        assert again.json()["version"] == two
        # and the replica that never saw the late row out of order reads the same set
        other = GatewayProcess(datasets_dir, tmp_path / "b" / "state", gateway.database_url)
        other.state_dir.mkdir(parents=True)
        (other.state_dir / "admin.token").write_text(gateway.admin_token)
        other.start()
        try:
            third = Gateway(other.url, token).count("emr-visits", epsilon=1.2)
            assert third.receipt["payload"]["withdrawals_version"] == two
        finally:
            other.stop()
    finally:
        slow.dispose()
        gateway.stop()


def test_a_gateway_over_malformed_metadata_names_the_file_and_the_problem(datasets_dir,
                                                                          tmp_path):
    # adversary: a hand-edited metadata.json (a renamed table, a purpose without its id)
    root = tmp_path / "datasets"
    shutil.copytree(datasets_dir / "emr-visits", root / "emr-visits")
    path = root / "emr-visits" / "metadata.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    for change, problem in [({"tables": {"visits": document["tables"]["records"]}},
                             "records table"),
                            ({"purposes": [{"en": "research"}]}, "purposes.0.id")]:
        path.write_text(json.dumps(document | change), encoding="utf-8")
        started = subprocess.run(
            [str(Path(sys.executable).parent / "sandboxctl"), "gateway", "serve", "--port", "1",
             "--database-url", f"sqlite:///{tmp_path / 'g.db'}", "--datasets-dir", str(root),
             "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=120, env=os.environ)
        assert started.returncode == 2, started.stderr
        assert str(path) in started.stderr and problem in started.stderr, started.stderr
        assert "Traceback" not in started.stderr and "unexpected" not in started.stderr


def test_a_replica_whose_clock_runs_ahead_does_not_refill_the_shared_bucket(
        postgres, datasets_dir, tmp_path, monkeypatch):
    # adversary: a researcher spreading requests over two replicas, one of whose machine
    # clock runs ten minutes ahead (no one set it so; clocks drift)
    url = postgres.new_database()
    first = GatewayProcess(datasets_dir, tmp_path / "a" / "state", url, rate_limit=1)
    first.state_dir.mkdir(parents=True)
    first.start()
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(
        "import time\n_wall = time.time\ntime.time = lambda: _wall() + 600\n")
    monkeypatch.setenv("PYTHONPATH", f"{skew}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    second = GatewayProcess(datasets_dir, tmp_path / "b" / "state", url, rate_limit=1)
    second.state_dir.mkdir(parents=True)
    (second.state_dir / "admin.token").write_text(first.admin_token)
    second.start()
    try:
        headers = {"Authorization": f"Bearer {first.grant()['token']}"}
        began = time.monotonic()
        codes = [httpx.get(f"{gateway.url}/v1/budget", headers=headers, timeout=30).status_code
                 for _ in range(20) for gateway in (first, second)]
        elapsed = time.monotonic() - began
        # one bucket: its burst of 10 and 1 a second since — however the two clocks differ
        assert codes.count(200) <= 10 + int(elapsed) + 1, (codes, elapsed)
    finally:
        first.stop()
        second.stop()


def test_the_same_intake_sent_to_two_replicas_at_once_is_recorded_by_both(
        postgres, datasets_dir, tmp_path):
    # adversary: none — a controller's client that retries its intake on the other replica
    # while the first is still recording it
    url = postgres.new_database()
    first = GatewayProcess(datasets_dir, tmp_path / "a" / "state", url)
    first.state_dir.mkdir(parents=True)
    first.start()
    second = GatewayProcess(datasets_dir, tmp_path / "b" / "state", url)
    second.state_dir.mkdir(parents=True)
    (second.state_dir / "admin.token").write_text(first.admin_token)
    second.start()
    try:
        body = {"withdrawals": [{"pseudonym": secrets.token_hex(32)} for _ in range(5000)]}
        with ThreadPoolExecutor(2) as threads:
            answers = list(threads.map(lambda g: g.admin(
                "POST", "/v1/admin/consent-withdrawals/batch", body), (first, second)))
        assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
        assert answers[0].json()["version"] == answers[1].json()["version"] == 5000
        assert sum(a.json()["recorded"] for a in answers) == 5000  # each pair once
    finally:
        first.stop()
        second.stop()


def test_a_catalog_document_without_a_description_does_not_take_the_search_down(
        served, dataset):
    # adversary: a hand-written public aggregate's metadata.json dropped into the catalog
    stack, _sessions = served
    document = json.loads((dataset / "metadata.json").read_text(encoding="utf-8"))
    document = {k: v for k, v in document.items() if k != "description"} | {
        "id": "hand-written", "grade": "public"}
    (stack.root / "datasets" / "hand-written").mkdir()
    (stack.root / "datasets" / "hand-written" / "metadata.json").write_text(
        json.dumps(document), encoding="utf-8")
    for path in ("/?q=lingnan", "/", "/catalog/hand-written"):
        page = httpx.get(f"{stack.url}{path}", timeout=30)
        assert page.status_code == 200, (path, page.status_code)
    bad = document | {"id": "described-wrongly", "description": "a string, not a map"}
    (stack.root / "datasets" / "described-wrongly").mkdir()
    (stack.root / "datasets" / "described-wrongly" / "metadata.json").write_text(
        json.dumps(bad), encoding="utf-8")
    page = httpx.get(f"{stack.url}/?q=lingnan", timeout=30)
    assert page.status_code == 200 and "described-wrongly" not in page.text
