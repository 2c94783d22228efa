"""The audit chain detects any edit, deletion or reordering of a row — on SQLite and on
PostgreSQL — and concurrent writers still extend one chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select, update

from sandbox import audit
from sandbox.audit import AuditAction, audit_log
from sandbox.db import make_engine
from sandbox.errors import InputError


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'audit.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    engine = make_engine(url)
    audit.create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def chain(engine):
    with engine.begin() as conn:
        conn.execute(delete(audit_log))
        conn.execute(delete(audit.audit_checkpoint))
        conn.execute(update(audit.audit_head).values(seq=0, hash=audit.GENESIS))
    for i in range(6):
        with engine.begin() as conn:
            audit.append(conn, AuditAction.RELEASE_RELEASED, f"grant:{i}", f"release:{i}",
                         {"epsilon": 0.1 * i})
    return engine


def check(engine) -> audit.Verification:
    with engine.connect() as conn:
        return audit.verify(conn)


def test_an_untouched_chain_verifies(chain):
    assert check(chain) == audit.Verification(True, 6)


def test_an_edited_row_is_detected(chain):
    with chain.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3)
                     .values(details='{"epsilon": 0.0}'))
    result = check(chain)
    assert not result.ok and result.seq == 3 and "altered" in result.problem


def test_a_deleted_row_is_detected(chain):
    with chain.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 4))
    result = check(chain)
    assert not result.ok and "entry 4 is missing" in result.problem
    assert result.problem_zh == "第 4 条记录缺失"


def test_a_deleted_last_row_is_detected(chain):
    with chain.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 6))
    result = check(chain)
    assert not result.ok and "removed" in result.problem


def test_reordered_rows_are_detected(chain):
    with chain.begin() as conn:
        rows = {r.seq: dict(r._mapping) for r in conn.execute(select(audit_log))}
        for seq, other in ((2, 5), (5, 2)):
            moved = {k: v for k, v in rows[other].items() if k != "seq"}
            conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(**moved))
    result = check(chain)
    assert not result.ok and result.seq == 2


def test_concurrent_appends_form_one_chain(chain):
    def write(i: int) -> None:
        with chain.begin() as conn:
            audit.append(conn, AuditAction.QUERY_REFUSED, "grant:x", f"q:{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    assert check(chain) == audit.Verification(True, 46)


def test_the_cli_reports_a_broken_chain(chain, cli):
    url = chain.url.render_as_string(hide_password=False)
    assert cli("audit", "verify", "--database-url", url).code == 0
    with chain.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 1).values(actor="someone"))
    broken = cli("audit", "verify", "--database-url", url)
    assert broken.code == 6 and "entry 1 was altered" in broken.stderr


def _entry_time(engine, seq: int) -> datetime:
    with engine.connect() as conn:
        at = conn.execute(select(audit_log.c.at).where(audit_log.c.seq == seq)).scalar()
    return datetime.fromisoformat(at)


def test_retention_pruning_keeps_the_chain_verifiable(chain):
    cutoff = _entry_time(chain, 5)  # entries 1–4 are older than this
    later = cutoff + timedelta(days=200)
    with chain.begin() as conn:
        result = audit.prune(conn, cutoff, "test:retention", 183, now=later)
    assert result == audit.Pruned(4, 4)
    with chain.connect() as conn:
        seqs = list(conn.execute(select(audit_log.c.seq).order_by(audit_log.c.seq)).scalars())
        last = conn.execute(select(audit_log).where(audit_log.c.seq == 7)).one()
    assert seqs == [5, 6, 7]
    assert last.action == "audit.pruned" and '"through_seq": 4' in last.details
    assert check(chain) == audit.Verification(True, 3)
    # tampering after pruning is still caught
    with chain.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 6).values(actor="x"))
    assert not check(chain).ok


def test_pruning_refuses_short_retention_and_young_entries(chain):
    now = datetime.now(UTC)
    with chain.begin() as conn, pytest.raises(InputError, match="at least 183 days"):
        audit.prune(conn, now - timedelta(days=30), "test", retention_days=30)
    with chain.begin() as conn, pytest.raises(InputError, match="older than 183 days"):
        audit.prune(conn, now, "test")
    assert check(chain) == audit.Verification(True, 6)


def test_a_forged_checkpoint_is_detected(chain):
    """Deleting old rows and writing a checkpoint by hand, without the chain's own record
    of a pruning, fails verification."""
    with chain.begin() as conn:
        third = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == 3)).scalar()
        conn.execute(delete(audit_log).where(audit_log.c.seq <= 3))
        conn.execute(insert(audit.audit_checkpoint).values(id=1, seq=3, hash=third, at="x"))
    result = check(chain)
    assert not result.ok and "no pruning entry" in result.problem


def test_the_cli_prunes_within_policy(chain, cli):
    url = chain.url.render_as_string(hide_password=False)
    refused = cli("audit", "prune", "--database-url", url, "--older-than-days", "90")
    assert refused.code == 2 and "at least 183 days" in refused.stderr
    kept = cli("audit", "prune", "--database-url", url)
    assert kept.code == 0 and "removed 0 entries" in kept.stdout
    assert cli("audit", "verify", "--database-url", url).code == 0


# -- anchors outside the database: the witness file ------------------------------------------

class _Owner:
    """Keeps a followed witness alive for as long as a test holds it."""


def _witness_lines(path) -> list:
    from sandbox.witness import WitnessFile

    snapshot = WitnessFile(path).snapshot()
    try:
        return list(snapshot.lines())
    finally:
        snapshot.close()


def _wait_for(path, engine, timeout: float = 20) -> list:
    import time

    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        last = conn.execute(select(audit.audit_head.c.seq)).scalar()
    while time.monotonic() < deadline:
        lines = _witness_lines(path) if path.exists() else []
        if lines and lines[-1].seq >= last:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach entry {last}")


def test_a_transaction_that_rolls_back_leaves_no_witness_line(chain, tmp_path):
    """Gateway style (``engine.begin()``) and portal style (an ORM session): an entry
    appended in a transaction that rolls back is never witnessed; the entry that takes its
    sequence number later is."""
    from sqlalchemy.orm import Session

    from sandbox import witness, witnessing

    owner, path = _Owner(), tmp_path / "audit-witness.jsonl"
    followed = witness.WitnessFile(path)
    witnessing.follow(owner, followed, chain)
    _wait_for(path, chain)
    with pytest.raises(RuntimeError), chain.begin() as conn:
        audit.append(conn, AuditAction.GRANT_CREATED, "x", "grant:rolled-back")
        raise RuntimeError("the action failed after its entry was appended")
    with Session(chain) as db:
        audit.append(db.connection(), AuditAction.LOGIN_SUCCEEDED, "x", "user:rolled-back")
        db.rollback()
    with chain.begin() as conn:
        kept = audit.append(conn, AuditAction.GRANT_CREATED, "x", "grant:kept")
    with Session(chain) as db:
        audit.append(db.connection(), AuditAction.LOGIN_SUCCEEDED, "x", "user:kept")
        db.commit()
    lines = _wait_for(path, chain)
    with chain.connect() as conn:
        rows = {r.seq: r.hash for r in conn.execute(select(audit_log))}
    assert [line.seq for line in lines] == sorted(rows) == list(range(1, kept + 2))
    assert all(rows[line.seq] == line.hash for line in lines)
    witnessing.unfollow(followed)


def _backdated(chain, monkeypatch, days: int, entries: int) -> None:
    """Entries written ``days`` ago (as the service would have written them then)."""
    real = audit.datetime

    class Then(real):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) - timedelta(days=days)

    monkeypatch.setattr(audit, "datetime", Then)
    for i in range(entries):
        with chain.begin() as conn:
            audit.append(conn, AuditAction.QUERY_PREVIEWED, "grant:old", f"q:{i}")
    monkeypatch.setattr(audit, "datetime", real)


def test_a_pruned_chain_still_verifies_against_its_witness(chain, cli, tmp_path, monkeypatch):
    from sandbox import witness, witnessing

    with chain.begin() as conn:  # the fixture's chain starts afresh, a year ago
        conn.execute(delete(audit_log))
        conn.execute(update(audit.audit_head).values(seq=0, hash=audit.GENESIS))
    owner, path = _Owner(), tmp_path / "audit-witness.jsonl"
    followed = witness.WitnessFile(path, max_bytes=800)  # rotates as well
    witnessing.follow(owner, followed, chain)
    _backdated(chain, monkeypatch, 400, 8)
    for i in range(4):
        with chain.begin() as conn:
            audit.append(conn, AuditAction.QUERY_REFUSED, "grant:new", f"q:{i}")
    _wait_for(path, chain)
    url = chain.url.render_as_string(hide_password=False)
    pruned = cli("audit", "prune", "--database-url", url, "--older-than-days", "365")
    assert pruned.code == 0 and "removed 8 entries" in pruned.stdout, pruned
    _wait_for(path, chain)
    assert len(followed.rotated_files()) >= 1
    result = cli("audit", "verify", "--database-url", url, "--witness", path)
    assert result.code == 0 and "through entry 13" in result.stdout, result
    witnessing.unfollow(followed)


def test_removing_young_entries_as_a_pruning_is_caught(chain, cli, tmp_path):
    """The database holder runs the pruning code with a clock set ahead, to remove entries
    that are days old: the chain is consistent, the retention claim is not."""
    from sandbox import witness, witnessing

    owner, path = _Owner(), tmp_path / "audit-witness.jsonl"
    followed = witness.WitnessFile(path)
    witnessing.follow(owner, followed, chain)
    _wait_for(path, chain)
    witnessing.unfollow(followed)  # the attacker has the database, not the service
    cutoff = _entry_time(chain, 5)
    with chain.begin() as conn:
        audit.prune(conn, cutoff, "system:retention", 183, now=cutoff + timedelta(days=200))
    assert check(chain).ok
    url = chain.url.render_as_string(hide_password=False)
    result = cli("audit", "verify", "--database-url", url, "--witness", path)
    assert result.code == 6 and "entries up to 4 were pruned too early" in result.stderr, \
        result


def test_records_of_many_checkpoints_are_checked_a_page_at_a_time(chain):
    """Months of another service's records (one per checkpoint): checked against the
    chain's hashes 1000 entries at a time, as the portal does for the gateway's chain."""
    from sandbox import anchored
    from sandbox.anchors import check_records
    from tests.audit_attacks import rewrite

    with chain.begin() as conn:
        for i in range(2494):
            audit.append(conn, AuditAction.QUERY_PREVIEWED, "grant:x", f"q:{i}")
    with chain.connect() as conn:
        rows = {r.seq: r.hash for r in conn.execute(select(audit_log))}
    points = [anchored.Point(seq, digest, "", "the gateway's record", "网关记录")
              for seq, digest in rows.items()]
    pages: list[int] = []

    def hashes(seqs: list[int]) -> dict:
        pages.append(len(seqs))
        with chain.connect() as conn:
            return anchored.hashes_at(conn, seqs)

    held = check_records(points, hashes)
    assert held.ok and held.anchors == 2500 and held.anchored_through == 2500
    assert pages == [1000, 1000, 500]
    rewrite(chain.url.render_as_string(hide_password=False), 1700, actor="someone")
    broken = check_records(points, hashes)
    assert not broken.ok and broken.seq == 1700
    assert "entry 1700 no longer matches the gateway's record" in broken.problem


def test_a_checkpoint_the_services_key_did_not_sign_is_named(chain, cli, tmp_path):
    """Whoever holds the database cannot sign a checkpoint: one signed with another key
    is reported (given the service's public key) at the entry that holds it."""
    from sandbox import checkpoints, receipts

    service = receipts.Signer(tmp_path / "service.pem")
    with chain.begin() as conn:
        checkpoints.make(conn, service, "gateway")
    with chain.begin() as conn:
        checkpoints.make(conn, receipts.Signer(tmp_path / "other.pem"), "gateway")
        forged = conn.execute(select(audit.audit_head.c.seq)).scalar()
    public = tmp_path / "service.pub.pem"
    public.write_bytes(service.public_pem)
    url = chain.url.render_as_string(hide_password=False)
    assert cli("audit", "verify", "--database-url", url).code == 0  # without the key
    result = cli("audit", "verify", "--database-url", url, "--public-key", public)
    assert result.code == 6, result
    assert f"entry {forged} holds a checkpoint the service's key did not sign" in \
        result.stderr


# -- pruning against every anchor; malformed entries ------------------------------------------

def _clock(monkeypatch, days: int) -> None:
    """Entries and checkpoints written ``days`` ago from now on (0: the real clock)."""
    from sandbox import checkpoints

    class Then(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(days=days)

    for module in (audit, checkpoints):
        monkeypatch.setattr(module, "datetime", Then if days else datetime)


def test_a_pruning_is_held_to_the_checkpoints_other_services_recorded(chain, cli, tmp_path,
                                                                      monkeypatch):
    """An honest pruning passes against the witness, the service's own checkpoints and
    another service's records of them — also when the checkpoint of its last old entry was
    signed after the cutoff (that entry is kept). The records alone (no witness: its holder
    may have rewritten it) expose a pruning forged with a cutoff spelled as ``prune`` spells
    it, in ``audit verify`` and through the hashes the portal asks the gateway for."""
    from sandbox import anchored, checkpoints, receipts, witness, witnessing
    from sandbox.anchors import check_records, records_from_database
    from tests.audit_attacks import forge_pruning

    with chain.begin() as conn:  # a chain that starts afresh, a year ago
        conn.execute(delete(audit_log))
        conn.execute(update(audit.audit_head).values(seq=0, hash=audit.GENESIS))
    owner, path = _Owner(), tmp_path / "audit-witness.jsonl"
    followed = witness.WitnessFile(path)
    witnessing.follow(owner, followed, chain)
    signer = receipts.Signer(tmp_path / "service.pem")
    peer_url = f"sqlite:///{tmp_path / 'peer.db'}"
    peer = make_engine(peer_url)
    audit.create_tables(peer)

    def checkpoint() -> None:  # made, and recorded by another service
        with chain.begin() as conn:
            document = checkpoints.make(conn, signer, "gateway")
        with peer.begin() as conn:
            checkpoints.record(conn, document, signer.public_pem, "gateway", "keys")

    def entries(n: int) -> None:
        for i in range(n):
            with chain.begin() as conn:
                audit.append(conn, AuditAction.QUERY_PREVIEWED, "grant:x", f"q:{i}")

    _clock(monkeypatch, 400)
    entries(4)
    checkpoint()  # entry 5: a checkpoint of entry 4, 400 days ago
    entries(3)  # 6 to 8
    _clock(monkeypatch, 0)
    checkpoint()  # entry 9: a checkpoint of entry 8, today
    entries(3)  # 10 to 12
    checkpoint()  # entry 13: of entry 12
    _wait_for(path, chain)
    url = chain.url.render_as_string(hide_password=False)
    pruned = cli("audit", "prune", "--database-url", url, "--older-than-days", "365")
    assert pruned.code == 0 and "removed 7 entries" in pruned.stdout, pruned  # 8 is kept
    _wait_for(path, chain)
    witnessing.unfollow(followed)
    public = tmp_path / "service.pub.pem"
    public.write_bytes(signer.public_pem)
    anchors = ("--service", "gateway", "--public-key", public, "--peer-database", peer_url)
    held = cli("audit", "verify", "--database-url", url, "--witness", path, *anchors)
    assert held.code == 0 and "through entry 14" in held.stdout, held  # the witness's last

    # The holder of the database and the witness removes entries 8 to 12 "as a pruning".
    forge_pruning(url, 12, audit.stamp(datetime.now(UTC) - timedelta(days=184)))
    with chain.connect() as conn:
        assert audit.verify(conn).ok
    forged = cli("audit", "verify", "--database-url", url, *anchors)
    assert forged.code == 6 and "entries up to 12 were pruned too early" in forged.stderr, \
        forged
    # the first entry removed that is younger than the cutoff: the one after the checkpoint
    # of entry 8, signed today
    assert "shows entry 8 checkpointed at" in forged.stderr
    assert "so entry 9 was written later" in forged.stderr
    points = anchored.peer_points(records_from_database(peer_url, "gateway"), "gateway",
                                  signer.public_pem)

    def hashes(seqs: list[int]) -> dict:
        with chain.connect() as conn:
            return anchored.hashes_at(conn, seqs)

    seen = check_records(points, hashes)  # what the portal checks of the gateway's chain
    assert not seen.ok and seen.seq == 9 and "pruned too early" in seen.problem
    peer.dispose()


@pytest.mark.parametrize("action, details", [
    ("query.refused", "[]"),
    ("audit.checkpointed", "[]"),
    ("audit.checkpointed", '{"seq": 1, "hash": "x"}'),
    ("audit.anchored", '{"service": "gateway", "seq": "3", "hash": "x", "at": "x"}'),
    ("audit.pruned", '"old"'),
    ("login.failed", "[" * 100_000),
])
def test_a_malformed_entry_is_named_and_checkpoints_go_past_it(chain, cli, tmp_path, action,
                                                               details):
    """Someone with the database appends an entry, consistently chained, whose details are
    not what ``append`` writes. ``audit verify`` names it (exit 6) instead of failing; a
    new checkpoint covers it and records of checkpoints go on being made."""
    from sandbox import anchored, checkpoints, receipts
    from tests.audit_attacks import plant

    url = chain.url.render_as_string(hide_password=False)
    signer = receipts.Signer(tmp_path / "service.pem")
    with chain.begin() as conn:
        first = checkpoints.make(conn, signer, "gateway")
        checkpoints.record(conn, first, signer.public_pem, "gateway", "keys")
    planted = plant(url, action, details)
    with chain.begin() as conn:
        document = checkpoints.make(conn, signer, "gateway")
        assert document["payload"]["seq"] == planted  # a new checkpoint covers it
        assert checkpoints.record(conn, document, signer.public_pem, "gateway", "keys")
        assert anchored.hashes_at(conn, [planted])["hashes"]
    with chain.connect() as conn:
        assert audit.verify(conn).ok  # the chain itself is consistent
    public = tmp_path / "service.pub.pem"
    public.write_bytes(signer.public_pem)
    result = cli("audit", "verify", "--database-url", url, "--public-key", public)
    assert result.code == 6 and f"entry {planted} is malformed" in result.stderr, result


def test_a_checkpoint_round_that_fails_is_logged_and_audited(chain, tmp_path, caplog):
    from sandbox import receipts
    from sandbox.anchors import Anchors, AnchorSettings, audited_round
    from sandbox.errors import Unavailable

    anchors = Anchors("gateway", chain, receipts.Signer(tmp_path / "service.pem"), tmp_path,
                      AnchorSettings(), follow=False)

    def failing() -> dict:
        raise RuntimeError("the disk is full")

    with pytest.raises(Unavailable, match="RuntimeError: the disk is full"):
        audited_round(anchors, failing)
    with chain.connect() as conn:
        last = conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)).one()
    assert last.action == "audit.checkpoint_failed" and "the disk is full" in last.details
    assert "audit checkpoint round failed" in caplog.text
