"""Attacks on the fixes of audit verification (malformed entries named, not crashed on),
by someone with full write access to one service's database, played on a gateway process
over the central dataset. Each test asserts what docs/audit.md and docs/threat-model.md
say: a malformed entry is named (``audit verify`` exit 6, ``ok: false`` from the verify
route), it does not stop verification; a failing test shows the weakness is there."""

from __future__ import annotations

import json

import pytest

from sandbox.client import Gateway
from tests.attacks.test_audit_anchoring import _round, _seq_of
from tests.audit_attacks import consistent, copy_sqlite, plant, rewrite, verify, wait_witnessed
from tests.services import GatewayProcess

# Checkpoint entries that pass ``audit.malformed`` (seq an int, hash a string, checkpoint
# an object) but whose signed document is not one: its payload a string, or a seq that
# JSON reads as infinity.
PLANTED = {
    "payload a string": {"seq": 1, "hash": "0" * 64, "checkpoint": {"payload": "x"}},
    "seq infinite": {"seq": 1, "hash": "0" * 64, "checkpoint": {
        "payload": {"seq": 1e400, "hash": "0" * 64, "at": "x", "service": "gateway"}}},
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_a_planted_checkpoint_document_is_named_not_crashed_on(datasets_dir, tmp_path,
                                                               planted):
    """docs/threat-model.md, database administrator: can "add entries, malformed ones too
    (details not an object, a field missing)", cannot "stop … verification naming what
    changed: a malformed entry is named (`audit verify` exit 6, `ok: false` from the
    verify route)". An ``audit.checkpointed`` entry whose details have the fields the
    check reads, but whose checkpoint's payload is a string, makes ``own_checkpoints``
    call ``str.get`` when the service's key is given (the verify route always gives it):
    ``audit verify --public-key`` exits 70 "unexpected error (AttributeError)" and
    ``GET /v1/admin/audit/verify`` answers 500 — also after the grant's ε was rewritten
    and re-hashed forward. A payload whose seq is ``1e400`` (JSON for infinity) makes
    ``int()`` raise OverflowError, which is not caught, without the key."""
    details = json.dumps(PLANTED[planted], sort_keys=True).replace("Infinity", "1e400")
    gateway = GatewayProcess(datasets_dir, tmp_path / "state",
                             f"sqlite:///{tmp_path / 'gw.db'}")
    gateway.start()
    try:
        granted = gateway.grant()
        Gateway(gateway.url, granted["token"]).count("emr-visits", epsilon=0.1)
        _round(gateway)
        seq = plant(gateway.database_url, "audit.checkpointed", details)
        checked = gateway.admin("GET", "/v1/admin/audit/verify")
        witness = tmp_path / "state" / "audit-witness.jsonl"
        wait_witnessed(witness, gateway.database_url)
    finally:
        gateway.stop()
    url = copy_sqlite(gateway.database_url, tmp_path / "copy.db")
    created = _seq_of(url, "grant.created")
    rewrite(url, created, details=json.dumps({"epsilon_total": 100.0}, sort_keys=True))
    assert consistent(url)
    problems = []
    if checked.status_code != 200:
        problems.append(f"GET /v1/admin/audit/verify after entry {seq}: "
                        f"{checked.status_code} {checked.text[:200]}")
    for options in (["--witness", witness, "--public-key",
                     tmp_path / "state" / "public-key.pem"], ["--witness", witness]):
        result = verify(url, *options)
        if result.code != 6 or f"entry {created}" not in result.stderr:
            problems.append(f"audit verify {' '.join(map(str, options[::2]))} after "
                            f"rewriting entry {created}: exit {result.code} "
                            f"{result.stderr.strip()}")
    assert not problems, problems
