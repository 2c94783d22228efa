"""Researcher client for the privacy gateway.

In a sandbox, ``Gateway.from_env()`` reads ``SANDBOX_GATEWAY_URL`` and
``SANDBOX_GATEWAY_TOKEN``. Every answer is differentially private, spends budget, and comes
with a signed receipt::

    from sandbox.client import Gateway
    gw = Gateway.from_env()
    gw.preview_count("emr-visits", epsilon=0.5)          # what accuracy would that buy?
    n = gw.count("emr-visits", where={"visit_type": "住院"}, epsilon=0.5)
    n.value, n.release_id
    gw.mean("emr-visits", "total_cost", group_by=["visit_type"], epsilon=0.5).df
    gw.budget()

Cohorts — one row per patient, from diagnoses, labs and prescriptions — are defined with
``Cohort``, tried on the dummy data with ``Cohort.frame()`` and asked with ``gw.cohort(c)``
(see ``sandbox.client.cohorts``).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

import httpx
import polars as pl

from sandbox import receipts
from sandbox.client.cohorts import Cohort, CohortStatistics, codelist

__all__ = ["Cohort", "DPResult", "Gateway", "GatewayError", "codelist", "dummy"]

URL_ENV = "SANDBOX_GATEWAY_URL"
TOKEN_ENV = "SANDBOX_GATEWAY_TOKEN"
DATASETS_ENV = "SANDBOX_DATASETS_DIR"

Where = dict[str, Any] | list[dict[str, Any]] | None


def dummy(dataset: str, table: str = "records") -> pl.DataFrame:
    """The dataset's dummy data: the real schema and value sets, made from metadata only —
    no patient's record. Develop against it; ask the gateway for real answers."""
    root = os.environ.get(DATASETS_ENV, "/opt/datasets")
    path = os.path.join(root, dataset, "dummy", f"{table}.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no dummy table {table!r} for dataset {dataset!r} in {root}")
    return pl.read_parquet(path)


class GatewayError(Exception):
    """The gateway refused or failed; ``reason`` says why in plain words."""

    def __init__(self, status: int, code: str, reason: str, details: dict | None = None):
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason
        self.details = details or {}

    def __str__(self) -> str:
        return self.reason


@dataclass
class DPResult:
    """A released answer: the frame, and the receipt that proves where it came from."""

    df: pl.DataFrame
    release_id: str
    receipt: dict
    epsilon: float
    delta: float
    repeated: bool = False
    query: dict = field(default_factory=dict)
    comparison: dict | None = None  # a test computed from the release (e.g. log-rank)
    # the releases a result computed from several is made of (a linear model: two)
    parts: tuple[DPResult, ...] = ()

    @property
    def receipts(self) -> list[dict]:
        """The receipts of every release behind this result."""
        return [p.receipt for p in self.parts] or [self.receipt]

    @property
    def value(self) -> Any:
        """The single number of an ungrouped count, sum or mean."""
        if self.df.height != 1 or self.df.width != 1:
            raise ValueError("this result is a table; use .df")
        return self.df.item()

    def to_pandas(self):
        frame = self.df.to_pandas()
        frame.attrs["release_id"] = self.release_id
        return frame

    def __repr__(self) -> str:
        again = ", stored answer (no charge)" if self.repeated else ""
        if self.parts:
            return (f"{self.df}\nreleases {', '.join(p.release_id for p in self.parts)}: "
                    f"ε = {self.epsilon:g} in all, δ = {self.delta:g}{again}")
        return (f"{self.df}\nrelease {self.release_id}: ε = {self.epsilon:g}, "
                f"δ = {self.delta:g}{again}")

    def _repr_html_(self) -> str:
        return (self.df._repr_html_() + f"<p>release <code>{self.release_id}</code>: "
                f"ε = {self.epsilon:g}, δ = {self.delta:g}</p>")


def _filters(where: Where) -> list[dict]:
    """``{"visit_type": "住院", "length_of_stay": (1, 10), "sex": ["男"]}`` → filter specs:
    a value means equality, a tuple a closed range, a list membership."""
    if where is None:
        return []
    if isinstance(where, list):
        return where
    out = []
    for name, value in where.items():
        if isinstance(value, tuple):
            out.append({"field": name, "op": "between", "value": list(value)})
        elif isinstance(value, list):
            out.append({"field": name, "op": "in", "value": value})
        else:
            out.append({"field": name, "op": "eq", "value": value})
    return out


