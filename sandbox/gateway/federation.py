"""The gateway's side of federated queries (docs/federated.md).

``federation.json`` (``SANDBOX_GATEWAY_FEDERATION_FILE``) names the key service and, for
each federated dataset, its public metadata and its sites::

    {"keys_url": "http://127.0.0.1:8720",
     "datasets": {"emr-visits": {"metadata": "var/federated/emr-visits/metadata.json",
                                 "sites": {"north": "http://127.0.0.1:8731", …}}}}

For a query the gateway signs one request per site and relays the encrypted noisy parts it
gets back, with the sites' attestations, to the key service, which adds them and decrypts
the total — which the gateway cannot do: it only ever holds the public context, and it
draws no noise of its own (the sites do, ADR 0011). The query id is derived from the
portal's authorization of the grant and the question (``authorization.query_id``), and the
sites and the key service derive it again themselves: a retry asks about the same query id
and gets the same noisy shares and the same outcome, and no one can ask one question under
another id.

Before a federated dataset is first queried, and again every ``overlap_ttl`` seconds, the
gateway checks the federation's declared ``sites_per_patient`` against the sites: each
sends its patients blinded with a fresh salt (``/v1/overlap``), and a federation in which
more patients' blinded pseudonyms are shared by more sites than declared is refused.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from sandbox import receipts
from sandbox.data import metadata
from sandbox.errors import (
    InputError,
    PartitionChanged,
    PolicyRefusal,
    SandboxError,
    Unavailable,
)
from sandbox.federated import messages
from sandbox.federated.plan import (
    MIN_SITES,
    Plan,
    finish,
    make_plan,
    sites_per_patient,
)
from sandbox.federated.spec import FederatedSpec, resolved
from sandbox.gateway.engine import Release

WITHDRAWAL_TIMEOUT = 15.0
OVERLAP_TTL = 3600.0


@dataclass(frozen=True)
class Overlap:
    """What an overlap check found: patients (blinded) by the number of sites holding
    them, against the federation's declared bound."""

    check_id: str
    declared: int
    held_by: dict[int, int]  # number of sites → patients held by that many
    at: float
    partitions: dict[str, str]  # site → digest of the patients it held when checked

    @property
    def observed(self) -> int:
        return max(self.held_by, default=0)

    @property
    def ok(self) -> bool:
        return self.observed <= self.declared

    def describe(self) -> dict:
        return {"check": self.check_id, "declared_sites_per_patient": self.declared,
                "observed_sites_per_patient": self.observed,
                "patients_by_sites": {str(k): v for k, v in sorted(self.held_by.items())}}


@dataclass(frozen=True)
class FederatedDataset:
    id: str
    metadata: dict
    sites: dict[str, str]  # name → URL

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def fields(self) -> dict[str, dict]:
        return {f["name"]: f for f in self.metadata["tables"]["records"]["fields"]}


