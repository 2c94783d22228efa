"""Attacks on reading rows while the charge is made, the ledger's prepared statements and
the Polars engine's kept columns and withdrawal masks.

The gateway now reads a question's exact aggregate in the background while the ledger
charges it, draws the noise only once the charge is recorded, keeps a view's columns as
they are first asked for and a row mask per withdrawal set. The guarantees attacked: no
noise before the charge; an engine failure leaves the charge kept and the release failed,
released later under that charge over the withdrawal set as it then stands; a grant that
cannot pay keeps no reader busy; the conditional charge holds on SQLite and PostgreSQL for
stale grants; a kept mask or column never answers for another withdrawal set or row."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import polars as pl
import pytest
from sqlalchemy import select, update

from sandbox import audit
from sandbox.db import make_engine
from sandbox.errors import BudgetExhausted, Forbidden
from sandbox.gateway import consent, execution
from sandbox.gateway.engine import Engine
from sandbox.gateway.grants import GrantRequest, Grants
from sandbox.gateway.ledger import Ledger, ReleaseStatus
from sandbox.gateway.questions import CentralQuestion
from sandbox.gateway.store import create_tables, grants, releases, withdrawals
from sandbox.queries.exact import KEPT_SETS, PolarsExecutor
from sandbox.queries.plan import consent_column
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import patients, prepare
from sandbox.queries.withdrawals import WithdrawalLog, Withdrawn
from sandbox.receipts import Signer
from tests.services import GatewayProcess

DATASET = "emr-visits"
MR, PH = "medical_research", "public_health"
SPECS = [
    QuerySpec(dataset=DATASET, kind="count", epsilon=1.0),
    QuerySpec(dataset=DATASET, kind="count", group_by=["sex"], epsilon=1.0),
    QuerySpec(dataset=DATASET, kind="histogram", field="length_of_stay",
              bins=[0, 3, 10, 365], epsilon=1.0),
    QuerySpec(dataset=DATASET, kind="mean", field="total_cost", group_by=["department"],
              epsilon=1.0),
    QuerySpec(dataset=DATASET, kind="sum", field="total_cost", epsilon=1.0,
              filters=[{"field": "visit_type", "op": "eq", "value": "inpatient"}]),
]


# -- the Polars engine's kept columns and masks ------------------------------------------
def _steps(people: list[str]) -> list[Withdrawn]:
    """Withdrawal sets as they grow: purpose-specific, then for all purposes, then sets of
    two purposes that come to be equal; more distinct sets than the engine keeps masks."""
    rng = random.Random(13)
    pool = people[:]
    rng.shuffle(pool)
    a, b, c = pool[:40], pool[40:80], pool[80:90]
    sets = [Withdrawn()]
    rows: list[tuple[str, str]] = []
    for added in ([(p, MR) for p in a], [(p, "*") for p in b], [(p, PH) for p in a],
                  *([(p, PH)] for p in c), [(pool[95], MR)]):
        rows += added
        sets.append(Withdrawn().adding(len(rows), rows))
    assert sets[3].excluded(MR) == sets[3].excluded(PH)  # two purposes, one set
    return sets


def test_a_kept_mask_or_column_answers_as_the_plain_filter_for_every_set(datasets_dir,
                                                                         tmp_path):
    """Adversary: none — concurrent questions of two purposes while withdrawals arrive
    (purpose-specific and for all purposes, sets of two purposes that come to be equal,
    more sets than the engine keeps). Guarantee: the in-memory engine's answer (columns
    read apart, masks kept per set, raced by eight readers) is bit for bit the answer of
    scanning the files and filtering the withdrawn patients out, for every set and
    purpose; its masks stay within KEPT_SETS per view."""
    dataset = prepare(datasets_dir / DATASET, tmp_path / "views")
    engine = Engine(PolarsExecutor(in_memory=False))
    sets = _steps(patients(dataset))
    asked = [(spec, purpose, engine.compile(spec, dataset, purpose), withdrawn)
             for spec in SPECS for purpose in (MR, PH) for withdrawn in sets]
    plain = [execution.exact(c, dataset, engine.executor, w, p) for _, p, c, w in asked]
    for repeat in range(2):  # answered in order, then raced in another order
        kept = PolarsExecutor()
        order = list(range(len(asked)))
        random.Random(repeat).shuffle(order)

        def answer(i: int, kept: PolarsExecutor = kept) -> pl.DataFrame:
            _, purpose, compiled, withdrawn = asked[i]
            return execution.exact(compiled, dataset, kept, withdrawn, purpose)

        if repeat == 0:
            got = {i: answer(i) for i in order}
        else:
            with ThreadPoolExecutor(8) as pool:
                got = dict(zip(order, pool.map(answer, order), strict=True))
        for i, (spec, purpose, _, withdrawn) in enumerate(asked):
            assert got[i].equals(plain[i]), (spec.kind, purpose, withdrawn.version)
        assert len(kept._kept[str(dataset.view)]) <= KEPT_SETS
    # and withdrawing changes the answer (the comparison above could not pass vacuously)
    first = [plain[i] for i, a in enumerate(asked) if a[3] is sets[0] and a[1] == MR]
    last = [plain[i] for i, a in enumerate(asked) if a[3] is sets[-1] and a[1] == MR]
    assert first[0]["count"][0] > last[0]["count"][0]


# -- the ledger with the engine reading in the background --------------------------------
class Reader(PolarsExecutor):
    """The Polars engine, counting its reads, failing while told to (a flaky engine)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail, self.reads = False, 0

    def aggregate(self, plan, view):
        self.reads += 1
        if self.fail:
            raise RuntimeError("the engine went away")
        return super().aggregate(plan, view)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def gateway_parts(db_url, datasets_dir, tmp_path):
    """A gateway's parts in this process: ledger, grants, withdrawals, engine, dataset."""
    db = make_engine(db_url)
    create_tables(db)
    dataset = prepare(datasets_dir / DATASET, tmp_path / "views")
    reader = Reader()
    parts = SimpleNamespace(
        db=db, dataset=dataset, reader=reader, engine=Engine(reader), grants=Grants(db),
        ledger=Ledger(db, Signer(tmp_path / "key.pem")),
        withdrawals=WithdrawalLog(db, withdrawals))

    def question(grant, spec):
        return CentralQuestion(grant, spec, {DATASET: dataset},
                               SimpleNamespace(datasets={}), parts.engine, parts.withdrawals)

    def grant(epsilon=5.0, **extra):
        made, _ = parts.grants.create("test", GrantRequest(
            project="p", datasets=[DATASET], fields=["sex", "length_of_stay"], purpose=MR,
            epsilon=epsilon, expires_at=datetime.now(UTC) + timedelta(days=1), **extra), None)
        return made

    parts.question, parts.grant = question, grant
    yield parts
    db.dispose()


