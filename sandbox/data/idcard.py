"""Mainland resident ID numbers (GB 11643): 6-digit division code, 8-digit birth date,
3-digit sequence whose last digit is odd for men, and an ISO 7064 MOD 11-2 check digit.

Both a scalar form (for generating) and a Polars expression form (for scanning millions of
values without a Python loop) are provided; they share the weights below."""

from __future__ import annotations

import polars as pl

WEIGHTS: tuple[int, ...] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"
PATTERN = r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"


def check_digit(first17: str) -> str:
    """The check character for the first 17 digits."""
    total = sum(int(c) * w for c, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARS[total % 11]


def is_valid(number: str) -> bool:
    """True for an 18-character ID number whose check character matches."""
    return (
        len(number) == 18
        and number[:17].isdigit()
        and check_digit(number[:17]) == number[17].upper()
    )


def valid_expr(candidate: pl.Expr) -> pl.Expr:
    """Polars expression: whether an 18-character string candidate has a valid check
    character (the candidate must already match PATTERN)."""
    total = pl.sum_horizontal(
        candidate.str.slice(i, 1).cast(pl.Int32, strict=False) * w
        for i, w in enumerate(WEIGHTS)
    )
    expected = (total % 11).replace_strict(
        list(range(11)), list(CHECK_CHARS), return_dtype=pl.String
    )
    return expected == candidate.str.slice(17, 1).str.to_uppercase()
