"""Project tokens at rest: the portal keeps each project's gateway token encrypted (Fernet,
key derived from the portal's secret) and decrypts it only to hand it to the sandbox."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet

from portal.config import PortalSettings


def _fernet(settings: PortalSettings) -> Fernet:
    key = hashlib.sha256((settings.secret_key() + ":grant-tokens").encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def seal(settings: PortalSettings, token: str) -> str:
    return _fernet(settings).encrypt(token.encode()).decode()


def unseal(settings: PortalSettings, sealed: str) -> str:
    return _fernet(settings).decrypt(sealed.encode()).decode()
