"""The gateway's side of federated queries (docs/federated.md).

``federation.json`` (``SANDBOX_GATEWAY_FEDERATION_FILE``) names the key service and, for
each federated dataset, its public metadata and its sites::

    {"keys_url": "http://127.0.0.1:8720",
     "datasets": {"emr-visits": {"metadata": "var/federated/emr-visits/metadata.json",
                                 "sites": {"north": "http://127.0.0.1:8731", …}}}}

For a query the gateway signs one request per site, adds the encrypted parts it gets back
and encrypted OpenDP noise, and asks the key service to decrypt the total — which it cannot
do itself: it only ever holds the public context.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from sandbox import receipts
from sandbox.errors import InputError, PolicyRefusal, SandboxError, Unavailable
from sandbox.federated import ckks, messages
from sandbox.federated.keys import MIN_SITES
from sandbox.federated.plan import FederatedSpec, Plan, finish, make_plan, noise
from sandbox.gateway.engine import Release

WITHDRAWAL_TIMEOUT = 15.0


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
                 timeout: float = 300) -> None:
        self.signer = signer
        # One client for every call: building one (TLS set-up included) costs ~20 ms.
        self._http = httpx.Client(timeout=timeout)
        self.datasets: dict[str, FederatedDataset] = {}
        self.keys_url = ""
        self._context = None
        self._pool: ckks.EncryptionPool | None = None
        self._lock = threading.Lock()
        if config_file is None:
            return
        try:
            config = json.loads(Path(config_file).read_text(encoding="utf-8"))
            self.keys_url = config["keys_url"].rstrip("/")
            for name, entry in config["datasets"].items():
                meta = json.loads(Path(entry["metadata"]).read_text(encoding="utf-8"))
                if meta["id"] != name or len(entry["sites"]) < MIN_SITES:
                    raise ValueError(f"{name}: metadata of {meta['id']!r}, or fewer than "
                                     f"{MIN_SITES} sites")
                self.datasets[name] = FederatedDataset(name, meta, dict(entry["sites"]))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"federation file {config_file}: {exc}") from None

    def context(self):
        """The key service's public context (fetched once); no secret key in it."""
        return self._public()[0]

    def _public(self) -> tuple:
        with self._lock:
            if self._context is None:
                try:
                    response = self._http.get(f"{self.keys_url}/v1/context")
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    raise Unavailable(f"the key service could not be reached ({exc})") \
                        from None
                self._context = ckks.load(response.content)
                self._pool = ckks.EncryptionPool(self._context)
            return self._context, self._pool

    def plan(self, spec: FederatedSpec, allowed: set[str]) -> Plan:
        dataset = self.datasets.get(spec.dataset)
        if dataset is None:
            raise InputError(f"{spec.dataset!r} is not a federated dataset; federated: "
                             f"{', '.join(sorted(self.datasets)) or 'none'}")
        return make_plan(spec, dataset.metadata, allowed)

    def run(self, plan: Plan, grant: dict, query_id: str, with_noise: bool = True
            ) -> Release:
        """Ask every site, combine, noise, have the total decrypted; the released rows."""
        spec = plan.spec
        dataset = self.datasets[spec.dataset]
        context, encryptions = self._public()
        body = {"query_id": query_id, "spec": spec.model_dump(mode="json"),
                "purpose": grant["purpose"], "fields": grant["fields"]}
        with ThreadPoolExecutor(len(dataset.sites)) as threads:
            answers = list(threads.map(lambda item: self._ask_site(*item, body),
                                    sorted(dataset.sites.items())))
        parts = [a for a in answers if isinstance(a, dict)]
        if len(parts) < MIN_SITES:
            failed = "; ".join(a for a in answers if isinstance(a, str))
            raise Unavailable(f"only {len(parts)} of {len(answers)} sites answered "
                              f"({failed}); a federated answer needs {MIN_SITES}")
        ciphertexts = [ckks.unb64(p["ciphertext"]) for p in parts]
        noisy = encryptions.encrypt(noise(plan) if with_noise else [0.0] * plan.size)
        combined = ckks.add(context, [*ciphertexts, noisy])
        request = messages.sign(self.signer, "keys", {
            "query_id": query_id, "spec": body["spec"], "layout": plan.describe(),
            "grant": {k: grant[k] for k in ("id", "project", "status", "expires_at",
                                            "datasets", "fields", "epsilon_total",
                                            "epsilon_spent")},
            "attestations": [p["attestation"] for p in parts],
            "noise_sha256": messages.digest(noisy),
            "combined_sha256": messages.digest(combined)})
        answer = self._post(f"{self.keys_url}/v1/decrypt", {
            "request": request, "parts": [p["ciphertext"] for p in parts],
            "noise": ckks.b64(noisy), "combined": ckks.b64(combined)}, "the key service")
        rows = finish(plan, answer["values"])
        for row in rows:
            row["sites"] = len(parts)
        return Release(rows, spec.epsilon, 0.0, list(rows[0]))

    def _ask_site(self, name: str, url: str, body: dict) -> dict | str:
        try:
            return self._post(f"{url.rstrip('/')}/v1/aggregate",
                              messages.sign(self.signer, f"site:{name}", body), f"site {name}")
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
                        self.signer, f"site:{name}", {"pseudonym": pseudonym}),
                        f"site {name}", timeout=WITHDRAWAL_TIMEOUT)
                except SandboxError:
                    if strict:
                        raise
                    continue
                if answer.get("holds"):
                    found.append({"id": dataset.id, "version": dataset.version})
                    break
        return found

    def forward_withdrawal(self, pseudonym: str, purposes: list[str]) -> list[str]:
        """Tell every site of every federated dataset; the sites that could not be told."""
        missed = []
        for dataset in self.datasets.values():
            for name, url in dataset.sites.items():
                try:  # a site that is down must not hold up the intake for long
                    self._post(f"{url.rstrip('/')}/v1/withdrawals", messages.sign(
                        self.signer, f"site:{name}", {"pseudonym": pseudonym,
                                                      "purposes": purposes}),
                               f"site {name}", timeout=WITHDRAWAL_TIMEOUT)
                except SandboxError:
                    missed.append(name)
        return missed

    def _post(self, url: str, body: dict, who: str, timeout: float | None = None) -> dict:
        try:
            response = self._http.post(url, json=body,
                                       **({"timeout": timeout} if timeout else {}))
        except httpx.HTTPError as exc:
            raise Unavailable(f"{who} could not be reached ({exc})") from None
        if response.status_code != 200:
            try:
                reason = response.json().get("reason", response.text)
            except ValueError:
                reason = response.text
            if response.status_code in (401, 403):
                raise PolicyRefusal(f"{who} refused: {reason}")
            raise Unavailable(f"{who} answered {response.status_code}: {reason}")
        return response.json()