def _spent(parts, grant_id: str) -> int:
    with parts.db.connect() as conn:
        return conn.execute(select(grants.c.epsilon_spent_micro)
                            .where(grants.c.id == grant_id)).scalar_one()


def _rows(parts, grant_id: str) -> list:
    with parts.db.connect() as conn:
        return conn.execute(select(releases).where(releases.c.grant_id == grant_id)).all()


def test_a_failed_background_read_keeps_its_charge_and_is_released_over_later_withdrawals(
        gateway_parts, monkeypatch):
    """Adversary: a flaky engine (the background read fails), and a patient withdrawing
    before the question is asked again. Guarantees: the noise is drawn only once the charge
    and its release row are recorded; the failure leaves the release ``failed`` with its
    charge kept; asked again it is released under that same charge, over the withdrawal set
    as it stands when it is asked again; the audit chain (built from prepared statements)
    verifies, on SQLite and PostgreSQL."""
    parts = gateway_parts
    grant = parts.grant()
    spec = QuerySpec(dataset=DATASET, kind="count", epsilon=1.0)
    seen = []
    release = execution.release

    def noised(compiled, dataset, exact_frame, withdrawn):
        # the charge is recorded (committed) before any noise is drawn
        assert _spent(parts, grant.id) == 1_000_000
        assert [r.status for r in _rows(parts, grant.id)] == [ReleaseStatus.CHARGED]
        seen.append((exact_frame, withdrawn))
        return release(compiled, dataset, exact_frame, withdrawn)

    monkeypatch.setattr(execution, "release", noised)
    parts.reader.fail = True
    with pytest.raises(RuntimeError):
        parts.ledger.answer(grant, parts.question(grant, spec))
    assert seen == [] and parts.reader.reads == 1
    assert [r.status for r in _rows(parts, grant.id)] == [ReleaseStatus.FAILED]
    assert _spent(parts, grant.id) == 1_000_000

    gone = patients(parts.dataset)[:150]
    consent.record(parts.db, "test", [consent.Withdrawal(pseudonym=p) for p in gone])
    parts.reader.fail = False
    answer = parts.ledger.answer(parts.grants.get(grant.id), parts.question(grant, spec))
    assert _spent(parts, grant.id) == 1_000_000  # the same charge
    assert [r.status for r in _rows(parts, grant.id)] == [ReleaseStatus.RELEASED]
    (exact, withdrawn), = seen
    assert withdrawn.version == 150 == answer["receipt"]["payload"]["withdrawals_version"]
    view = pl.scan_parquet(f"{parts.dataset.view}/**/*.parquet")
    truth = view.filter(pl.col(consent_column(MR)) & ~pl.col("pseudonym").is_in(gone)
                        ).select(pl.len()).collect().item()
    assert exact["count"][0] == truth
    with parts.db.connect() as conn:
        assert audit.verify(conn, well_formed=True).ok


