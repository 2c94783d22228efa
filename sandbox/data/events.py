"""The event tables of the synthetic extract, drawn per chunk of patients and their visits:
diagnoses (the primary and up to two more), labs, prescriptions, costs and consents; and
the diagnosis tables by sex and age the visits draw from."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import polars as pl

from sandbox.data import sampling
from sandbox.data.reference import icd10
from sandbox.data.reference import population as ref


def age_weight(d: icd10.Diagnosis, ages: np.ndarray) -> np.ndarray:
    if d.profile == "old":
        w = np.minimum(((ages + 5) / 50.0) ** 2, 4.0)
    elif d.profile == "child":
        w = np.where(ages < 10, 3.0, np.where(ages < 18, 1.5, 0.7))
    elif d.profile == "adult":
        w = np.where(ages < 18, 0.3, np.where(ages <= 65, 1.0, 0.6))
    elif d.profile == "repro":
        w = np.where((ages >= 20) & (ages <= 38), 1.0, 0.3)
    else:
        w = np.ones_like(ages, dtype=float)
    return w * ((ages >= d.age_min) & (ages <= d.age_max))


def diagnosis_table(chronic_only: bool) -> np.ndarray:
    """Probability table indexed by sex*(sampling.MAX_AGE+1)+age over DIAGNOSES."""
    ages = np.arange(sampling.MAX_AGE + 1, dtype=float)
    table = np.zeros((2 * (sampling.MAX_AGE + 1), len(icd10.DIAGNOSES)))
    for j, d in enumerate(icd10.DIAGNOSES):
        # Chronic diseases come only from a patient's own conditions, never as a one-off.
        if d.chronic != chronic_only:
            continue
        for s, sex in enumerate(("女", "男")):
            if d.sex is not None and d.sex != sex:
                continue
            rows = slice(s * (sampling.MAX_AGE + 1), (s + 1) * (sampling.MAX_AGE + 1))
            table[rows, j] = d.weight * age_weight(d, ages)
    table[table.sum(axis=1) == 0, 0] = 1.0
    return table


ACUTE = diagnosis_table(chronic_only=False)
CHRONIC = diagnosis_table(chronic_only=True)


def diagnoses(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
               ) -> pl.DataFrame:
    n = len(v["owner"])
    other = p["conditions"][v["owner"], 1]
    second = np.where((other >= 0) & (other != v["primary"]) & (rng.random(n) < 0.35), other, -1)
    third = np.where(rng.random(n) < 0.15, sampling.choice_by_group(rng, v["group"], ACUTE), -1)
    third = np.where((third == v["primary"]) | (third == second), -1, third)
    codes = np.concatenate([v["primary"], second, third])
    seq = np.repeat(np.array([1, 2, 3], dtype=np.int8), n)
    visit = np.tile(np.arange(n), 3)
    keep = codes >= 0
    codes, seq, visit = codes[keep], seq[keep], visit[keep]
    order = np.lexsort((seq, visit))
    codes, seq, visit = codes[order], seq[order], visit[order]
    # Secondary diagnoses are numbered consecutively after the primary one.
    rank = seq.copy()
    rank[1:][(visit[1:] == visit[:-1]) & (rank[1:] == 3) & (rank[:-1] == 1)] = 2
    return pl.DataFrame({
        "visit_id": pl.Series(v["ids"][visit]),
        "patient_id": pl.Series(v["patient_ids"][visit]),
        "seq": pl.Series(rank),
        "is_primary": pl.Series(rank == 1),
        "icd10_code": sampling.lookup([d.code for d in icd10.DIAGNOSES], codes),
        "diagnosis_name": sampling.lookup([d.name for d in icd10.DIAGNOSES], codes),
    })


def labs(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
          ) -> pl.DataFrame:
    n = len(v["owner"])
    inpatient = v["visit_type"] == 2
    panels = {"血常规": 0.2, "肝功能": 0.08, "肾功能": 0.08, "血糖": 0.15}
    categories = np.array([icd10.category(d.code) for d in icd10.DIAGNOSES])[v["primary"]]
    parts = []
    for panel, share in panels.items():
        has = inpatient | (rng.random(n) < share)
        for lab in (lab for lab in ref.LABS if lab[0] == panel):
            _, code, name, unit, mean_m, mean_f, sd, lo, hi, lognormal = lab
            idx = np.flatnonzero(has)
            mean = np.where(v["male"][idx], mean_m, mean_f)
            shift = np.ones(len(idx))
            for cat, shifts in ref.LAB_SHIFTS.items():
                if code in shifts:
                    shift = np.where(categories[idx] == cat, shifts[code], shift)
            mean = mean * shift
            if lognormal:
                value = mean * np.exp(rng.normal(0, sd, len(idx)) - sd * sd / 2)
            else:
                value = mean + rng.normal(0, sd, len(idx)) * shift
            value = np.round(np.maximum(value, 0), 2)
            missing = rng.random(len(idx)) < 0.03
            minutes = v["day"][idx] * 1440 + 7 * 60 + rng.integers(0, 240, len(idx))
            parts.append(pl.DataFrame({
                "visit_id": pl.Series(v["ids"][idx]),
                "patient_id": pl.Series(v["patient_ids"][idx]),
                "panel": pl.repeat(panel, len(idx), eager=True),
                "test_code": pl.repeat(code, len(idx), eager=True),
                "test_name": pl.repeat(name, len(idx), eager=True),
                "value": pl.Series(np.where(missing, np.nan, value)).fill_nan(None),
                "unit": pl.repeat(unit, len(idx), eager=True),
                "ref_low": pl.repeat(lo, len(idx), eager=True),
                "ref_high": pl.repeat(hi, len(idx), eager=True),
                "sampled_at": pl.Series(minutes * 60_000_000).cast(pl.Datetime("us")),
            }))
    return pl.concat(parts).sort("visit_id", "panel", maintain_order=True)


def prescriptions(rng: np.random.Generator, v: dict[str, np.ndarray]) -> pl.DataFrame:
    n = len(v["owner"])
    table: list[tuple[str, str, float, str, str, float]] = []
    offset, length = {}, {}
    for cat, drugs in [("", ref.DEFAULT_DRUGS), *ref.DRUGS.items()]:
        offset[cat], length[cat] = len(table), len(drugs)
        table.extend(drugs)
    categories = [icd10.category(d.code) for d in icd10.DIAGNOSES]
    off = np.array([offset.get(c, 0) for c in categories])[v["primary"]]
    ln = np.array([length.get(c, length[""]) for c in categories])[v["primary"]]
    count = sampling.choice(rng, [0.2, 0.4, 0.3, 0.1], n)
    visit = np.repeat(np.arange(n), count)
    drug = off[visit] + rng.integers(0, 1_000_000, len(visit)) % ln[visit]
    per_day = {"qd": 1, "qn": 1, "bid": 2, "tid": 3, "prn": 2, "qw": 1, "q3w": 1}
    days = np.where(v["visit_type"][visit] == 2, np.maximum(v["los"][visit], 1),
                    rng.choice([3, 5, 7, 14, 28, 30], len(visit)))
    freq = np.array([per_day[d[4]] for d in table])[drug]
    quantity = (days * freq).astype(np.int32)
    price = np.array([d[5] for d in table])[drug]
    return pl.DataFrame({
        "visit_id": pl.Series(v["ids"][visit]),
        "patient_id": pl.Series(v["patient_ids"][visit]),
        "drug_name": sampling.lookup([d[0] for d in table], drug),
        "specification": sampling.lookup([d[1] for d in table], drug),
        "dose": pl.Series(np.array([d[2] for d in table], dtype=float)[drug]),
        "dose_unit": sampling.lookup([d[3] for d in table], drug),
        "frequency": sampling.lookup([d[4] for d in table], drug),
        "days": pl.Series(days.astype(np.int32)),
        "quantity": pl.Series(quantity),
        "unit_price": pl.Series(price),
        "amount": pl.Series(np.round(quantity * price, 2)),
    })


def costs(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
           ) -> pl.DataFrame:
    n = len(v["owner"])
    factor = np.array([d.cost for d in icd10.DIAGNOSES])[v["primary"]]
    kind = v["visit_type"]
    outpatient = rng.lognormal(np.log(180), 0.7, n) * factor
    emergency = rng.lognormal(np.log(450), 0.7, n) * factor
    inpatient = (v["los"] * rng.lognormal(np.log(1100), 0.4, n)
                 + rng.lognormal(np.log(3000), 0.6, n)) * factor
    total = np.round(np.select([kind == 0, kind == 1], [outpatient, emergency], inpatient), 2)
    shares = rng.dirichlet([4, 3, 2, 1], n)
    shares[:, 3] = np.where(kind == 2, shares[:, 3], 0)
    shares /= shares.sum(axis=1, keepdims=True)
    parts = np.round(shares * total[:, None], 2)
    parts[:, 0] = np.round(total - parts[:, 1:].sum(axis=1), 2)
    insurance = p["insurance"][v["owner"]]
    rate = np.where(kind == 2, np.array([i[3] for i in ref.INSURANCE])[insurance],
                    np.array([i[2] for i in ref.INSURANCE])[insurance])
    paid = np.round(total * rate * rng.uniform(0.9, 1.0, n), 2)
    return pl.DataFrame({
        "visit_id": pl.Series(v["ids"]),
        "patient_id": pl.Series(v["patient_ids"]),
        "total_cost": pl.Series(total),
        "drug_cost": pl.Series(parts[:, 0]),
        "exam_cost": pl.Series(parts[:, 1]),
        "treatment_cost": pl.Series(parts[:, 2]),
        "bed_cost": pl.Series(parts[:, 3]),
        "insurance_paid": pl.Series(paid),
        "self_paid": pl.Series(np.round(total - paid, 2)),
        "settlement_date": sampling.dates(v["day"] + v["los"]),
    })


def consents(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
              ) -> pl.DataFrame:
    n = len(p["index"])
    first_visit = np.full(n, sampling.REF_DAY, dtype=np.int64)
    np.minimum.at(first_visit, v["owner"], v["day"])
    consent_day = np.maximum(first_visit - rng.integers(0, 30, n), p["birth"])
    openness = rng.normal(0, 1, n)
    columns: dict[str, pl.Series] = {"patient_id": pl.Series(p["ids"])}
    for column, share in ref.CONSENT_SHARES.items():
        threshold = math.sqrt(2) * NormalDist().inv_cdf(share)
        columns[column] = pl.Series(openness + rng.normal(0, 1, n) < threshold)
    minor_at_consent = (consent_day - p["birth"]) < 14 * 365.25
    withdrawn = rng.random(n) < 0.015
    span = sampling.REF_DAY - consent_day + 1
    withdrawal_day = consent_day + (rng.random(n) * span).astype(np.int64)
    return pl.DataFrame({
        **columns,
        "consented_by": pl.Series(np.where(minor_at_consent, "监护人", "本人")),
        "consent_date": sampling.dates(consent_day),
        "withdrawn_at": sampling.dates(withdrawal_day),
        "withdrawn": pl.Series(withdrawn),
    }).with_columns(pl.when("withdrawn").then("withdrawn_at").otherwise(None)
                    .alias("withdrawn_at"))
