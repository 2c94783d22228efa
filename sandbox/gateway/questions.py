"""The two kinds of question the ledger answers (``ledger.Question``): a central one, over
a dataset the gateway serves itself, and a federated one, whose rows stay at their sites.
Each resolves — checks and compiles, refusing before anything is spent —, begins what may
run while the ledger charges (reading exact aggregates, never noise), and then runs once
the charge is made."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace

from sqlalchemy import Engine

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, InputError, NotFound, PartitionChanged, PolicyRefusal
from sandbox.federated import authorization
from sandbox.federated.plan import Plan
from sandbox.federated.spec import FederatedSpec
from sandbox.gateway.deliveries import Deliveries
from sandbox.gateway.engine import Engine as DPEngine
from sandbox.gateway.engine import Release
from sandbox.gateway.federation import FederatedDataset, Federation
from sandbox.gateway.grants import Grant, Grants
from sandbox.queries.checks import check_spec
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import Dataset
from sandbox.queries.withdrawals import WithdrawalLog, Withdrawn


def central_dataset(grant: Grant, spec: QuerySpec, datasets: dict[str, Dataset],
                    federation: Federation, engine: DPEngine) -> Dataset:
    """The served dataset ``spec`` asks about, once the grant and the dataset allow it."""
    dataset = served_dataset(grant, spec.dataset, datasets, federation)
    check_spec(spec, dataset.fields, set(grant.fields))
    return dataset


def served_dataset(grant: Grant, name: str, datasets: dict[str, Dataset],
                   federation: Federation) -> Dataset:
    """The dataset ``name`` this gateway serves itself, if the grant covers it."""
    grant.check_dataset(name)
    dataset = datasets.get(name)
    if name in federation.datasets:
        raise InputError(f"{name!r} is federated: its rows stay at its sites; "
                         "ask with gw.federated.histogram / mean / linear_regression")
    if dataset is None:
        raise NotFound(f"dataset {name!r} is not served")
    return dataset


class CentralQuestion:
    """A query over a dataset this gateway serves, answered by OpenDP here."""

    def __init__(self, grant: Grant, spec: QuerySpec, datasets: dict[str, Dataset],
                 federation: Federation, engine: DPEngine, withdrawals: WithdrawalLog) -> None:
        self.grant, self.spec = grant, spec
        self._datasets, self._federation, self._engine = datasets, federation, engine
        self._withdrawals = withdrawals
        self._compiled = None
        self._withdrawn: Withdrawn | None = None
        self._begun: Future | None = None

    def resolve(self) -> Dataset:
        self.dataset = central_dataset(self.grant, self.spec, self._datasets,
                                       self._federation, self._engine)
        # Compile (and calibrate) before charging: a query OpenDP cannot answer is refused
        # without spending anything.
        self._compiled = self._engine.compile(self.spec, self.dataset, self.grant.purpose)
        return self.dataset

    def begin(self) -> None:
        # the withdrawal set as it stands now, as the question begins: a withdrawal
        # recorded before this line is in the answer
        self._withdrawn = self._withdrawals.current()
        self._begun = self._engine.begin(self._compiled, self.dataset, self._withdrawn,
                                         self.grant.purpose)

    def abandon(self) -> None:
        if self._begun is not None:
            self._begun.cancel()  # still queued: it never reads; already reading: it ends

    def run(self, claim: dict) -> Release:
        if self._withdrawn is None:
            self.begin()
        return self._engine.run(self.spec, self.dataset, self._compiled, self._withdrawn,
                                self.grant.purpose, self._begun)


def federated_plan(grant: Grant, spec: FederatedSpec, federation: Federation) -> Plan:
    grant.check_dataset(spec.dataset)
    return federation.plan(spec, set(grant.fields))


def check_federation(db: Engine, federation: Federation, dataset: str,
                     again: bool = False) -> None:
    """Refuse a federation whose sites share more patients than it declares (checked from
    the sites' blinded pseudonyms — ``again``: now, whatever the last check —, audited when
    a new check ran)."""
    before = federation.overlaps.get(dataset)
    overlap = federation.check_overlap(dataset, force=again)
    if overlap is not before:
        with db.begin() as conn:
            audit.append(conn, AuditAction.FEDERATION_CHECKED, "gateway",
                         f"dataset:{dataset}", {**overlap.describe(), "ok": overlap.ok})
    if not overlap.ok:
        # The counts are exact and stay with the controllers (the audit entry above): the
        # researcher learns only that the federation is refused, and why in words.
        raise PolicyRefusal(
            f"{dataset}: its sites share more patients than the federation declares "
            f"(at most {overlap.declared} site(s) per patient, which its noise is "
            "calibrated to); nothing can be released until the controllers correct it "
            "(the counts are in the gateway's audit log)")


class FederatedQuestion:
    """A federated answer: computed by the sites under encryption with their own noise
    shares, added and decrypted by the key service. Retries of a charge ask about the same
    query id, whose outcome the key service keeps."""

    def __init__(self, grant: Grant, spec: FederatedSpec, federation: Federation,
                 grants: Grants, db: Engine, deliveries: Deliveries,
                 withdrawals: WithdrawalLog) -> None:
        self.grant, self.spec = grant, spec
        self._federation, self._grants, self._db = federation, grants, db
        self._deliveries, self._withdrawals = deliveries, withdrawals

    def resolve(self) -> FederatedDataset:
        # a withdrawal set that shrank (rows deleted, the sites perhaps never told them)
        # refuses here, before anything is charged, as it does for central questions
        self._withdrawals.current()
        self._plan = federated_plan(self.grant, self.spec, self._federation)
        self._document = self._grants.authorization_of(self.grant.id)
        if self._document is None:
            raise Forbidden(f"grant {self.grant.id} came without the portal's signed "
                            "authorization, which federated queries need")
        self._query = authorization.query_id(self._document["payload"]["id"],
                                             self.spec.fingerprint())
        check_federation(self._db, self._federation, self.spec.dataset)
        return self._federation.datasets[self.spec.dataset]

    def begin(self) -> None:
        """Nothing to read ahead: the sites compute once the charge is made."""

    def abandon(self) -> None:
        """Nothing was begun."""

    def run(self, claim: dict) -> Release:
        # The key service checks the grant as it stands after this query's charge; the
        # sites and the key service recompute the query's id themselves. Every site is told
        # the withdrawals recorded before this line (a site that missed some at intake
        # too), or the question is not asked.
        sites = self._federation.datasets[self.spec.dataset].sites
        version = self._deliveries.require(sites, self._federation.tell_withdrawals)
        try:
            release = self._ask()
        except PartitionChanged:
            # a site's data changed since the check (nothing was computed): check the
            # federation again — refused if its bound no longer holds — and ask again
            check_federation(self._db, self._federation, self.spec.dataset, again=True)
            release = self._ask()
        return replace(release, withdrawals=version)

    def _ask(self) -> Release:
        return self._federation.run(self._plan, self._grants.get(self.grant.id).as_dict(),
                                    self._query, self._document)
