"""Signed documents (Ed25519, from ``cryptography``): release receipts, messages between
services, site attestations, export manifests, audit checkpoints.

A signed document is ``{"payload": {...}, "signature": base64, "key_id": hex}``; the
signature covers the canonical JSON of the payload (sorted keys, no spaces, UTF-8). Every
payload carries its ``domain`` — what the signature is for — and a verifier names the one
domain it accepts, so a document signed for one purpose (a message to a site, say) can
never pass as another (a release receipt), even where one key signs both. Anyone holding
the signer's published public key can verify a document offline."""

from __future__ import annotations

import base64
import hashlib
import json
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sandbox.errors import InputError
from sandbox.secretfile import read_or_create


class Domain(StrEnum):
    """What a signature is for (the ``domain`` field of every signed payload)."""

    RECEIPT = "release-receipt"        # the gateway's receipt of a release
    MESSAGE = "service-message"        # a request between services (gateway → site, keys)
    ATTESTATION = "site-attestation"   # a site's statement about the part it computed
    MANIFEST = "export-manifest"       # the portal's manifest of a released export
    CHECKPOINT = "audit-checkpoint"    # a service's statement about its audit chain's head
    GRANT = "grant-authorization"      # the portal's statement of what a project was granted
    GRANT_STATE = "grant-state"        # the portal's statement that a grant was suspended,
                                       # resumed or revoked


DOMAIN_FIELD = "domain"


def canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def key_id(public_pem: bytes) -> str:
    return hashlib.sha256(public_pem).hexdigest()[:16]


class Signer:
    """A service's signing key; created (mode 0600) on first use."""

    def __init__(self, key_file: Path) -> None:
        pem = read_or_create(key_file, lambda: Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InputError(f"{key_file} is not an Ed25519 private key")
        self._key = key
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = key_id(self.public_pem)

    def sign(self, payload: dict, domain: Domain) -> dict:
        """``payload`` signed for ``domain`` (which the payload then names)."""
        payload = {**payload, DOMAIN_FIELD: str(domain)}
        signature = self._key.sign(canonical(payload))
        return {"payload": payload, "signature": base64.b64encode(signature).decode(),
                "key_id": self.key_id}


def public_key(public_pem: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key in ``public_pem``; InputError for anything else."""
    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError:
        raise InputError("the public key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError("the public key is not an Ed25519 key")
    return key


def verify(receipt: dict, public_pem: bytes, domain: Domain) -> dict:
    """The payload of a valid document signed for ``domain``; InputError for anything
    else (a document signed for another purpose included)."""
    key = public_key(public_pem)
    try:
        payload, signature = receipt["payload"], base64.b64decode(receipt["signature"])
    except (KeyError, TypeError, ValueError):
        raise InputError("not a receipt: it needs 'payload' and a base64 'signature'") from None
    if receipt.get("key_id") not in (None, key_id(public_pem)):
        raise InputError("the receipt was signed with another key")
    try:
        key.verify(signature, canonical(payload))
    except InvalidSignature:
        raise InputError("the receipt's signature does not match its content") from None
    if not isinstance(payload, dict) or payload.get(DOMAIN_FIELD) != str(domain):
        found = payload.get(DOMAIN_FIELD) if isinstance(payload, dict) else None
        raise InputError(f"the document was signed as {found or 'nothing named'!s}, "
                         f"not as a {domain}")
    return payload
