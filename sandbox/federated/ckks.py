"""The CKKS scheme as the federation uses it (TenSEAL over Microsoft SEAL).

Parameters: ring dimension N = 8192 (4096 slots), coefficient modulus of 60 + 40 + 60
= 160 bits, scale 2^40. The homomorphic encryption standard (Albrecht et al., 2018) puts
the limit for 128-bit classical security at N = 8192 at 218 bits of modulus, so these
parameters give 128-bit security. Only additions are done on ciphertexts (depth 0: no
rescaling, so one 40-bit prime between the 60-bit ones is enough), no relinearisation or
Galois keys are published, and the public context (public key only) is about 0.35 MB;
a ciphertext is about 235 kB. Encoding needs |v| · 2^40 below the 100-bit data modulus,
so |v| < 2^59.

Approximation: CKKS is approximate, and its error is shared across the slots of a vector
(encoding mixes them): measured on sums of four ciphertexts, the absolute error of any
slot stays below 1.3e-8 + 2.5e-16 · max|v| over the vector. The documented bound, with a
margin of 40 or more, is ``ERROR_ABSOLUTE + ERROR_RELATIVE · max|v|``. The federation
therefore encrypts each slot divided by its sensitivity (so slots have like magnitudes,
at most about the number of rows) and multiplies back after decryption. Vectors whose
magnitude could exceed ``SAFE_MAX`` (2^50 ≈ 1.1e15) are refused before anything is
computed, well inside the 2^59 where encoding fails.
"""

from __future__ import annotations

import base64
import queue
import threading
from collections.abc import Sequence

import numpy as np
import tenseal as ts

from sandbox.errors import InputError, PolicyRefusal

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 60)
SCALE_BITS = 40
SECURITY_BITS = 128
SLOTS = POLY_MODULUS_DEGREE // 2
SAFE_MAX = 2.0 ** 50
ERROR_ABSOLUTE = 1e-6
ERROR_RELATIVE = 1e-14

PARAMETERS = {
    "scheme": "CKKS", "library": f"TenSEAL {ts.__version__}",
    "poly_modulus_degree": POLY_MODULUS_DEGREE,
    "coeff_mod_bit_sizes": list(COEFF_MOD_BIT_SIZES), "scale_bits": SCALE_BITS,
    "security_bits": SECURITY_BITS, "slots": SLOTS, "safe_max": SAFE_MAX,
    "error_bound": {"absolute": ERROR_ABSOLUTE, "relative": ERROR_RELATIVE},
}


def new_secret_context() -> ts.Context:
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_MODULUS_DEGREE,
                         coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
    context.global_scale = 2.0 ** SCALE_BITS
    return context


def public_bytes(secret: ts.Context) -> bytes:
    """The context without its secret key, as published to the gateway and the sites."""
    public = secret.copy()
    public.make_context_public()
    return public.serialize(save_public_key=True, save_secret_key=False,
                            save_galois_keys=False, save_relin_keys=False)


def load(data: bytes) -> ts.Context:
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare exceptions for malformed input
        raise InputError(f"not a CKKS context: {exc}") from None


def holds_secret(context: ts.Context) -> bool:
    return context.has_secret_key()


def check_range(limits: Sequence[float]) -> None:
    """Refuse when any slot's largest possible magnitude exceeds the safe range."""
    worst = max((abs(v) for v in limits), default=0.0)
    if not np.isfinite(worst) or worst > SAFE_MAX:
        raise PolicyRefusal(
            f"a value of this query could reach {worst:.3g}, beyond the encrypted range "
            f"(±{SAFE_MAX:.3g}); it cannot be answered under encryption", limit=SAFE_MAX)


def error_bound(values: Sequence[float]) -> float:
    """The CKKS approximation error bound of every slot of a vector holding ``values``."""
    return ERROR_ABSOLUTE + ERROR_RELATIVE * max((abs(v) for v in values), default=0.0)


def encrypt(context: ts.Context, values: Sequence[float]) -> bytes:
    """A fresh encryption of ``values`` (padded with zeros to every slot)."""
    return _zero(context).add_(_padded(values)).serialize()


def _zero(context: ts.Context) -> ts.CKKSVector:
    return ts.ckks_vector(context, [0.0] * SLOTS)


def _padded(values: Sequence[float]) -> list[float]:
    if len(values) > SLOTS:
        raise InputError(f"{len(values)} values do not fit one ciphertext ({SLOTS} slots)")
    return [float(v) for v in values] + [0.0] * (SLOTS - len(values))


class EncryptionPool:
    """Encryptions of zero made ahead of time, each used once: Enc(0; r) + v is a fresh
    encryption of v under the same randomness r, which is never used again. A background
    thread keeps ``depth`` ready, so a query pays for encoding and one addition (about
    1 ms) instead of a public-key encryption (about 3 ms); an empty pool encrypts on the
    spot."""

    def __init__(self, context: ts.Context, depth: int = 8, background: bool = True
                 ) -> None:
        self._context = context
        self._ready: queue.Queue[ts.CKKSVector] = queue.Queue(depth)
        if background:
            threading.Thread(target=self._keep_full, daemon=True, name="ckks-pool").start()

    def _keep_full(self) -> None:
        while True:
            self._ready.put(_zero(self._context))  # blocks while the pool is full

    def fill(self) -> None:
        """Top the pool up now (for a pool without its background thread)."""
        while not self._ready.full():
            self._ready.put(_zero(self._context))

    def encrypt(self, values: Sequence[float]) -> bytes:
        padded = _padded(values)
        try:
            zero = self._ready.get_nowait()
        except queue.Empty:
            zero = _zero(self._context)
        return zero.add_(padded).serialize()

    def ready(self) -> int:
        return self._ready.qsize()


def add(context: ts.Context, ciphertexts: Sequence[bytes]) -> bytes:
    """The homomorphic sum, in the given order (the same order gives the same bytes)."""
    if not ciphertexts:
        raise InputError("nothing to add")
    total = _vector(context, ciphertexts[0])
    for data in ciphertexts[1:]:
        total += _vector(context, data)
    return total.serialize()


def decrypt(secret: ts.Context, ciphertext: bytes, size: int) -> list[float]:
    return _vector(secret, ciphertext).decrypt()[:size]


def _vector(context: ts.Context, data: bytes) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(context, data)
    except Exception as exc:
        raise InputError(f"not a CKKS ciphertext of this context: {exc}") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise InputError("a ciphertext is not base64") from None
