"""Re-identification risk measures over quasi-identifier classes (records sharing every
quasi-identifier value). Computed the same way before and after generalisation so the
report can show what onboarding changed."""

from __future__ import annotations

import polars as pl


def measure(frame: pl.DataFrame, quasi: list[str], sensitive: str | None, patient: str,
            k: int) -> dict[str, float | int | None]:
    """k (smallest class, in patients and in records), the share of records in classes of
    fewer than k patients, uniqueness, and distinct l-diversity of the sensitive column."""
    if frame.height == 0:
        raise ValueError("no records to measure")
    aggs = [pl.len().alias("records"), pl.col(patient).n_unique().alias("patients")]
    if sensitive is not None:
        aggs.append(pl.col(sensitive).n_unique().alias("l"))
    classes = frame.group_by(quasi).agg(aggs)
    records = frame.height
    in_small = classes.filter(pl.col("patients") < k)["records"].sum()
    unique = classes.filter(pl.col("records") == 1)["records"].sum()
    unique_patient_classes = classes.filter(pl.col("patients") == 1).height
    return {
        "records": records,
        "patients": frame[patient].n_unique(),
        "classes": classes.height,
        "k_patients": int(classes["patients"].min()),
        "k_records": int(classes["records"].min()),
        "records_in_small_classes": round(in_small / records, 6),
        "unique_records": round(unique / records, 6),
        "patient_unique_classes": unique_patient_classes,
        "l_diversity": int(classes["l"].min()) if sensitive is not None else None,
    }
