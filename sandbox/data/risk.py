"""Re-identification risk measures over quasi-identifier classes (records sharing every
quasi-identifier value). Computed the same way before and after generalisation so the
report can show what onboarding changed.

The classes arrive a group of classes at a time (each class whole in one group, see
``codes.class_partials``), and every measure is a sum, a count or a minimum over classes,
so the measures never need all classes at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from sandbox.data.codes import P
from sandbox.data.spill import GroupTotals


def measure(partials: GroupTotals, sensitive: str | None, records: int, patients: int,
            k: int) -> dict[str, float | int | None]:
    """k (smallest class, in patients and in records), the share of records in classes of
    fewer than k patients, uniqueness, and distinct l-diversity of the sensitive column."""
    aggs = [pl.col("r").sum().alias("records"), pl.col(P).n_unique().alias("patients")]
    if sensitive is not None:
        aggs.append(pl.col(sensitive).n_unique().alias("l"))
    return summarise(partials.groups(aggs), sensitive is not None, records, patients, k)


def summarise(classes: Iterable[pl.DataFrame], has_sensitive: bool, records: int,
              patients: int, k: int) -> dict[str, float | int | None]:
    """The measures from groups of classes with ``records``, ``patients`` (and ``l``)."""
    if records == 0:
        raise ValueError("no records to measure")
    count = in_small = unique = patient_unique = 0
    k_patients = k_records = l_min = None
    for group in classes:
        count += group.height
        in_small += int(group.filter(pl.col("patients") < k)["records"].sum())
        unique += int(group.filter(pl.col("records") == 1)["records"].sum())
        patient_unique += group.filter(pl.col("patients") == 1).height
        k_patients = _min(k_patients, group["patients"].min())
        k_records = _min(k_records, group["records"].min())
        if has_sensitive:
            l_min = _min(l_min, group["l"].min())
    return {
        "records": records,
        "patients": patients,
        "classes": count,
        "k_patients": k_patients,
        "k_records": k_records,
        "records_in_small_classes": round(in_small / records, 6),
        "unique_records": round(unique / records, 6),
        "patient_unique_classes": patient_unique,
        "l_diversity": l_min,
    }


def _min(current: int | None, value: object) -> int:
    return int(value) if current is None else min(current, int(value))
