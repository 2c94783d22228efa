"""Numbers as tables show them, and whether one is traceable to a release.

A table's number is a released value or a rounding of one, or it goes to review. The
adversary writes a number so that a pattern for plain decimals does not see it: with a
currency sign or a unit (``¥1007.5``, ``1007.5元``, ``35%``), in scientific notation
(``3.1e1``), in full-width digits. Each is read for its value and the precision it is
shown with; a percentage is traceable as the value or as a hundredth of it."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox.exports.model import ExportPolicy

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
CURRENCY = r"¥|\$|€|£|RMB|CNY|USD|HK\$"
UNITS = (r"%|‰|万元|亿元|千元|美元|元|万|亿|人次|人|例|次|天|小时|分钟|秒|mmHg|mmol/L|"
         r"μmol/L|mg/dL|g/L|U/L|kg/m2|kg/m²|kg|mg|μg|g|mL|ml|L|cm|mm|km|m|min|h|d|s")
SHOWN = re.compile(rf"^(?P<currency>{CURRENCY})?\s?(?P<sign>[+-])?(?P<number>{_DIGITS})"
                   rf"(?P<exponent>[eE][+-]?\d+)?\s?(?P<unit>{UNITS})?$")


@dataclass(frozen=True)
class Shown:
    """A number as a table shows it."""

    value: float
    decimals: int | None  # digits after the point; None in scientific notation
    significant: int
    percent: bool = False


def read(cell: str) -> Shown | None:
    """The number in ``cell``, or None when the cell is not one number."""
    text = unicodedata.normalize("NFKC", cell.strip())
    match = SHOWN.match(text)
    if not match:
        return None
    digits = match.group("number").replace(",", "")
    mantissa = digits.lstrip("0").replace(".", "").lstrip("0") or "0"
    try:
        value = float(f"{match.group('sign') or ''}{digits}{match.group('exponent') or ''}")
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    decimals = None if match.group("exponent") else (
        len(digits.split(".")[1]) if "." in digits else 0)
    return Shown(value, decimals, len(mantissa) if match.group("exponent") else
                 len(digits.replace(".", "").lstrip("0")) or 1,
                 match.group("unit") in ("%", "‰"))


def released(payloads: list[dict]) -> list[float]:
    return sorted(_values(payloads))


def _values(payloads: list[dict]) -> Iterator[float]:
    for payload in payloads:
        for row in payload.get("result") or []:
            for value in row.values():
                if isinstance(value, int | float) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    yield float(value)


def traceable(shown: Shown, values: list[float], policy: ExportPolicy) -> bool:
    """Whether ``shown`` is a released value or a rounding of one (to the decimals or
    significant digits it is shown with)."""
    if shown.percent:
        decimals = None if shown.decimals is None else shown.decimals + 2
        hundredth = Shown(shown.value / 100 if decimals is None
                          else round(shown.value / 100, decimals), decimals, shown.significant)
        return traceable(Shown(shown.value, shown.decimals, shown.significant), values,
                         policy) or traceable(hundredth, values, policy)
    for value in values:
        if value == shown.value:
            return True
        if shown.decimals is not None and shown.decimals <= policy.max_decimals \
                and round(value, shown.decimals) == shown.value:
            return True
        if shown.significant <= policy.max_significant \
                and float(f"{value:.{shown.significant}g}") == shown.value:
            return True
    return False
