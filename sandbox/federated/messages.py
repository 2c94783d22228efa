"""Signed messages between the gateway, the sites and the key service.

A message is a signed document (``sandbox.receipts``, domain ``service-message``) whose
payload names its ``audience`` (the one service meant to act on it), its ``action`` (the
one request it authorises: a lookup is never accepted as a withdrawal), the time it was
issued and a fresh nonce; a receiver acts only on a message signed by the key it trusts,
meant for it, for this action, and recent. Ciphertexts travel beside the signed part, bound
to it by their SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sandbox import receipts
from sandbox.errors import InputError, Unauthenticated

MAX_AGE = timedelta(minutes=5)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(signer: receipts.Signer, audience: str, action: str, body: dict) -> dict:
    return signer.sign({**body, "audience": audience, "action": action,
                        "nonce": secrets.token_hex(16),
                        "issued_at": datetime.now(UTC).isoformat()}, receipts.Domain.MESSAGE)


def open_signed(message: object, public_pem: bytes, audience: str, action: str,
                now: datetime | None = None) -> dict:
    """The payload of a message meant for ``audience`` and ``action``, signed with
    ``public_pem`` within ``MAX_AGE``; anything else is ``Unauthenticated`` with the
    reason."""
    if not isinstance(message, dict):
        raise Unauthenticated("the request is not signed")
    try:
        payload = receipts.verify(message, public_pem, receipts.Domain.MESSAGE)
    except InputError as exc:
        raise Unauthenticated(f"the request's signature is not valid: {exc.reason}") from None
    if payload.get("audience") != audience:
        raise Unauthenticated(f"the request is meant for {payload.get('audience')!r}, "
                              f"not {audience!r}")
    if payload.get("action") != action:
        raise Unauthenticated(f"the request was signed for {payload.get('action')!r}, "
                              f"not {action!r}")
    try:
        issued = datetime.fromisoformat(payload["issued_at"])
    except (KeyError, TypeError, ValueError):
        raise Unauthenticated("the request carries no time of issue") from None
    age = (now or datetime.now(UTC)) - issued
    if not timedelta(seconds=-30) <= age <= MAX_AGE:
        raise Unauthenticated("the request is stale or from the future")
    return payload