class Gateway:
    """A connection to the gateway under one project token."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        # An idle connection is dropped here after 2 s, before the gateway's server closes
        # it (uvicorn: 5 s): at the same 5 s, a question sent just as the server closed the
        # connection came back "disconnected without a response".
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"},
                                  limits=httpx.Limits(keepalive_expiry=2.0))
        self._public_key: bytes | None = None
        self.federated = Federated(self)

    @classmethod
    def from_env(cls) -> Gateway:
        """The gateway this sandbox was provisioned with."""
        url, token = os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV)
        if not url or not token:
            raise GatewayError(0, "not_configured",
                               f"set {URL_ENV} and {TOKEN_ENV} (a sandbox sets them for you)")
        return cls(url, token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayError(0, "unreachable", f"cannot reach the gateway at {self.url}: "
                               f"{exc}") from None
        if response.status_code >= 400:
            try:
                data = response.json()
            except ValueError:
                data = {}
            reason = data.get("reason") or response.text or response.reason_phrase
            details = {k: v for k, v in data.items() if k not in ("error", "reason")}
            raise GatewayError(response.status_code, data.get("error", "error"), reason,
                               details)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    # -- information -------------------------------------------------------------------
    def datasets(self) -> list[dict]:
        """Datasets and fields this project may query, with their public metadata."""
        return self._call("GET", "/v1/datasets")

    def fields(self, dataset: str) -> pl.DataFrame:
        """The allowed fields of ``dataset``: type, description, bounds or categories."""
        for entry in self.datasets():
            if entry["id"] == dataset:
                return pl.DataFrame([{
                    "name": f["name"], "type": f["type"], "role": f["role"],
                    "description": f["description"]["zh"] + " / " + f["description"]["en"],
                    "bounds": str(f.get("bounds") or ""),
                    "categories": ", ".join(f.get("categories") or [])[:200],
                } for f in entry["fields"]])
        raise GatewayError(404, "not_found", f"dataset {dataset!r} is not in this project")

    def budget(self) -> dict:
        """Privacy budget: total, spent and remaining ε and δ."""
        return self._call("GET", "/v1/budget")

    def releases(self) -> list[dict]:
        """Every release of this project, with receipts."""
        return self._call("GET", "/v1/releases")

    def public_key(self) -> bytes:
        if self._public_key is None:
            self._public_key = self._call("GET", "/v1/public-key").encode()
        return self._public_key

    def verify(self, receipt: dict) -> dict:
        """Check a receipt against the gateway's public key; returns its payload."""
        return receipts.verify(receipt, self.public_key(), receipts.Domain.RECEIPT)

    def export(self, files: list[str | os.PathLike], results: list[DPResult | dict],
               note: str = "") -> dict:
        """Ask to take ``files`` (code, figures, tables, text — never data) out of the
        sandbox, citing the releases they come from. Automated checks and controllers'
        review follow in the portal; nothing leaves until they approve."""
        payload = []
        for path in files:
            with open(path, "rb") as handle:
                payload.append({"name": os.path.basename(path),
                                "content": base64.b64encode(handle.read()).decode()})
        receipts_out = [receipt for r in results
                        for receipt in (r.receipts if isinstance(r, DPResult) else [r])]
        return self._call("POST", "/v1/exports", {"files": payload, "receipts": receipts_out,
                                                  "note": note})

    # -- questions ---------------------------------------------------------------------
    def query(self, spec: dict) -> DPResult:
        """Send a raw query spec (see docs/gateway-api.md)."""
        return self._answer("/v1/query", spec)

    def _answer(self, path: str, body: dict) -> DPResult:
        answer = self._call("POST", path, body)
        frame = pl.DataFrame(answer["result"]) if answer["result"] else pl.DataFrame()
        return DPResult(frame, answer["release"], answer["receipt"], answer["epsilon"],
                        answer["delta"], answer.get("repeated", False), body)

    def cohort(self, cohort: Cohort | dict, *, noise: str = "laplace",
               delta: float = 0.0) -> CohortStatistics:
        """Statistics of ``cohort`` (a ``Cohort`` or its JSON spec), one row per patient;
        with ``noise="gaussian"`` and a ``delta``, each is released with Gaussian noise and
        charged the (ε, δ) OpenDP converts its zero-concentrated loss to."""
        return CohortStatistics(self, cohort, noise, delta)

    def preview(self, spec: dict) -> pl.DataFrame:
        """Noise scale and 95 % error bound of a query; spends nothing."""
        return pl.DataFrame(self._call("POST", "/v1/preview", spec)["statistics"])

    @staticmethod
    def _spec(kind: str, dataset: str, epsilon: float, delta: float = 0.0, **extra: Any
              ) -> dict:
        spec = {"dataset": dataset, "kind": kind, "epsilon": epsilon, "delta": delta}
        spec.update({k: v for k, v in extra.items() if v not in (None, [])})
        return spec

    def count(self, dataset: str, *, epsilon: float, where: Where = None,
              group_by: list[str] | None = None, keys: str = "public",
              delta: float = 0.0, noise: str = "laplace") -> DPResult:
        return self.query(self._spec("count", dataset, epsilon, delta, filters=_filters(where),
                                     group_by=group_by, keys=keys, noise=noise))

    def sum(self, dataset: str, field: str, *, epsilon: float,
            bounds: tuple[float, float] | None = None, where: Where = None,
            group_by: list[str] | None = None, delta: float = 0.0,
            noise: str = "laplace") -> DPResult:
        return self.query(self._spec("sum", dataset, epsilon, delta, field=field,
                                     bounds=bounds, filters=_filters(where),
                                     group_by=group_by, noise=noise))

    def mean(self, dataset: str, field: str, *, epsilon: float,
             bounds: tuple[float, float] | None = None, where: Where = None,
             group_by: list[str] | None = None, delta: float = 0.0,
             noise: str = "laplace") -> DPResult:
        return self.query(self._spec("mean", dataset, epsilon, delta, field=field,
                                     bounds=bounds, filters=_filters(where),
                                     group_by=group_by, noise=noise))

    def quantiles(self, dataset: str, field: str, quantiles: list[float], *,
                  epsilon: float, bounds: tuple[float, float] | None = None,
                  where: Where = None) -> DPResult:
        return self.query(self._spec("quantiles", dataset, epsilon, field=field,
                                     quantiles=quantiles, bounds=bounds,
                                     filters=_filters(where)))

    def median(self, dataset: str, field: str, *, epsilon: float,
               bounds: tuple[float, float] | None = None, where: Where = None) -> DPResult:
        return self.quantiles(dataset, field, [0.5], epsilon=epsilon, bounds=bounds,
                              where=where)

    def histogram(self, dataset: str, field: str, bins: list[float], *, epsilon: float,
                  where: Where = None) -> DPResult:
        return self.query(self._spec("histogram", dataset, epsilon, field=field, bins=bins,
                                     filters=_filters(where)))

    def preview_count(self, dataset: str, *, epsilon: float, where: Where = None,
                      group_by: list[str] | None = None) -> pl.DataFrame:
        return self.preview(self._spec("count", dataset, epsilon, filters=_filters(where),
                                       group_by=group_by))


