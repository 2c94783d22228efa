"""The ledger: every release a grant paid for, and the rule that keeps budgets (invariants
2 and 3).

A query's (ε, δ) is charged in one transaction — a conditional UPDATE that cannot take the
grant past its total, plus the release row and its audit entry — *before* any noise is
drawn. Its rows may be read meanwhile (an exact aggregate, which never leaves the gateway
unnoised); only once the charge is recorded is the noise drawn; the value and its signed
receipt are recorded, and only a value recorded as released is returned. A crash or failure
after the charge leaves it charged; re-sending the identical query then releases under that
same charge, and once released, the identical query returns the stored value at no cost, so
repeating a question cannot average the noise away.

Composition is basic sequential composition: a grant's spent ε is the sum of its releases'
ε, its spent δ the sum of their δ — unless its first release was Gaussian: then the grant
accounts in zCDP, each release charged what OpenDP's conversion of the grant's ρ grows by
(``zcdp``; docs/privacy-accounting.md, docs/adr/0017).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from sandbox import audit, units
from sandbox.audit import AuditAction
from sandbox.errors import (
    BudgetExhausted,
    Conflict,
    Forbidden,
    InputError,
    RefusedRelease,
    SandboxError,
)
from sandbox.gateway import zcdp
from sandbox.gateway.engine import Release
from sandbox.gateway.grants import Grant, GrantState, now
from sandbox.gateway.store import grants, releases
from sandbox.receipts import Domain, Signer


class ReleaseStatus(StrEnum):
    CHARGED = "charged"  # paid for; nothing computed or recorded yet
    RELEASED = "released"  # value and receipt stored: the answer, for good
    FAILED = "failed"  # the computation failed after the charge; the charge is kept


# move → {status it may leave: status it enters}, with the audit event it writes. A
# reclaim also takes a charged row whose request died without failing it (a crash).
TRANSITIONS: dict[str, tuple[dict[ReleaseStatus, ReleaseStatus], AuditAction]] = {
    "record": ({ReleaseStatus.CHARGED: ReleaseStatus.RELEASED}, AuditAction.RELEASE_RELEASED),
    "fail": ({ReleaseStatus.CHARGED: ReleaseStatus.FAILED}, AuditAction.RELEASE_FAILED),
    "reclaim": ({ReleaseStatus.CHARGED: ReleaseStatus.CHARGED,
                 ReleaseStatus.FAILED: ReleaseStatus.CHARGED}, AuditAction.RELEASE_CHARGED),
    "repeat": ({ReleaseStatus.RELEASED: ReleaseStatus.RELEASED},
               AuditAction.RELEASE_REPEATED),
}


def next_status(move: str, current: str) -> tuple[ReleaseStatus, AuditAction]:
    """The status ``move`` leads to from ``current``; raises if not allowed."""
    moves, event = TRANSITIONS[move]
    try:
        return moves[ReleaseStatus(current)], event
    except KeyError:
        raise Conflict(f"a release that is {current} cannot {move}") from None


# The statements every answer makes, built once (building them for each answer was a good
# part of its own cost). _SPEND charges only within the grant's totals, while it is active
# and unexpired.
_SAME = select(releases).where(and_(releases.c.grant_id == bindparam("g"),
                                    releases.c.query_hash == bindparam("q")))
_SPEND = (update(grants)
          .where(and_(grants.c.id == bindparam("g"),
                      grants.c.status == bindparam("active"),
                      grants.c.delta_pooled_atto == 0,  # a grant accounting in pure ε
                      grants.c.expires_at > bindparam("now"),
                      grants.c.epsilon_spent_micro + bindparam("eps")
                      <= grants.c.epsilon_total_micro,
                      grants.c.delta_spent_atto + bindparam("delta")
                      <= grants.c.delta_total_atto))
          .values(epsilon_spent_micro=grants.c.epsilon_spent_micro + bindparam("eps"),
                  delta_spent_atto=grants.c.delta_spent_atto + bindparam("delta")))
# A release of a zCDP grant (or the Gaussian release that makes one) is charged as priced
# against the grant's accounting as it stood, or priced again
_SPEND_POOLED = (update(grants)
                 .where(and_(grants.c.id == bindparam("g"),
                             grants.c.status == bindparam("active"),
                             grants.c.expires_at > bindparam("now"),
                             grants.c.rho_spent_femto == bindparam("rho_before"),
                             grants.c.delta_pooled_atto == bindparam("pooled_before"),
                             grants.c.epsilon_spent_micro == bindparam("eps_before"),
                             grants.c.delta_spent_atto == bindparam("delta_before"),
                             grants.c.epsilon_spent_micro + bindparam("eps")
                             <= grants.c.epsilon_total_micro,
                             grants.c.delta_spent_atto + bindparam("delta")
                             <= grants.c.delta_total_atto))
                 .values(epsilon_spent_micro=grants.c.epsilon_spent_micro + bindparam("eps"),
                         delta_spent_atto=grants.c.delta_spent_atto + bindparam("delta"),
                         rho_spent_femto=bindparam("rho_before") + bindparam("rho"),
                         delta_pooled_atto=bindparam("pooled_before") + bindparam("opens")))
_POOL = select(grants.c.rho_spent_femto, grants.c.delta_pooled_atto,
               grants.c.epsilon_spent_micro, grants.c.delta_spent_atto).where(
    grants.c.id == bindparam("g"))
POOL_TRIES = 20  # concurrent releases of one grant: each retry sees the others'
_CLAIM = insert(releases)
_RECORD = (update(releases)
           .where(and_(releases.c.id == bindparam("r"),
                       releases.c.status == bindparam("charged")))
           .values(status=bindparam("to"), value=bindparam("v"),
                   receipt=bindparam("signed"), released_at=bindparam("at")))


class Spec(Protocol):
    """What the ledger needs of a question's spec (central or federated)."""

    dataset: str
    epsilon: float
    delta: float

    def fingerprint(self) -> str: ...
    def canonical(self) -> str: ...


