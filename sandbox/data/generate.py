"""Synthetic raw *identifiable* EMR extract, shaped like a Chinese hospital HIS/EMR export.

Everything is drawn with NumPy and assembled with Polars expressions, chunk by chunk of
patients, so cost grows linearly and no Python loop runs per row. The same seed always
gives the same extract (each chunk has its own seed spawned from the run's seed).

This data is fake but deliberately dangerous-looking: names, valid ID numbers, phones and
addresses, so the onboarding pipeline is tested against what a real extract contains.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from sandbox.data import events, sampling
from sandbox.data.atomic import atomic_directory
from sandbox.data.reference import icd10
from sandbox.data.reference import population as ref
from sandbox.data.sampling import MAX_AGE, REFERENCE_DATE
from sandbox.errors import InputError

CHUNK_PATIENTS = 25_000
GENERATOR_VERSION = "1"

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "patients": {
        "patient_id": pl.String(), "name": pl.String(), "id_number": pl.String(),
        "sex": pl.String(), "birth_date": pl.Date(), "phone": pl.String(),
        "province": pl.String(), "city": pl.String(), "district": pl.String(),
        "address": pl.String(), "ethnicity": pl.String(), "occupation": pl.String(),
        "marital_status": pl.String(), "insurance_type": pl.String(),
        "guardian_name": pl.String(), "guardian_relation": pl.String(),
        "guardian_id_number": pl.String(), "guardian_phone": pl.String(),
    },
    "visits": {
        "visit_id": pl.String(), "patient_id": pl.String(), "hospital": pl.String(),
        "department": pl.String(), "visit_type": pl.String(), "inpatient_no": pl.String(),
        "admission_date": pl.Date(), "discharge_date": pl.Date(), "remark": pl.String(),
    },
    "diagnoses": {
        "visit_id": pl.String(), "patient_id": pl.String(), "seq": pl.Int8(),
        "is_primary": pl.Boolean(), "icd10_code": pl.String(), "diagnosis_name": pl.String(),
    },
    "labs": {
        "visit_id": pl.String(), "patient_id": pl.String(), "panel": pl.String(),
        "test_code": pl.String(), "test_name": pl.String(), "value": pl.Float64(),
        "unit": pl.String(), "ref_low": pl.Float64(), "ref_high": pl.Float64(),
        "sampled_at": pl.Datetime("us"),
    },
    "prescriptions": {
        "visit_id": pl.String(), "patient_id": pl.String(), "drug_name": pl.String(),
        "specification": pl.String(), "dose": pl.Float64(), "dose_unit": pl.String(),
        "frequency": pl.String(), "days": pl.Int32(), "quantity": pl.Int32(),
        "unit_price": pl.Float64(), "amount": pl.Float64(),
    },
    "costs": {
        "visit_id": pl.String(), "patient_id": pl.String(), "total_cost": pl.Float64(),
        "drug_cost": pl.Float64(), "exam_cost": pl.Float64(),
        "treatment_cost": pl.Float64(), "bed_cost": pl.Float64(),
        "insurance_paid": pl.Float64(), "self_paid": pl.Float64(),
        "settlement_date": pl.Date(),
    },
    "consents": {
        "patient_id": pl.String(),
        **{purpose: pl.Boolean() for purpose in ref.CONSENT_SHARES},
        "consented_by": pl.String(), "consent_date": pl.Date(), "withdrawn_at": pl.Date(),
    },
}

# Age pyramid of hospital patients (5-year bands from 0), skewed older than the census.
_AGE_BANDS = np.array([6.5, 5.0, 4.2, 3.6, 4.0, 5.8, 7.6, 6.6, 6.4, 7.9, 8.4, 7.6, 6.6,
                       6.4, 4.8, 3.4, 2.4, 1.3, 0.5, 0.15])


@dataclass(frozen=True)
class GenerationSummary:
    """What a generation run wrote."""

    out: Path
    seed: int
    rows: dict[str, int]


def generate(
    patients: int,
    seed: int,
    out: Path,
    *,
    replace: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> GenerationSummary:
    """Write a raw extract of ``patients`` patients to ``out`` (one Parquet file per table
    plus ``manifest.json``). ``on_progress`` is called with the number of patients done."""
    if patients < 1:
        raise InputError("--patients must be at least 1")
    if seed < 0:
        raise InputError("--seed must not be negative")
    rows = dict.fromkeys(SCHEMAS, 0)
    children = np.random.SeedSequence(seed).spawn(math.ceil(patients / CHUNK_PATIENTS))
    with atomic_directory(Path(out), replace=replace) as tmp:
        writers = {
            table: pq.ParquetWriter(tmp / f"{table}.parquet", _arrow_schema(table),
                                    compression="zstd")
            for table in SCHEMAS
        }
        state = sampling.RunState()
        try:
            for index, child in enumerate(children):
                first = index * CHUNK_PATIENTS
                size = min(CHUNK_PATIENTS, patients - first)
                frames = _chunk(np.random.default_rng(child), first, size, state)
                for table, frame in frames.items():
                    writers[table].write_table(
                        frame.select(SCHEMAS[table].keys()).cast(SCHEMAS[table]).to_arrow()
                    )
                    rows[table] += frame.height
                if on_progress:
                    on_progress(first + size)
        finally:
            for writer in writers.values():
                writer.close()
        manifest = {
            "kind": "raw-identifiable-extract",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "patients": patients,
            "reference_date": REFERENCE_DATE.isoformat(),
            "rows": rows,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2))
    return GenerationSummary(Path(out), seed, rows)


def _arrow_schema(table: str):
    return pl.DataFrame(schema=SCHEMAS[table]).to_arrow().schema




def _chunk(rng: np.random.Generator, first: int, n: int, state: sampling.RunState
           ) -> dict[str, pl.DataFrame]:
    patients, p = _patients(rng, first, n, state)
    visits, v = _visits(rng, p, state)
    return {
        "patients": patients,
        "visits": visits,
        "diagnoses": events.diagnoses(rng, p, v),
        "labs": events.labs(rng, p, v),
        "prescriptions": events.prescriptions(rng, v),
        "costs": events.costs(rng, p, v),
        "consents": events.consents(rng, p, v),
    }


def _patients(rng: np.random.Generator, first: int, n: int, state: sampling.RunState
              ) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    male = rng.random(n) < 0.48
    band = sampling.choice(rng, _AGE_BANDS, n)
    age_days = ((band * 5 + rng.random(n) * 5) * 365.25).astype(np.int64)
    birth = sampling.REF_DAY - age_days
    age = age_days // 365
    district = sampling.choice(rng, [d[4] for d in ref.DISTRICTS], n)
    native = np.where(rng.random(n) < 0.85, district,
                      sampling.choice(rng, [d[4] for d in ref.DISTRICTS], n))
    region_codes = np.array([int(d[0]) for d in ref.DISTRICTS])[native]
    names, surname = sampling.names(rng, male)
    ethnicity = sampling.choice(rng, [w for _, w in ref.ETHNICITIES], n)

    ages = np.arange(MAX_AGE + 1)
    occ_table = np.array([[w * (lo <= a <= hi) for (_, lo, hi, w) in ref.OCCUPATIONS]
                          for a in ages])
    occupation = sampling.choice_by_group(rng, np.minimum(age, MAX_AGE), occ_table)
    marital_table = np.array([
        [1, 0, 0, 0] if a < 20 else
        [0.6, 0.38, 0.02, 0] if a < 30 else
        [0.08, 0.85, 0.06, 0.01] if a < 60 else
        [0.01, 0.75, 0.04, 0.2]
        for a in ages
    ])
    marital = sampling.choice_by_group(rng, np.minimum(age, MAX_AGE), marital_table)
    insurance = sampling.choice(rng, [w for _, w, _, _ in ref.INSURANCE], n)
    insurance = np.where((age < 18) & (rng.random(n) < 0.8), 1, insurance)

    street = rng.integers(0, len(ref.STREETS), n)
    address = pl.DataFrame({
        "p": sampling.lookup([d[1] for d in ref.DISTRICTS], district),
        "c": sampling.lookup([d[2] for d in ref.DISTRICTS], district),
        "d": sampling.lookup([d[3] for d in ref.DISTRICTS], district),
        "s": sampling.lookup(ref.STREETS, street),
        "no": pl.Series(rng.integers(1, 400, n)),
        "b": pl.Series(rng.integers(1, 30, n)),
        "r": pl.Series(rng.integers(101, 2800, n)),
        "flat": pl.Series(rng.random(n) < 0.6),
    }).select(
        pl.concat_str("p", "c", "d", "s", pl.col("no").cast(pl.String), pl.lit("号"),
                      pl.when("flat").then(pl.format("{}栋{}室", "b", "r")).otherwise(pl.lit("")))
    ).to_series()

    minor = age < 14
    guardian_male = rng.random(n) < 0.45
    # A father or grandfather shares the child's surname; a mother usually does not.
    other_surname = sampling.choice(rng, [w for _, w in ref.SURNAMES], n)
    guardian_names, _ = sampling.names(rng, guardian_male,
                               np.where(guardian_male, surname, other_surname))
    guardian_birth = birth - ((22 + rng.random(n) * 18) * 365.25).astype(np.int64)
    guardian_ids = sampling.id_numbers(rng, region_codes, guardian_birth, guardian_male, state)
    relation = np.where(guardian_male, np.where(rng.random(n) < 0.9, 0, 2),
                        np.where(rng.random(n) < 0.9, 1, 3))

    ids = pl.Series(np.arange(first + 1, first + n + 1)).cast(pl.String).str.zfill(10)
    frame = pl.DataFrame({
        "patient_id": "P" + ids,
        "name": names,
        "id_number": sampling.id_numbers(rng, region_codes, birth, male, state),
        "sex": pl.Series(np.where(male, "男", "女")),
        "birth_date": sampling.dates(birth),
        "phone": sampling.phones(rng, n),
        "province": sampling.lookup([d[1] for d in ref.DISTRICTS], district),
        "city": sampling.lookup([d[2] for d in ref.DISTRICTS], district),
        "district": sampling.lookup([d[3] for d in ref.DISTRICTS], district),
        "address": address,
        "ethnicity": sampling.lookup([e for e, _ in ref.ETHNICITIES], ethnicity),
        "occupation": sampling.lookup([o[0] for o in ref.OCCUPATIONS], occupation),
        "marital_status": sampling.lookup(ref.MARITAL, marital),
        "insurance_type": sampling.lookup([i[0] for i in ref.INSURANCE], insurance),
        "minor": pl.Series(minor),
        "guardian_name": guardian_names,
        "guardian_relation": sampling.lookup(("父亲", "母亲", "祖父", "祖母"), relation),
        "guardian_id_number": guardian_ids,
        "guardian_phone": sampling.phones(rng, n),
    }).with_columns(
        pl.when("minor").then(pl.col(c)).otherwise(None).alias(c)
        for c in ("guardian_name", "guardian_relation", "guardian_id_number", "guardian_phone")
    )
    sex_index = male.astype(np.int64)
    group = sex_index * (MAX_AGE + 1) + np.minimum(age, MAX_AGE)
    # Chronic conditions become likelier with age; -1 means none.
    has = rng.random((n, 2)) < np.minimum(0.9, 0.15 + age / 100.0)[:, None]
    conditions = np.where(has, np.stack([sampling.choice_by_group(rng, group, events.CHRONIC)
                                         for _ in range(2)], axis=1), -1)
    arrays = {"index": np.arange(n), "male": male, "birth": birth, "age": age,
              "insurance": insurance, "conditions": conditions,
              "ids": frame["patient_id"].to_numpy()}
    return frame, arrays


def _visits(rng: np.random.Generator, p: dict[str, np.ndarray], state: sampling.RunState
            ) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    n_pat = len(p["index"])
    lam = rng.gamma(2.0, 4.5, n_pat) * (0.6 + np.minimum(p["age"], 90) / 80.0)
    count = 1 + rng.poisson(lam)
    owner = np.repeat(p["index"], count)
    n = len(owner)
    start = np.maximum(p["birth"][owner], sampling.FIRST_DAY)
    day = start + (rng.random(n) * (sampling.REF_DAY - start + 1)).astype(np.int64)
    order = np.lexsort((day, owner))
    owner, day = owner[order], day[order]
    age = np.clip((day - p["birth"][owner]) // 365, 0, MAX_AGE)
    male = p["male"][owner]
    group = male.astype(np.int64) * (MAX_AGE + 1) + age
    acute = sampling.choice_by_group(rng, group, events.ACUTE)
    chronic_pick = p["conditions"][owner, rng.integers(0, 2, n)]
    primary = np.where((chronic_pick >= 0) & (rng.random(n) < 0.6), chronic_pick, acute)

    diag = icd10.DIAGNOSES
    inpatient_p = np.array([d.inpatient for d in diag])[primary]
    urgent = np.isin(np.array([d.code for d in diag])[primary],
                     ["R50.9", "S52.5", "K35.8", "I63.9", "J18.9"])
    roll = rng.random(n)
    visit_type = np.where(roll < inpatient_p, 2,
                          np.where(rng.random(n) < np.where(urgent, 0.5, 0.06), 1, 0))
    inpatient = visit_type == 2
    los = np.where(inpatient,
                   np.maximum(1, rng.lognormal(np.log(6.0 * np.sqrt(
                       np.array([d.cost for d in diag])[primary])), 0.5, n)).astype(np.int64),
                   0)

    departments = sorted({d.department for d in diag} | {"儿科"})
    dept_index = {name: i for i, name in enumerate(departments)}
    dept = np.array([dept_index[d.department] for d in diag])[primary]
    paediatric_ok = np.isin(dept, [dept_index[x] for x in
                                   ("呼吸内科", "消化内科", "急诊科", "皮肤科", "内分泌科")])
    dept = np.where((age < 14) & paediatric_ok & (rng.random(n) < 0.8), dept_index["儿科"], dept)

    hospital = sampling.choice(rng, [w for _, w in ref.HOSPITALS], n)
    sensitive = np.array([d.sensitive for d in diag])[primary]
    hospital = np.where((sensitive == "malignant") & (rng.random(n) < 0.6), 4, hospital)
    hospital = np.where(((age < 14) | (sensitive == "pregnancy")) & (rng.random(n) < 0.6),
                        3, hospital)

    visit_no = np.arange(state.visits + 1, state.visits + n + 1)
    state.visits += n
    inpatient_no = np.zeros(n, dtype=np.int64)
    inpatient_no[inpatient] = np.arange(state.inpatient + 1, state.inpatient + inpatient.sum() + 1)
    state.inpatient += int(inpatient.sum())
    remark = sampling.choice(rng, [w for _, w in ref.REMARKS], n)
    admission = sampling.dates(day)
    frame = pl.DataFrame({
        "visit_id": "V" + pl.Series(visit_no).cast(pl.String).str.zfill(12),
        "patient_id": pl.Series(p["ids"][owner]),
        "hospital": sampling.lookup([h for h, _ in ref.HOSPITALS], hospital),
        "department": sampling.lookup(departments, dept),
        "visit_type": sampling.lookup(("门诊", "急诊", "住院"), visit_type),
        "inpatient_no": pl.Series(inpatient_no),
        "admission_date": admission,
        "discharge_date": sampling.dates(day + los),
        "remark": sampling.lookup([r for r, _ in ref.REMARKS], remark),
    }).with_columns(
        pl.when(pl.col("inpatient_no") > 0)
        .then(pl.format("ZY{}{}", pl.col("admission_date").dt.year(),
                        pl.col("inpatient_no").cast(pl.String).str.zfill(7)))
        .otherwise(None).alias("inpatient_no")
    )
    arrays = {"owner": owner, "day": day, "age": age, "male": male, "primary": primary,
              "visit_type": visit_type, "los": los, "ids": frame["visit_id"].to_numpy(),
              "patient_ids": frame["patient_id"].to_numpy(), "group": group}
    return frame, arrays