class Federation:
    def __init__(self, config_file: Path | None, signer: receipts.Signer,
                 timeout: float = 300, overlap_ttl: float = OVERLAP_TTL) -> None:
        self.signer = signer
        self.overlap_ttl = overlap_ttl
        self.overlaps: dict[str, Overlap] = {}
        # One client for every call: building one (TLS set-up included) costs ~20 ms.
        self._http = httpx.Client(timeout=timeout)
        self.datasets: dict[str, FederatedDataset] = {}
        self.keys_url = ""
        self._lock = threading.Lock()  # one overlap check at a time
        if config_file is None:
            return
        try:
            config = json.loads(Path(config_file).read_text(encoding="utf-8"))
            self.keys_url = config["keys_url"].rstrip("/")
            for name, entry in config["datasets"].items():
                meta = metadata.read(Path(entry["metadata"])).document()
                if meta["id"] != name or len(entry["sites"]) < MIN_SITES:
                    raise ValueError(f"{name}: metadata of {meta['id']!r}, or fewer than "
                                     f"{MIN_SITES} sites")
                sites_per_patient(meta)
                self.datasets[name] = FederatedDataset(name, meta, dict(entry["sites"]))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"federation file {config_file}: {exc}") from None
        # What a site has been told of the withdrawals is kept by its name (deliveries):
        # one name, one URL, whichever datasets it serves.
        urls: dict[str, str] = {}
        for dataset in self.datasets.values():
            for site, url in dataset.sites.items():
                if urls.setdefault(site, url) != url:
                    raise InputError(f"federation file {config_file}: site {site!r} has two "
                                     f"URLs ({urls[site]}, {url}); give each its own name")

    def _dataset(self, name: str) -> FederatedDataset:
        dataset = self.datasets.get(name)
        if dataset is None:
            raise InputError(f"{name!r} is not a federated dataset; federated: "
                             f"{', '.join(sorted(self.datasets)) or 'none'}")
        return dataset

    def resolve(self, spec: FederatedSpec) -> FederatedSpec:
        """The question as every party spells it: its public default bounds written in."""
        return resolved(spec, self._dataset(spec.dataset).metadata)

    def plan(self, spec: FederatedSpec, allowed: set[str]) -> Plan:
        return make_plan(spec, self._dataset(spec.dataset).metadata, allowed)

    def run(self, plan: Plan, grant: dict, query: str, authorized: dict) -> Release:
        """Ask every site for its noisy part of query ``query``, have the key service add
        and decrypt them; the released rows, or the key service's refusal as the release.
        Every outcome of the key service is final for the query id; only a failure to
        reach it (or too few sites) leaves the charge to be retried."""
        spec = plan.spec
        dataset = self.datasets[spec.dataset]
        body = {"query_id": query, "spec": spec.model_dump(mode="json"),
                "purpose": grant["purpose"], "fields": grant["fields"],
                "authorization": authorized}
        checked = self.overlaps.get(spec.dataset)
        partitions = checked.partitions if checked else {}
        with ThreadPoolExecutor(len(dataset.sites)) as threads:
            answers = list(threads.map(
                lambda item: self._ask_site(*item, body | {"partition": partitions.get(
                    item[0])}), sorted(dataset.sites.items())))
        parts = [a for a in answers if isinstance(a, dict)]
        if len(parts) < MIN_SITES:
            failed = "; ".join(a for a in answers if isinstance(a, str))
            raise Unavailable(f"only {len(parts)} of {len(answers)} sites answered "
                              f"({failed}); a federated answer needs {MIN_SITES}")
        request = messages.sign(self.signer, "keys", "decrypt", {
            "query_id": query, "spec": body["spec"], "layout": plan.describe(),
            "grant": {k: grant[k] for k in ("id", "project", "status", "expires_at",
                                            "datasets", "fields", "epsilon_total",
                                            "epsilon_spent")},
            "attestations": [p["attestation"] for p in parts], "authorization": authorized})
        answer = self._post(f"{self.keys_url}/v1/decrypt", {
            "request": request, "parts": [p["ciphertext"] for p in parts]},
            "the key service")
        if answer.get("outcome") != "released":
            return Release([], spec.epsilon, 0.0, [],
                           refused=str(answer.get("reason") or "refused by the key service"))
        rows = finish(plan, answer["values"])
        for row in rows:
            row["sites"] = len(answer.get("sites") or parts)
        return Release(rows, spec.epsilon, 0.0, list(rows[0]))

    def check_overlap(self, dataset_id: str, force: bool = False) -> Overlap:
        """The federation's patients held by several sites, against its declared bound:
        each site sends its patients blinded with a fresh salt; the last check is reused
        for ``overlap_ttl`` seconds. Raises when a site cannot answer."""
        with self._lock:
            last = self.overlaps.get(dataset_id)
            if last is not None and not force and time.time() - last.at < self.overlap_ttl:
                return last
            overlap = self._check_overlap(self.datasets[dataset_id])
            self.overlaps[dataset_id] = overlap
            return overlap

    def _check_overlap(self, dataset: FederatedDataset) -> Overlap:
        check, salt = uuid.uuid4().hex, secrets.token_hex(32)
        held: Counter[bytes] = Counter()
        partitions: dict[str, str] = {}
        for name, url in sorted(dataset.sites.items()):
            answer = self._post(f"{url.rstrip('/')}/v1/overlap", messages.sign(
                self.signer, f"site:{name}", "overlap", {"check_id": check, "salt": salt}),
                f"site {name}")
            try:
                blob = base64.b64decode(answer["digests"], validate=True)
            except (KeyError, TypeError, ValueError):
                raise Unavailable(f"site {name} sent no blinded patients") from None
            held.update({blob[i:i + 8] for i in range(0, len(blob), 8)})
            partitions[name] = str(answer.get("partition") or "")
        return Overlap(check, sites_per_patient(dataset.metadata),
                       dict(Counter(held.values())), time.time(), partitions)

    def _ask_site(self, name: str, url: str, body: dict) -> dict | str:
        try:
            return self._post(f"{url.rstrip('/')}/v1/aggregate", messages.sign(
                self.signer, f"site:{name}", "aggregate", body), f"site {name}")
        except PartitionChanged:
            raise
        except SandboxError as exc:
            return f"{name}: {exc.reason}"

    def holding(self, pseudonym: str, strict: bool) -> list[dict]:
        """The federated datasets (id, version) one of whose sites holds the patient. A site
        that cannot be asked fails the call when ``strict``, else is passed over."""
        found = []
        for dataset in self.datasets.values():
            for name, url in sorted(dataset.sites.items()):
                try:
                    answer = self._post(f"{url.rstrip('/')}/v1/patients", messages.sign(
                        self.signer, f"site:{name}", "holds", {"pseudonym": pseudonym}),
                        f"site {name}", timeout=WITHDRAWAL_TIMEOUT)
                except SandboxError:
                    if strict:
                        raise
                    continue
                if answer.get("holds"):
                    found.append({"id": dataset.id, "version": dataset.version})
                    break
        return found

    def sites(self) -> dict[str, str]:
        """Every site of every federated dataset: name → URL."""
        return {name: url for dataset in self.datasets.values()
                for name, url in dataset.sites.items()}

    def tell_withdrawals(self, name: str, url: str, withdrawals: list[dict]) -> None:
        """Forward withdrawals to one site, in one message; raises if it was not told (a
        site that is down must not hold up the intake for long)."""
        self._post(f"{url.rstrip('/')}/v1/withdrawals", messages.sign(
            self.signer, f"site:{name}", "withdraw", {"withdrawals": withdrawals}),
                   f"site {name}", timeout=WITHDRAWAL_TIMEOUT)

    def tell_keys(self, statement: dict) -> bool:
        """Relay the portal's signed grant state statement to the key service; whether it
        took it (a key service that is down is told by the portal's next change, or by
        anyone holding the statement: ``POST /v1/grant-states``)."""
        if not self.keys_url:
            return False
        try:
            self._post(f"{self.keys_url}/v1/grant-states", {"statement": statement},
                       "the key service", timeout=WITHDRAWAL_TIMEOUT)
        except SandboxError:
            return False
        return True

    def _post(self, url: str, body: dict, who: str, timeout: float | None = None) -> dict:
        try:
            response = self._http.post(url, json=body,
                                       **({"timeout": timeout} if timeout else {}))
        except httpx.HTTPError as exc:
            raise Unavailable(f"{who} could not be reached ({exc})") from None
        if response.status_code != 200:
            try:
                answer = response.json()
                reason, code = answer.get("reason", response.text), answer.get("error")
            except (ValueError, AttributeError):
                reason, code = response.text, None
            if code == PartitionChanged.code:
                raise PartitionChanged(reason)
            if response.status_code in (401, 403):
                raise PolicyRefusal(f"{who} refused: {reason}")
            raise Unavailable(f"{who} answered {response.status_code}: {reason}")
        return response.json()