class Served(Protocol):
    id: str
    version: str


class Question(Protocol):
    """One question of one grant: ``resolve`` checks and compiles it — refusing with a
    reason before anything is spent — and names the dataset version it reads; ``begin``
    starts what may run while the charge is made (reading rows: nothing noised, nothing
    that leaves); ``run`` computes the release, called only once the charge (``claim``)
    is recorded; ``abandon`` drops what ``begin`` started when it will not run (the charge
    refused, or the stored release is the answer): a read not yet started never starts."""

    spec: Spec

    def resolve(self) -> Served: ...
    def begin(self) -> None: ...
    def run(self, claim: dict) -> Release: ...
    def abandon(self) -> None: ...


class Ledger:
    """Charges, reclaims, records and reads releases."""

    def __init__(self, db: Engine, signer: Signer) -> None:
        self.db = db
        self.signer = signer

    def answer(self, grant: Grant, question: Question) -> dict:
        """Charge, compute, record, sign, return — in that order (rows may be read while
        the charge is made; noise is drawn only after it)."""
        spec = question.spec
        try:
            dataset = question.resolve()
            if _worth_reading(grant, spec) and not self._released(grant, spec):
                question.begin()
            claim = self._charge(grant, spec, dataset)
        except SandboxError as exc:
            question.abandon()  # a grant that cannot pay keeps no reader busy
            self.refused(grant, spec, exc)
            raise
        except BaseException:
            question.abandon()
            raise
        if claim["status"] == ReleaseStatus.RELEASED:
            question.abandon()
            return _stored(claim)
        try:
            result = question.run(claim)
        except Exception as exc:
            self._fail(claim, exc)
            raise
        return self._record(grant, spec, dataset, claim, result)

    def refused(self, grant: Grant, spec: Spec, exc: SandboxError) -> None:
        with self.db.begin() as conn:
            audit.append(conn, AuditAction.QUERY_REFUSED, f"grant:{grant.id}",
                         f"dataset:{spec.dataset}",
                         {"spec": json.loads(spec.canonical()), "reason": exc.reason})

    def releases(self, grant: Grant) -> list[dict]:
        with self.db.connect() as conn:
            rows = conn.execute(select(releases).where(releases.c.grant_id == grant.id)
                                .order_by(releases.c.created_at)).mappings().all()
        return [{"release": r["id"], "status": r["status"], "dataset": r["dataset"],
                 "query": json.loads(r["spec"]), **_loss(r),
                 "created_at": r["created_at"], "released_at": r["released_at"],
                 "receipt": json.loads(r["receipt"]) if r["receipt"] else None}
                for r in rows]

    def _released(self, grant: Grant, spec: Spec) -> bool:
        """Whether ``spec`` has been released to ``grant`` (its stored value is the answer:
        nothing is read again)."""
        with self.db.connect() as conn:
            row = conn.execute(_SAME, {"g": grant.id, "q": spec.fingerprint()}).first()
        return row is not None and row.status == ReleaseStatus.RELEASED

    # -- the moves ---------------------------------------------------------------------
    def _charge(self, grant: Grant, spec: Spec, dataset: Served) -> dict:
        fingerprint = spec.fingerprint()
        noise = getattr(spec, "noise", "laplace")
        if noise == "gaussian":
            # its ρ is a search: found (and kept) outside the ledger's lock
            zcdp.rho_within(spec.epsilon, spec.delta)
        try:
            with self.db.begin() as conn:
                existing = conn.execute(_SAME, {"g": grant.id, "q": fingerprint}
                                        ).mappings().first()
                if existing is not None:
                    return self._reclaim(conn, grant, dict(existing))
                eps, delta = units.micro_epsilon(spec.epsilon), units.atto_delta(spec.delta)
                if noise == "gaussian" or conn.execute(_SPEND, {
                        "g": grant.id, "active": GrantState.ACTIVE.value,
                        "now": datetime.now(UTC).isoformat(), "eps": eps, "delta": delta,
                        }).rowcount != 1:
                    # a Gaussian release, or a grant that may account in zCDP
                    charge = _charge_pooled(conn, grant.id, noise, eps, delta)
                    if isinstance(charge, int):
                        _explain_refusal(conn, grant.id, spec, charge)
                    eps, delta = charge.epsilon_micro, charge.delta_atto
                claim = {
                    "id": uuid.uuid4().hex, "grant_id": grant.id, "query_hash": fingerprint,
                    "spec": spec.canonical(), "dataset": dataset.id,
                    "dataset_version": dataset.version, "epsilon_micro": eps,
                    "delta_atto": delta, "status": ReleaseStatus.CHARGED, "created_at": now(),
                }
                conn.execute(_CLAIM, claim)
                audit.append(conn, AuditAction.RELEASE_CHARGED, f"grant:{grant.id}",
                             f"release:{claim['id']}", {"epsilon": units.epsilon_of(eps),
                                                         "delta": units.delta_of(delta),
                                                         "query_hash": fingerprint})
                return claim
        except IntegrityError:
            # An identical query was charged by a concurrent request; nothing was spent here.
            raise Conflict("an identical query is being answered; send it again to get "
                           "its stored result") from None

    def _reclaim(self, conn: Connection, grant: Grant, existing: dict) -> dict:
        if existing["status"] == ReleaseStatus.RELEASED:
            _, event = next_status("repeat", existing["status"])
            audit.append(conn, event, f"grant:{grant.id}", f"release:{existing['id']}", {})
            return existing
        # Charged earlier but never released (a crash or a failure): release now under the
        # same charge. A fresh id makes a concurrent reclaim of the same row lose the race.
        status, event = next_status("reclaim", existing["status"])
        new_id = uuid.uuid4().hex
        taken = conn.execute(update(releases).where(and_(
            releases.c.id == existing["id"], releases.c.status == existing["status"]))
            .values(id=new_id, status=status, error=None)).rowcount
        if taken != 1:
            raise Conflict("an identical query is being answered; send it again")
        audit.append(conn, event, f"grant:{grant.id}", f"release:{new_id}",
                     {"reclaims": existing["id"], "epsilon": 0.0})
        return {**existing, "id": new_id, "status": status}

    def _fail(self, claim: dict, exc: Exception) -> None:
        status, event = next_status("fail", claim["status"])
        with self.db.begin() as conn:
            conn.execute(update(releases).where(and_(
                releases.c.id == claim["id"], releases.c.status == ReleaseStatus.CHARGED))
                .values(status=status, error=f"{type(exc).__name__}: {exc}"[:2000]))
            audit.append(conn, event, f"grant:{claim['grant_id']}",
                         f"release:{claim['id']}", {"error": type(exc).__name__})

    def _record(self, grant: Grant, spec: Spec, dataset: Served, claim: dict,
                result: Release) -> dict:
        status, event = next_status("record", claim["status"])
        payload = {
            "release": claim["id"], "grant": grant.id, "project": grant.project,
            "purpose": grant.purpose, "dataset": dataset.id,
            "dataset_version": dataset.version, "query": json.loads(spec.canonical()),
            "query_hash": claim["query_hash"], "result": result.rows,
            "epsilon": spec.epsilon, "delta": spec.delta, "charged": _loss(claim),
            "opendp_loss": [result.epsilon, result.delta], "released_at": now(),
            **({"refused": result.refused} if result.refused else {}),
            **({"withdrawals_version": result.withdrawals}
               if result.withdrawals is not None else {}),
        }
        receipt = self.signer.sign(payload, Domain.RECEIPT)
        with self.db.begin() as conn:
            done = conn.execute(_RECORD, {
                "r": claim["id"], "charged": ReleaseStatus.CHARGED.value,
                "to": status.value, "v": json.dumps(result.rows, ensure_ascii=False),
                "signed": json.dumps(receipt, ensure_ascii=False),
                "at": payload["released_at"]}).rowcount
            if done != 1:
                # Another request reclaimed this charge meanwhile: this value never leaves.
                raise Conflict("an identical query is being answered; send it again")
            audit.append(conn, event, f"grant:{grant.id}", f"release:{claim['id']}",
                         {"receipt_sha256": hashlib.sha256(
                             json.dumps(receipt, sort_keys=True).encode()).hexdigest()})
        answer = {"release": claim["id"], "result": result.rows, "columns": result.columns,
                  **_loss(claim), "repeated": False, "receipt": receipt}
        _raise_if_refused(answer)
        return answer


