"""The portal's calls on the gateway's admin API (service token): create a project's
grant, suspend/resume/revoke it, bind it to its sandbox's network."""

from __future__ import annotations

import threading
from datetime import datetime

import httpx

from portal.config import PortalSettings
from portal.models import DecisionRecord
from sandbox import receipts
from sandbox.errors import SandboxError
from sandbox.federated import authorization


class GatewayUnavailable(SandboxError):
    """The gateway could not be reached or refused; nothing changed in the portal."""

    http_status = 502
    code = "gateway_unavailable"


def project_name(application_id: int) -> str:
    """The project's name in grants and authorizations."""
    return f"application-{application_id}"


def change_grant(settings: PortalSettings, grant_id: str, application_id: int, action: str,
                 reason: str) -> None:
    """Suspend, resume or revoke a project's grant on the gateway, with the portal's signed
    statement of the change, which the gateway relays to the key service (so that no one
    holding the gateway's key can still have the project's federated queries decrypted)."""
    statement = authorization.state_statement(
        grant_signer(settings), project_name(application_id),
        authorization.STATE_AFTER[action], reason)
    _gateway(settings, "POST", f"/v1/admin/grants/{grant_id}/{action}",
             {"reason": reason, "statement": statement}, f"{action} the grant")


def bind_networks(settings: PortalSettings, grant_id: str, networks: list[str]) -> None:
    """Let the project's token work only from these networks (its sandbox's)."""
    _gateway(settings, "PUT", f"/v1/admin/grants/{grant_id}/networks",
             {"networks": networks}, "bind the grant to the sandbox network")


def grant_signer(settings: PortalSettings) -> receipts.Signer:
    """The portal's grant key (created on first use), its public half published beside it
    for the gateway, the sites and the key service (``grant-public-key.pem``)."""
    signer = receipts.Signer(settings.state_dir / "grant-signing-key.pem")
    public = settings.state_dir / "grant-public-key.pem"
    if not public.exists() or public.read_bytes() != signer.public_pem:
        public.write_bytes(signer.public_pem)
    return signer


def create_grant(settings: PortalSettings, application_id: int, purpose: str,
                 decision: DecisionRecord, datasets: list[str], expires: datetime
                 ) -> tuple[str, str]:
    """Create the project's grant, with the portal's signed authorization of its terms
    (what federated queries are checked against); returns (grant id, project token)."""
    project = project_name(application_id)
    signed = authorization.issue(grant_signer(settings), project, datasets,
                                 decision.fields, purpose, decision.epsilon,
                                 decision.delta, expires)
    body = _gateway(settings, "POST", "/v1/admin/grants", {
        "project": project, "datasets": datasets, "fields": decision.fields,
        "purpose": purpose, "epsilon": decision.epsilon, "delta": decision.delta,
        "expires_at": expires.isoformat(), "authorization": signed}, "create the grant")
    return body["grant"]["id"], body["token"]


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _http() -> httpx.Client:
    """One connection pool for every call (a new client costs ~20 ms to set up)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(timeout=60)
        return _client


def grant(settings: PortalSettings, grant_id: str, timeout: float = 60) -> dict:
    """The grant as the gateway holds it: state, ε granted and spent."""
    return _gateway(settings, "GET", f"/v1/admin/grants/{grant_id}", {}, "read the grant",
                    timeout=timeout)


def public_key(settings: PortalSettings) -> bytes:
    """The key the gateway signs receipts with (PEM)."""
    try:
        response = _http().get(f"{settings.gateway_url}/v1/public-key")
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(f"the gateway's public key could not be read ({exc})") \
            from None
    return response.text.encode()


def _gateway(settings: PortalSettings, method: str, path: str, body: dict, what: str,
             params: dict | None = None, timeout: float = 60) -> dict:
    """One call on the gateway's admin API; any failure is a ``GatewayUnavailable`` that
    says what could not be done, and nothing in the portal changes."""
    try:
        token = settings.gateway_token_file.read_text().strip()
        response = _http().request(method, f"{settings.gateway_url}{path}", params=params,
                                   json=body if method != "GET" else None, timeout=timeout,
                                   headers={"Authorization": f"Bearer {token}"})
    except (OSError, httpx.HTTPError) as exc:
        raise GatewayUnavailable(f"the gateway could not be reached to {what} ({exc}); "
                                 "nothing was changed, try again") from None
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if response.status_code not in (200, 201):
        reason = response.json().get("reason", response.text) if is_json else response.text
        raise GatewayUnavailable(f"the gateway refused to {what}: {reason[:300]}")
    return response.json() if is_json else {}


def withdraw(settings: PortalSettings, pseudonym: str, purposes: list[str] | None) -> dict:
    """Record a patient's withdrawal on the gateway (effective for the next query); the
    answer lists the datasets holding the patient's records."""
    return _gateway(settings, "POST", "/v1/admin/consent-withdrawals",
                    {"pseudonym": pseudonym, "purposes": purposes},
                    "record the withdrawal")


