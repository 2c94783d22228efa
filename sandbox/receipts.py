"""Signed release receipts (Ed25519, from ``cryptography``).

A receipt is ``{"payload": {...}, "signature": base64, "key_id": hex}``; the signature covers
the canonical JSON of the payload (sorted keys, no spaces, UTF-8). Anyone holding the
gateway's published public key can verify a receipt offline."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sandbox.errors import InputError
from sandbox.secretfile import read_or_create


def canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def key_id(public_pem: bytes) -> str:
    return hashlib.sha256(public_pem).hexdigest()[:16]


class Signer:
    """The gateway's signing key; created (mode 0600) on first use."""

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

    def sign(self, payload: dict) -> dict:
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


def verify(receipt: dict, public_pem: bytes) -> dict:
    """The payload of a valid receipt; raises InputError for anything else."""
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
    return payload
