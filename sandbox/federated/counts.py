"""The counts a federated answer is checked against: every group of rows whose aggregate
the answer reveals must cover at least 5 patients, or nothing (of a mean or regression)
is released.

A count check is a linear combination of slots of the decrypted (normalised) vector —
``((slot, coefficient), …)`` — whose value is a noisy row count. A histogram reveals one
group per bin; a mean, the rows its filters select (slot 0, n). A linear regression with
text features (one-hot columns) reveals more: the diagonal of ZᵀZ counts each category's
rows, its off-diagonal entries between two text fields count the rows in both categories,
and the reference category (the one left out) is n less the others — and the regression
estimates a mean of the target within each such group. So each of those is checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

CountCheck = tuple[tuple[int, int], ...]  # ((slot, coefficient), …), sorted by slot


def single(slot: int) -> CountCheck:
    return ((slot, 1),)


def regression(categories: Sequence[str | None], cell: Callable[[int, int], int]
               ) -> list[CountCheck]:
    """The count checks of a regression whose design columns belong to ``categories``
    (the text field of each one-hot column; None for the intercept and numeric columns),
    with ``cell(i, j)`` the slot of ZᵀZ's entry (i, j)."""
    n = cell(0, 0)
    fields: dict[str, list[int]] = {}
    for i, field in enumerate(categories):
        if field is not None:
            fields.setdefault(field, []).append(i)
    checks: list[dict[int, int]] = [{n: 1}]
    for columns in fields.values():
        checks += [{cell(i, i): 1} for i in columns]
        checks.append(_minus({n: 1}, [cell(i, i) for i in columns]))  # reference category
    for a, b in itertools.combinations(sorted(fields), 2):
        for i, j in itertools.product([None, *fields[a]], [None, *fields[b]]):
            checks.append(_both(i, j, fields[a], fields[b], cell, n))
    return _unique(checks)


def _both(i: int | None, j: int | None, first: list[int], second: list[int],
          cell: Callable[[int, int], int], n: int) -> dict[int, int]:
    """The rows in category ``i`` of one field and ``j`` of another (None: the field's
    reference category), from ZᵀZ by inclusion and exclusion."""
    if i is not None and j is not None:
        return {cell(i, j): 1}
    if i is not None:
        return _minus({cell(i, i): 1}, [cell(i, k) for k in second])
    if j is not None:
        return _minus({cell(j, j): 1}, [cell(k, j) for k in first])
    combination = _minus({n: 1}, [cell(k, k) for k in [*first, *second]])
    for k, m in itertools.product(first, second):
        combination[cell(k, m)] = combination.get(cell(k, m), 0) + 1
    return combination


def _minus(combination: dict[int, int], slots: list[int]) -> dict[int, int]:
    out = dict(combination)
    for slot in slots:
        out[slot] = out.get(slot, 0) - 1
    return out


def _unique(checks: list[dict[int, int]]) -> list[CountCheck]:
    seen: dict[CountCheck, None] = {}
    for check in checks:
        seen.setdefault(tuple(sorted((s, c) for s, c in check.items() if c)), None)
    return list(seen)


def value(check: CountCheck, values: Sequence[float | None]) -> float:
    """The check's noisy count from decrypted normalised values."""
    return sum(coefficient * float(values[slot] or 0.0) for slot, coefficient in check)


def to_json(checks: Sequence[CountCheck]) -> list[list[list[int]]]:
    return [[[slot, coefficient] for slot, coefficient in check] for check in checks]


def from_json(data: object) -> list[CountCheck]:
    """Count checks as a request or an attestation states them; ValueError otherwise."""
    if not isinstance(data, list):
        raise ValueError("count checks must be a list")
    out = []
    for check in data:
        pairs = tuple((int(slot), int(coefficient)) for slot, coefficient in check)
        if not pairs or any(c == 0 for _, c in pairs):
            raise ValueError("a count check needs slots with nonzero coefficients")
        out.append(tuple(sorted(pairs)))
    return out