class Federated:
    """Questions about federated datasets (``gw.federated``): each site computes its part
    under CKKS encryption; only the noisy total is decrypted, by the key service. Answers
    carry receipts like any other release."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def query(self, spec: dict) -> DPResult:
        """Send a raw federated spec (see docs/federated.md)."""
        return self._gateway._answer("/v1/federated/query", spec)

    def preview(self, spec: dict) -> pl.DataFrame:
        """Per slot of the encrypted vector: noise scale, 95 % noise bound and the CKKS
        approximation error bound; spends nothing."""
        return pl.DataFrame(self._gateway._call("POST", "/v1/federated/preview",
                                                spec)["statistics"])

    @staticmethod
    def _spec(kind: str, dataset: str, epsilon: float, **extra: Any) -> dict:
        spec = {"dataset": dataset, "kind": kind, "epsilon": epsilon}
        spec.update({k: v for k, v in extra.items() if v not in (None, [], {})})
        return spec

    def histogram(self, dataset: str, field: str, bins: list[float], *, epsilon: float,
                  where: Where = None) -> DPResult:
        """Counts per bin (a cell under 5 patients is withheld)."""
        return self.query(self._spec("histogram", dataset, epsilon, field=field, bins=bins,
                                     filters=_filters(where)))

    def mean(self, dataset: str, field: str, *, epsilon: float,
             bounds: tuple[float, float] | None = None, where: Where = None) -> DPResult:
        """Count, mean and standard deviation of ``field`` clamped to ``bounds``."""
        return self.query(self._spec("mean", dataset, epsilon, field=field, bounds=bounds,
                                     filters=_filters(where)))

    def linear_regression(self, dataset: str, target: str, features: list[str], *,
                          epsilon: float, bounds: tuple[float, float] | None = None,
                          feature_bounds: dict[str, tuple[float, float]] | None = None,
                          where: Where = None) -> DPResult:
        """Least-squares coefficients of ``target`` on ``features`` (text features one-hot,
        first category as reference; features taken in name order, one row per named
        term) from noisy XᵀX and Xᵀy, with n and R²."""
        return self.query(self._spec("linear_regression", dataset, epsilon, target=target,
                                     features=features, bounds=bounds,
                                     feature_bounds=feature_bounds, filters=_filters(where)))

    def preview_mean(self, dataset: str, field: str, *, epsilon: float,
                     bounds: tuple[float, float] | None = None) -> pl.DataFrame:
        return self.preview(self._spec("mean", dataset, epsilon, field=field, bounds=bounds))
