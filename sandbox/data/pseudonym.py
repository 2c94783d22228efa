"""Keyed pseudonyms: HMAC-SHA256 of a patient's ID number under the controller's secret key.

The same person gets the same pseudonym in every dataset made with one key (so consent
withdrawals and federated sites line up), a different one under another key, and nobody
without the key can recompute or invert it. The key never enters an output directory."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import polars as pl

from sandbox.errors import InputError
from sandbox.secretfile import write_new

KEY_BYTES = 32


def create_key(path: Path) -> Path:
    """Write a new random key (hex) readable only by its owner; refuse to overwrite."""
    path = Path(path)
    try:
        created = write_new(path, (secrets.token_hex(KEY_BYTES) + "\n").encode())
    except OSError as exc:
        raise InputError(f"cannot create key file {path}: {exc.strerror}") from None
    if not created:
        raise InputError(f"key file {path} already exists; refusing to overwrite it")
    return path


def load_key(path: Path) -> bytes:
    """Read a key file written by ``create_key``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise InputError(f"key file {path} not found (create one with "
                         f"'sandboxctl data keygen {path}')") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read key file {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise InputError(f"key file {path} does not hold a hex key") from None
    if len(key) < KEY_BYTES:
        raise InputError(f"key in {path} is {len(key)} bytes; at least {KEY_BYTES} are needed")
    return key


def canonical(value: pl.Expr) -> pl.Expr:
    """The value a pseudonym is keyed on, as the portal spells it when a patient withdraws
    (surrounding spaces dropped, a check character ``x`` as ``X``); empty is missing."""
    text = value.cast(pl.String).str.strip_chars().str.to_uppercase()
    return pl.when(text != "").then(text)


def pseudonymise(values: pl.Series, key: bytes) -> pl.Series:
    """Pseudonyms for ``values``; each distinct value is hashed once."""
    distinct = values.drop_nulls().unique()
    digests = [hmac.digest(key, str(v).encode(), hashlib.sha256).hex()
               for v in distinct.to_list()]
    mapping = pl.Series(digests, dtype=pl.String)
    return values.replace_strict(distinct, mapping, default=None, return_dtype=pl.String)