def _charge_pooled(conn: Connection, grant_id: str, noise: str, eps: int,
                   delta: int) -> zcdp.Charge | int:
    """Charge a release of (``eps``, ``delta``) units against the grant's accounting as it
    stands (``zcdp.price``); when the grant cannot pay (or is not active), the ε in
    micro-units it was priced at instead."""
    for _ in range(POOL_TRIES):
        row = conn.execute(_POOL, {"g": grant_id}).one()
        pool = zcdp.Pool(*row)
        try:
            charge = zcdp.price(noise, eps, delta, pool)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        charged = conn.execute(_SPEND_POOLED, {
            "g": grant_id, "active": GrantState.ACTIVE.value,
            "now": datetime.now(UTC).isoformat(), "eps": charge.epsilon_micro,
            "delta": charge.delta_atto, "rho": charge.rho_femto,
            "opens": charge.opens_delta_atto, "rho_before": pool.rho_femto,
            "pooled_before": pool.delta_atto, "eps_before": pool.epsilon_spent_micro,
            "delta_before": pool.delta_spent_atto}).rowcount
        if charged == 1:
            return charge
        if tuple(conn.execute(_POOL, {"g": grant_id}).one()) == tuple(row):
            return charge.epsilon_micro  # nothing moved: the grant refused the charge
    raise Conflict("too many releases of this grant at once; send it again")


