"""The key service's and the sites' audit chains are anchored outside their databases:
their processes keep witness files, and the gateway process's checkpoint round records
each one's signed checkpoint in the gateway's chain (the sites' also in the key
service's) while handing them its own. Whoever can write one of their databases cuts its
tail, rewrites an entry and re-hashes forward, or puts back an older copy; ``sandboxctl
audit verify`` names the first entry that no longer matches — from the witness, and from
the other services' records alone when the witness is gone too."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from sqlalchemy import select

from sandbox.audit import audit_log
from sandbox.client import Gateway
from sandbox.db import make_engine
from tests.audit_attacks import (
    consistent,
    copy_sqlite,
    cut_tail,
    last_seq,
    rewrite,
    verify,
    wait_witnessed,
)
from tests.federated.conftest import DATASET, grant


def _round(noisy) -> dict:
    response = noisy.admin("POST", "/v1/admin/audit/checkpoint")
    assert response.status_code == 200, response.text
    return response.json()


def _activity(noisy, token: str, epsilon: float) -> None:
    """A federated query (the key service decrypts) and a consent withdrawal (every site
    records it), then a checkpoint round."""
    Gateway(noisy.url, token).federated.histogram(DATASET, "length_of_stay",
                                                  [0, 1, 3, 7, 30, 365], epsilon=epsilon)
    withdrawn = noisy.admin("POST", "/v1/admin/consent-withdrawals",
                            {"pseudonym": secrets.token_hex(32)})
    assert withdrawn.status_code == 201, withdrawn.text
    outcome = _round(noisy)
    assert set(outcome["peers"]) == {"site:north", "site:south", "site:east", "keys"}
    assert set(outcome["peers"].values()) <= {"recorded", "unchanged"}, outcome


@pytest.fixture(scope="module")
def history(cluster, noisy, tmp_path_factory):
    work = tmp_path_factory.mktemp("anchored-federation")
    root = cluster.root
    chains = {
        "keys": {"url": cluster.keys_db, "witness": root / "keys" / "audit-witness.jsonl"},
        "site:north": {"url": f"sqlite:///{root / 'site-north' / 'site.db'}",
                       "witness": root / "site-north" / "audit-witness.jsonl"},
        "gateway": {"url": noisy.database_url,
                    "witness": cluster.gateway_state / "audit-witness.jsonl"},
    }
    keys_pem = work / "keys-checkpoints.pem"
    keys_pem.write_text(httpx.get(f"{cluster.keys_url}/v1/audit/public-key").text)
    north_pem = work / "north.pem"
    north_pem.write_text(httpx.get(f"{cluster.sites['north']}/v1/public-key").text)
    token = grant(noisy, project="anchored")["token"]
    _activity(noisy, token, 0.2)
    older = {}
    for name, chain in chains.items():
        chain["older_last"] = wait_witnessed(chain["witness"], chain["url"])
        older[name] = copy_sqlite(chain["url"], work / f"{name.replace(':', '-')}-older.db")
    _activity(noisy, token, 0.3)
    for chain in chains.values():
        chain["last"] = wait_witnessed(chain["witness"], chain["url"])
    gateway_http = ("--peer-http", noisy.url, cluster.gateway_state / "admin.token")
    keys_http = ("--peer-http", cluster.keys_url, root / "keys" / "operator.token")
    chains["keys"]["peers"] = ["--service", "keys", "--public-key", keys_pem, *gateway_http]
    chains["site:north"]["peers"] = ["--service", "site:north", "--public-key", north_pem,
                                     *gateway_http, *keys_http]
    chains["gateway"]["peers"] = [
        "--service", "gateway", "--public-key", cluster.gateway_key, *keys_http,
        *(option for name in ("north", "south", "east") for option in (
            "--peer-database", f"sqlite:///{root / f'site-{name}' / 'site.db'}"))]
    for name, chain in chains.items():
        chain["older"] = older[name]
    return {"chains": chains, "work": work}


def _options(chain: dict, witness: bool = True) -> list:
    return [*chain["peers"], *(["--witness", chain["witness"]] if witness else [])]


SERVICES = ("keys", "site:north")


@pytest.mark.parametrize("service", [*SERVICES, "gateway"])
def test_untouched_chains_verify_against_every_anchor(history, service):
    chain = history["chains"][service]
    result = verify(chain["url"], *_options(chain))
    assert result.code == 0, result.stderr
    assert "anchor points hold" in result.stdout


def _copy(history, service: str) -> str:
    return copy_sqlite(history["chains"][service]["url"],
                       history["work"] / f"{service.replace(':', '-')}-{secrets.token_hex(4)}.db")


@pytest.mark.parametrize("service", SERVICES)
def test_cutting_the_tail_is_named(history, service):
    url = _copy(history, service)
    first = cut_tail(url, 3)
    assert consistent(url)
    result = verify(url, *_options(history["chains"][service]))
    assert result.code == 6, result.stdout
    assert f"entry {first} is missing: the witness file recorded it" in result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_rewriting_an_entry_and_rehashing_forward_is_named(history, service):
    url = _copy(history, service)
    engine = make_engine(url)
    with engine.connect() as conn:  # the first entry about a query or a patient
        target = conn.execute(select(audit_log).where(
            audit_log.c.subject.like("query:%") | audit_log.c.subject.like("patient:%"))
            .order_by(audit_log.c.seq).limit(1)).mappings().one()
    engine.dispose()
    rewrite(url, target["seq"], actor="operator", details=json.dumps({"edited": True}))
    assert consistent(url)
    result = verify(url, *_options(history["chains"][service]))
    assert result.code == 6, result.stdout
    assert f"entry {target['seq']} no longer matches the witness file" in result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_putting_back_an_older_copy_is_named(history, service):
    chain = history["chains"][service]
    assert consistent(chain["older"])
    result = verify(chain["older"], *_options(chain))
    assert result.code == 6, result.stdout
    assert f"entry {chain['older_last'] + 1} is missing" in result.stderr


def _last_checkpoint(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        details = conn.execute(select(audit_log.c.details).where(
            audit_log.c.action == "audit.checkpointed").order_by(audit_log.c.seq.desc())
            .limit(1)).scalar()
    engine.dispose()
    return json.loads(details)["seq"]


@pytest.mark.parametrize("service", [*SERVICES, "gateway"])
def test_without_the_witness_the_other_services_records_still_tell(history, service):
    """Database and witness both in the attacker's hands: the checkpoints the other
    services recorded still show the cut, and where the rewritten part lies."""
    chain = history["chains"][service]
    url = _copy(history, service)
    # Entries after the last checkpoint handed to the others (the records of theirs the
    # gateway appends after handing out its own, say) only the witness covers: cut into
    # what a checkpoint covers.
    first = cut_tail(url, last_seq(url) - _last_checkpoint(url) + 1)
    result = verify(url, *_options(chain, witness=False))
    assert result.code == 6, result.stdout
    assert "record of its checkpoint" in result.stderr
    assert f"entry {first} is missing" in result.stderr or \
        f"entries {first} to " in result.stderr

    url = _copy(history, service)
    k = chain["older_last"] - 1
    rewrite(url, k, actor="operator")
    result = verify(url, *_options(chain, witness=False))
    assert result.code == 6, result.stdout
    problem = result.stderr.split("no longer matches", 1)
    assert len(problem) == 2, result.stderr
    named = int(problem[0].rsplit("entry ", 1)[1])
    low = int(problem[1].split("an entry from ")[1].split(" to ")[0]) \
        if "an entry from" in problem[1] else named
    assert low <= k <= named, result.stderr
    assert last_seq(url) == chain["last"]
