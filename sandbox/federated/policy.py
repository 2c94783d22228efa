"""What the key service checks before it decrypts anything: plain functions over the
gateway's signed request and the sites' attestations, no key and no database.

A request is decrypted only if it describes a query within the grant the gateway states,
its layout is the one its kind of query has, and at least ``min_sites`` registered sites
attest — each with its own key — that they computed a part for this very query and
ciphertext, under the same public parameters (rows per patient, sites per patient), with
noise of at least the scale the query's ε needs, and a minimum count no laxer than theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sandbox import receipts, units
from sandbox.errors import Forbidden, InputError, PolicyRefusal, Unauthenticated
from sandbox.federated import counts, messages
from sandbox.federated.plan import MIN_PATIENTS
from sandbox.federated.spec import FederatedSpec


@dataclass(frozen=True)
class Layout:
    """The request's vector layout, as the gateway planned it."""

    size: int
    count_checks: list[counts.CountCheck]
    min_count: float
    rows_per_patient: int
    sites_per_patient: int

    @classmethod
    def of(cls, request: dict) -> Layout:
        try:
            layout = request["layout"]
            return cls(int(layout["size"]), counts.from_json(layout["count_checks"]),
                       float(layout["min_count"]), int(layout["rows_per_patient"]),
                       int(layout["sites_per_patient"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the request does not describe a query: {exc}") from None

    def required_scale(self, spec: FederatedSpec) -> float:
        """The noise scale each site's share needs for the query's ε (plan.Plan.scale)."""
        row_l1 = 1 if spec.kind == "histogram" else self.size
        return row_l1 * self.rows_per_patient * self.sites_per_patient / spec.epsilon


# a mean's vector: n, Σx, Σx², then the rows above and below its bounds — all but the sums
# are counts the answer reveals
MEAN_SLOTS = 5
MEAN_CHECKS = [counts.single(0), counts.single(3), counts.single(4)]


def check_layout(spec: FederatedSpec, layout: Layout) -> None:
    """The count checks include what the kind of query always reveals (each bin of a
    histogram; n and the rows away from the bounds of a mean; n otherwise), whatever the
    request says — the sites attest the rest; the minimum count covers 5 patients of r
    rows at m sites."""
    if spec.kind == "histogram":
        expected = [counts.single(i) for i in range(len(spec.bins) - 1)]
        fits = layout.count_checks == expected and layout.size == len(expected)
    else:
        fits = counts.single(0) in layout.count_checks and \
            (spec.kind != "mean" or (layout.size == MEAN_SLOTS
                                     and layout.count_checks == MEAN_CHECKS))
    if not fits or any(slot >= layout.size or slot < 0
                       for check in layout.count_checks for slot, _ in check):
        raise PolicyRefusal("the request's layout does not fit its query")
    if layout.rows_per_patient < 1 or layout.sites_per_patient < 1 or \
            layout.min_count < MIN_PATIENTS * layout.rows_per_patient * \
            layout.sites_per_patient:
        raise PolicyRefusal("the request's minimum count covers fewer than 5 patients")


def within_grant(grant: dict, spec: FederatedSpec) -> None:
    try:
        expired = datetime.fromisoformat(grant["expires_at"]) <= datetime.now(UTC)
        over = units.micro_epsilon(float(grant["epsilon_spent"]), up=True) > \
            units.micro_epsilon(float(grant["epsilon_total"]))
        if grant["status"] != "active" or expired:
            raise Forbidden(f"grant {grant['id']} is {grant['status']}"
                            f"{' and expired' if expired else ''}")
        if spec.dataset not in grant["datasets"]:
            raise Forbidden(f"dataset {spec.dataset!r} is outside grant {grant['id']}")
        outside = sorted(set(spec.fields_used()) - set(grant["fields"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the request does not describe the grant: {exc}") from None
    if outside:
        raise Forbidden(f"fields {outside} are outside grant {grant['id']}")
    if over:
        raise Forbidden(f"grant {grant['id']} has spent more than its ε")


def attested(attestations: list, parts: list[bytes], query_id: str, spec: FederatedSpec,
             layout: Layout, site_keys: dict[str, bytes], min_sites: int,
             require_noise: bool = True) -> list[str]:
    """The sites whose attestations hold: registered, signed by the site, for this query,
    this ciphertext, this layout and these public parameters, with enough noise, and no
    laxer a minimum count than theirs. Refuses unless ``min_sites`` distinct sites do."""
    if len(attestations) != len(parts):
        raise InputError("one attestation per part is needed")
    needed = layout.required_scale(spec) * (1 - 1e-9) if require_noise else 0.0
    seen: list[str] = []
    for attestation, part in zip(attestations, parts, strict=True):
        payload = attestation.get("payload") if isinstance(attestation, dict) else None
        site = payload.get("site") if isinstance(payload, dict) else None
        if site not in site_keys:
            raise Forbidden(f"site {site!r} is not registered with the key service")
        try:
            receipts.verify(attestation, site_keys[site], receipts.Domain.ATTESTATION)
        except InputError as exc:
            raise Unauthenticated(f"site {site}'s attestation: {exc.reason}") from None
        if payload.get("query_id") != query_id or \
                payload.get("fingerprint") != spec.fingerprint() or \
                payload.get("sha256") != messages.digest(part) or \
                payload.get("size") != layout.size:
            raise Unauthenticated(f"site {site}'s attestation is for another query or "
                                  "another ciphertext")
        if payload.get("rows_per_patient") != layout.rows_per_patient or \
                payload.get("sites_per_patient") != layout.sites_per_patient:
            raise PolicyRefusal(f"site {site} computed its part for other public "
                                "parameters (rows or sites per patient)")
        if payload.get("count_checks") != counts.to_json(layout.count_checks):
            raise PolicyRefusal(f"the request checks other counts than site {site} "
                                "says its answer reveals")
        scale = payload.get("noise_scale")
        if not isinstance(scale, int | float) or scale < needed:
            raise PolicyRefusal(f"site {site}'s part carries less noise than ε = "
                                f"{spec.epsilon:g} needs")
        if not isinstance(payload.get("min_count"), int | float) or \
                layout.min_count < payload["min_count"]:
            raise PolicyRefusal(f"the request's minimum count is below site {site}'s")
        if site in seen:
            raise PolicyRefusal(f"site {site} contributed twice")
        seen.append(site)
    if len(seen) < min_sites:
        raise PolicyRefusal(f"{len(seen)} sites contributed; the policy needs at least "
                            f"{min_sites}")
    return seen