@pytest.mark.parametrize("change", ["suspended", "expired", "spent"])
def test_a_grant_that_cannot_pay_at_the_charge_reads_nothing_queued_and_spends_nothing(
        gateway_parts, change):
    """Adversary: a researcher whose token was checked while the grant could pay, and whose
    grant is suspended, expires or is spent by a concurrent question before the charge.
    Guarantees: the conditional charge (a prepared statement, on SQLite and PostgreSQL)
    refuses — nothing spent, no release row —, and the background read it queued is
    dropped: it never reads the rows (the readers are busy with other questions)."""
    parts = gateway_parts
    grant = parts.grant(epsilon=2.0)
    stale = parts.grants.get(grant.id)  # as the token check saw it: able to pay
    spec = QuerySpec(dataset=DATASET, kind="count", group_by=["sex"], epsilon=1.5)
    if change == "spent":
        parts.ledger.answer(grant, parts.question(grant, QuerySpec(
            dataset=DATASET, kind="count", epsilon=1.0)))
    else:
        values = ({"status": "suspended"} if change == "suspended" else
                  {"expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()})
        with parts.db.begin() as conn:
            conn.execute(update(grants).where(grants.c.id == grant.id).values(**values))
    before, reads = _spent(parts, grant.id), parts.reader.reads
    readers = parts.engine._readers = ThreadPoolExecutor(1)
    busy, free = threading.Event(), threading.Event()
    readers.submit(lambda: (busy.set(), free.wait(30)))
    assert busy.wait(30)  # every reader is busy: this question's read waits in line
    try:
        question = parts.question(stale, spec)
        with pytest.raises(BudgetExhausted if change == "spent" else Forbidden):
            parts.ledger.answer(stale, question)
        assert question._begun is not None  # it was begun (the stale grant could pay)
    finally:
        free.set()
        readers.shutdown(wait=True)
    assert parts.reader.reads == reads  # and its read never ran
    assert _spent(parts, grant.id) == before
    assert len(_rows(parts, grant.id)) == (1 if change == "spent" else 0)


# -- over the process boundary -------------------------------------------------------------
def _view(state: Path) -> pl.DataFrame:
    files = sorted(state.glob("views/**/*.parquet"))
    assert files
    return pl.read_parquet(files)


def test_withdrawals_of_two_purposes_reach_every_question_and_errors_stay_json(
        datasets_dir, tmp_path):
    """Adversary: curious researchers of two purposes asking many new questions at once
    (each loading new columns and masks concurrently) while patients withdraw from one
    purpose, from all, and from the other purpose so that both purposes' sets become equal.
    Guarantees: every question begun after a withdrawal returned excludes the patient
    (within the noise, far below a withdrawal's effect) and never one not withdrawn for
    its purpose; answers are JSON; errors are 4xx JSON with a reason, never a trace."""
    gateway = GatewayProcess(datasets_dir, tmp_path / "state", f"sqlite:///{tmp_path}/g.db",
                             options=["--max-epsilon", "1000"])
    gateway.state_dir.mkdir(parents=True)
    gateway.start()
    try:
        tokens = {p: gateway.grant(purpose=p, epsilon=400.0)["token"] for p in (MR, PH)}
        view = _view(gateway.state_dir)
        people = view["pseudonym"].unique().sort().to_list()
        a, b = people[:100], people[100:200]
        excluded = {MR: set(), PH: set()}
        asked = iter(range(10**6))

        def ask(purpose: str, extra: dict) -> httpx.Response:
            # ε = 10 (noise scale 2 rows), a new question each time
            body = {"dataset": DATASET, "epsilon": 10 - next(asked) * 1e-6} | extra
            return httpx.post(f"{gateway.url}/v1/query", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {tokens[purpose]}"})

        def check(purpose: str) -> None:
            rows = view.filter(pl.col(consent_column(purpose))
                               & ~pl.col("pseudonym").is_in(sorted(excluded[purpose])))
            by_sex = dict(rows.group_by("sex").len().iter_rows())
            questions = [(purpose, {"kind": "count"}),
                         (purpose, {"kind": "count", "group_by": ["sex"]})]
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda q: ask(*q), questions * 2))
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert answer.headers["content-type"] == "application/json"
                for row in answer.json()["result"]:
                    truth = by_sex[row["sex"]] if "sex" in row else rows.height
                    assert abs(row["count"] - truth) < 30, (purpose, row, truth)

        def withdraw(people: list[str], purposes: list[str] | None) -> None:
            told = gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
                "withdrawals": [{"pseudonym": p, "purposes": purposes} for p in people]})
            assert told.status_code == 201, told.text
            for purpose in (MR, PH):
                if purposes is None or purpose in purposes:
                    new = sorted(set(people) - excluded[purpose])
                    assert view.filter(pl.col(consent_column(purpose))
                                       & pl.col("pseudonym").is_in(new)).height > 60 \
                        or not new  # an effect the noise cannot hide
                    excluded[purpose] |= set(people)

        check(MR), check(PH)
        withdraw(a, [MR])
        check(MR), check(PH)
        withdraw(b, None)
        check(PH), check(MR)
        withdraw(a, [PH])  # now both purposes exclude a and b: one set
        check(MR), check(PH)

        # errors: 4xx JSON with reasons, no traces
        for answer, status in (
                (httpx.post(f"{gateway.url}/v1/query", json={"dataset": DATASET,
                            "kind": "count", "epsilon": 1.0}, timeout=30), 401),
                (httpx.post(f"{gateway.url}/v1/query", json={"dataset": DATASET,
                            "kind": "count", "epsilon": 1.0}, timeout=30,
                            headers={"Authorization": "Bearer nope"}), 401),
                (ask(MR, {"kind": "count", "epsilon": 11}), 422),
                (ask(MR, {"kind": "count", "field": "nonexistent"}), 422),
                (ask(MR, {"kind": "count", "group_by": ["pseudonym"]}), None)):
            assert (status is None and 400 <= answer.status_code < 500) \
                or answer.status_code == status, answer.text
            body = answer.json()
            assert body["reason"] and body["error"] and "Traceback" not in answer.text
        tokens["small"] = gateway.grant(epsilon=1.0)["token"]
        assert ask("small", {"kind": "count", "epsilon": 1.0}).status_code == 200
        spent = ask("small", {"kind": "count", "epsilon": 0.5})
        assert spent.status_code == 403 and spent.json()["error"] == "budget_exhausted"
        assert spent.json()["reason"] and "Traceback" not in spent.text
    finally:
        gateway.stop()