def datasets_holding(settings: PortalSettings, pseudonym: str) -> list[dict]:
    """The served datasets (id, version) holding records of this patient."""
    return _gateway(settings, "GET", f"/v1/admin/patients/{pseudonym}/datasets", {},
                    "look up the patient's datasets")["containing"]


def audit_entries(settings: PortalSettings, since: str) -> list[dict]:
    """The gateway's audit entries recorded since ``since`` (ISO time), oldest first."""
    entries: list[dict] = []
    after = 0
    while True:
        page = _gateway(settings, "GET", "/v1/admin/audit", {}, "read the gateway's audit log",
                        {"since": since, "after_seq": after, "limit": 5000})["entries"]
        entries += page
        if len(page) < 5000:
            return entries
        after = page[-1]["seq"]


def verify_audit(settings: PortalSettings) -> dict:
    """The gateway's chain verified by the gateway: against its witness file and its own
    signed checkpoints."""
    return _gateway(settings, "GET", "/v1/admin/audit/verify", {},
                    "verify the gateway's audit log")


def audit_records(settings: PortalSettings, service: str) -> list[dict]:
    """The gateway's records of ``service``'s audit checkpoints, oldest first."""
    found: list[dict] = []
    while True:
        page = _gateway(settings, "GET", "/v1/admin/audit/anchors", {},
                        "read the gateway's records of audit checkpoints",
                        {"service": service, "after_seq": found[-1]["seq"] if found else 0,
                         "limit": 1000})["records"]
        found += page
        if len(page) < 1000:
            return found


def audit_hashes(settings: PortalSettings, seqs: list[int]) -> dict:
    """The gateway's chain at these entries (hashes), where it starts and where it ends."""
    return _gateway(settings, "GET", "/v1/admin/audit/hashes", {},
                    "read the gateway's audit log", {"seqs": ",".join(map(str, seqs))})


def hand_checkpoint(settings: PortalSettings, path: str, body: dict) -> dict:
    """Give the gateway the portal's audit checkpoint; its answer holds its own."""
    return _gateway(settings, "POST", path, body, "exchange audit checkpoints")


def list_exports(settings: PortalSettings, after: str) -> list[dict]:
    """Export requests the gateway recorded after ``after`` (creation time), oldest first."""
    return _gateway(settings, "GET", "/v1/admin/exports", {}, "collect export requests",
                    {"after": after})["exports"]


def releases(settings: PortalSettings, grant_id: str) -> list[dict]:
    """The project's releases on the gateway, oldest first, with their receipts."""
    return _gateway(settings, "GET", f"/v1/admin/grants/{grant_id}/releases", {},
                    "list the project's releases")


def submit_export(settings: PortalSettings, grant_id: str, files: list[dict],
                  receipts: list[dict], note: str) -> dict:
    """Record an export request for the project (files as ``{"name", "content"}`` with
    base64 content); the portal collects it like one sent from the sandbox."""
    return _gateway(settings, "POST", f"/v1/admin/grants/{grant_id}/exports",
                    {"files": files, "receipts": receipts, "note": note},
                    "record the export request")