def _worth_reading(grant: Grant, spec: Spec) -> bool:
    """Whether to read ``spec``'s rows while it is charged: not for a grant that, as its
    token was checked, could not pay for it (the charge decides; this only spares the
    engine work that a refusal would throw away — ``run`` reads them if it must)."""
    return (grant.status == GrantState.ACTIVE
            and grant.epsilon_spent + spec.epsilon <= grant.epsilon_total * (1 + 1e-9)
            and grant.delta_spent + spec.delta <= grant.delta_total * (1 + 1e-9))


def _explain_refusal(conn: Connection, grant_id: str, spec: Spec,
                     priced: int | None = None) -> None:
    grant = Grant.from_row(
        conn.execute(select(grants).where(grants.c.id == grant_id)).mappings().one())
    grant.check_usable()
    if grant.status != GrantState.ACTIVE:
        raise Forbidden(f"grant {grant_id} is {grant.status}")
    budget = grant.budget()
    eps_left, delta_left = budget["epsilon"]["remaining"], budget["delta"]["remaining"]
    needs = f"ε = {spec.epsilon:g}, δ = {spec.delta:g}"
    if priced is not None and priced != units.micro_epsilon(spec.epsilon):
        needs += f" (charged ε = {units.epsilon_of(priced):g} as this grant accounts)"
    raise BudgetExhausted(
        f"this query needs {needs} but only "
        f"ε = {eps_left:.6g}, δ = {delta_left:.3g} remain",
        epsilon_remaining=eps_left, delta_remaining=delta_left)


def _stored(row: dict[str, Any]) -> dict:
    receipt = json.loads(row["receipt"])
    rows = json.loads(row["value"])
    _raise_if_refused({"release": row["id"], **_loss(row), "repeated": True,
                       "receipt": receipt})
    return {"release": row["id"], "result": rows,
            "columns": list(rows[0].keys()) if rows else [], **_loss(row), "repeated": True,
            "receipt": receipt}


def _loss(row: Any) -> dict:
    """A release row's (ε, δ), from its exact units."""
    return {"epsilon": units.epsilon_of(row["epsilon_micro"]),
            "delta": units.delta_of(row["delta_atto"])}


def _raise_if_refused(answer: dict) -> None:
    """A release whose outcome is a refusal reaches the caller as ``RefusedRelease``,
    with its id and receipt: charged once, the same refusal every time."""
    refused = answer["receipt"]["payload"].get("refused")
    if refused:
        raise RefusedRelease(
            f"{refused} (release {answer['release']}: ε = {answer['epsilon']:g} was charged "
            "once; asking again returns this same outcome)",
            **{k: answer[k] for k in ("release", "epsilon", "delta", "repeated", "receipt")})
