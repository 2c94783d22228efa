"""The gateway's audit chain is anchored outside its database: whoever can write the
database (SQLite file or PostgreSQL) cuts its tail, rewrites an entry and re-hashes every
later one, or puts back an older copy — each keeps the chain internally consistent, which
is all ``audit verify`` could check before — and ``sandboxctl audit verify`` names the
first entry that no longer matches the gateway process's witness file."""

from __future__ import annotations

import json
import shutil

import pytest

from sandbox.client import Gateway
from tests.audit_attacks import (
    consistent,
    copy_database,
    cut_tail,
    plant,
    rewrite,
    verify,
    wait_witnessed,
)
from tests.services import GatewayProcess
from tests.tiers import tier


def _ask(process: GatewayProcess, token: str, values: range) -> None:
    gw = Gateway(process.url, token)
    for i in values:
        gw.count("emr-visits", where=[{"field": "length_of_stay", "op": "ge", "value": i}],
                 epsilon=0.05)


def _checkpoint(process: GatewayProcess) -> dict:
    response = process.admin("POST", "/v1/admin/audit/checkpoint")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
@tier("service")
def history(request, datasets_dir, tmp_path_factory):
    """A gateway process's chain: some releases and a checkpoint, an older copy of its
    database taken, a restart, more releases and a checkpoint; the gateway stopped."""
    root = tmp_path_factory.mktemp(f"anchored-{request.param}")
    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    url = server.new_database() if server else f"sqlite:///{root / 'gateway.db'}"
    process = GatewayProcess(datasets_dir, root / "state", url)
    witness = root / "state" / "audit-witness.jsonl"
    # a small witness file, so that it rotates a few times along the way
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SANDBOX_GATEWAY_AUDIT_WITNESS_MAX_BYTES", "700")
        try:
            process.start()
            granted = process.grant()
            _ask(process, granted["token"], range(2))
            assert _checkpoint(process)["checkpoint"]["service"] == "gateway"
            older_last = wait_witnessed(witness, url)
            process.stop()
            older = copy_database(url, root, server)
            process.start()  # the same database and state: a restart
            _ask(process, granted["token"], range(2, 5))
            _checkpoint(process)
            last = wait_witnessed(witness, url)
        finally:
            process.stop()
    yield {"url": url, "root": root, "server": server, "older": older,
           "older_last": older_last, "last": last, "grant": granted["grant"]["id"],
           "options": ["--service", "gateway", "--witness", witness,
                       "--public-key", root / "state" / "public-key.pem"]}


def _copy(history) -> str:
    return copy_database(history["url"], history["root"], history["server"])


def test_an_untouched_chain_verifies_after_a_restart_and_rotations(history):
    assert len(list(history["root"].glob("state/audit-witness.0*.jsonl"))) >= 2
    result = verify(history["url"], *history["options"])
    assert result.code == 0, result.stderr
    assert f"through entry {history['last']}" in result.stdout


def test_a_deleted_or_edited_rotated_witness_file_is_noticed(history, tmp_path):
    for name in ("audit-witness.000001.jsonl", "audit-witness.000002.jsonl"):
        copied = tmp_path / name.split(".")[1]
        shutil.copytree(history["root"] / "state", copied,
                        ignore=shutil.ignore_patterns("views", "*.db*"))
        options = [*history["options"][:3], copied / "audit-witness.jsonl",
                   *history["options"][4:]]
        if name.endswith("1.jsonl"):
            (copied / name).unlink()
            expected = f"the witness file {name} is missing"
        else:
            lines = (copied / name).read_text().splitlines(keepends=True)
            (copied / name).write_text("".join(lines[:-1]))  # its last line taken out
            expected = f"the witness file {name} was altered"
        result = verify(history["url"], *options)
        assert result.code == 6 and expected in result.stderr, result


def test_cutting_the_tail_is_named(history):
    url = _copy(history)
    first = cut_tail(url, 4)
    assert consistent(url)  # what the chain alone cannot tell
    result = verify(url, *history["options"])
    assert result.code == 6, result.stdout
    assert f"entry {first} is missing: the witness file recorded it" in result.stderr
    assert f"第 {first} 条记录缺失" in result.stderr


def test_rewriting_an_entry_and_rehashing_forward_is_named(history):
    url = _copy(history)
    from sqlalchemy import select

    from sandbox.audit import audit_log
    from sandbox.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        created = conn.execute(select(audit_log).where(
            audit_log.c.action == "grant.created")).mappings().one()
    engine.dispose()
    details = json.loads(created["details"]) | {"epsilon_total": 100.0}
    rewrite(url, created["seq"], details=json.dumps(details, sort_keys=True))
    assert consistent(url)
    result = verify(url, *history["options"])
    assert result.code == 6, result.stdout
    assert f"entry {created['seq']} no longer matches the witness file" in result.stderr
    assert f"第 {created['seq']} 条记录与见证文件不符" in result.stderr


def test_putting_back_an_older_copy_is_named(history):
    assert consistent(history["older"])
    result = verify(history["older"], *history["options"])
    assert result.code == 6, result.stdout
    first = history["older_last"] + 1
    assert f"entry {first} is missing: the witness file recorded it" in result.stderr


def test_a_malformed_entry_is_named_and_the_next_round_covers_it(fresh_gateway):
    """Someone with the database adds a record of another service's checkpoint, chained
    and hashed, whose details lack what a record holds: the gateway's verification answers
    (200) that the chain is not ok and names that entry; its next checkpoint round covers
    it (a record alone would not need a new checkpoint; a malformed one does)."""
    fresh_gateway.start()
    _ask(fresh_gateway, fresh_gateway.grant()["token"], range(1))
    _checkpoint(fresh_gateway)
    planted = plant(fresh_gateway.database_url, "audit.anchored", '{"service": "keys"}',
                    "service:keys")
    checked = fresh_gateway.admin("GET", "/v1/admin/audit/verify")
    assert checked.status_code == 200, checked.text
    result = checked.json()
    assert not result["ok"] and result["seq"] == planted
    assert f"entry {planted} is malformed" in result["problem"]
    assert _checkpoint(fresh_gateway)["checkpoint"]["seq"] >= planted
