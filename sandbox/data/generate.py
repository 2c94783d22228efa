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
from datetime import date
from pathlib import Path
from statistics import NormalDist

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from sandbox.data.atomic import atomic_directory
from sandbox.data.idcard import CHECK_CHARS, WEIGHTS
from sandbox.data.reference import icd10
from sandbox.data.reference import population as ref
from sandbox.errors import InputError

REFERENCE_DATE = date(2025, 12, 31)
FIRST_VISIT_DATE = date(2019, 1, 1)
CHUNK_PATIENTS = 25_000
MAX_AGE = 100
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

_EPOCH = date(1970, 1, 1)
_REF_DAY = (REFERENCE_DATE - _EPOCH).days
_FIRST_DAY = (FIRST_VISIT_DATE - _EPOCH).days
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
        state = _RunState()
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


class _RunState:
    """Counters and the ID numbers already issued, carried across chunks."""

    def __init__(self) -> None:
        self.visits = 0
        self.inpatient = 0
        self.issued = np.empty(0, dtype=np.int64)


def _choice(rng: np.random.Generator, weights: np.ndarray | list[float], size: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=size, p=p / p.sum())


def _choice_by_group(rng: np.random.Generator, groups: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each element, draw an index from the probability row ``table[group]``.

    Inverse-CDF per element: one searchsorted over a flattened cumulative table, so the
    cost is one vectorised pass whatever the number of groups."""
    cdf = np.cumsum(table, axis=1)
    cdf /= cdf[:, -1:]
    width = table.shape[1]
    offsets = np.arange(table.shape[0]) * 1.0
    flat = (cdf + offsets[:, None]).ravel()
    u = rng.random(len(groups)) * (1 - 1e-12) + groups
    return np.searchsorted(flat, u, side="right") - groups * width


def _lookup(values: tuple | list, index: np.ndarray) -> pl.Series:
    return pl.Series(values=list(values), dtype=pl.String).gather(index)


def _dates(days: np.ndarray) -> pl.Series:
    return pl.Series(days.astype(np.int32)).cast(pl.Date)


def _id_numbers(rng: np.random.Generator, region: np.ndarray, birth_days: np.ndarray,
                male: np.ndarray, state: _RunState) -> pl.Series:
    births = _dates(birth_days).dt.strftime("%Y%m%d").cast(pl.Int64).to_numpy()
    base = region.astype(np.int64) * 10**11 + births * 1000
    seq = rng.integers(0, 500, size=len(base)) * 2 + male.astype(np.int64)
    first17 = base + seq
    # Sequence numbers are unique per (division, birth date): redraw any collision.
    for _ in range(100):
        seen = np.concatenate([state.issued, first17])
        _, first_pos, _counts = np.unique(seen, return_index=True, return_counts=True)
        dup = np.ones(len(seen), dtype=bool)
        dup[first_pos] = False
        dup = dup[len(state.issued):]
        if not dup.any():
            break
        seq[dup] = rng.integers(0, 500, size=int(dup.sum())) * 2 + male[dup]
        first17 = base + seq
    state.issued = np.concatenate([state.issued, first17])
    digits = (first17[:, None] // 10 ** np.arange(16, -1, -1)) % 10
    check = (digits @ np.array(WEIGHTS)) % 11
    return pl.Series(first17).cast(pl.String) + _lookup(tuple(CHECK_CHARS), check)


def _phones(rng: np.random.Generator, size: int) -> pl.Series:
    prefixes = [p for p in range(130, 200) if p // 10 in (13, 15, 17, 18, 19) and p != 154]
    head = np.asarray(prefixes)[rng.integers(0, len(prefixes), size)]
    tail = rng.integers(0, 10**8, size)
    return pl.Series(head * 10**8 + tail).cast(pl.String)


def _names(rng: np.random.Generator, male: np.ndarray, surname: np.ndarray | None = None
           ) -> tuple[pl.Series, np.ndarray]:
    size = len(male)
    if surname is None:
        surname = _choice(rng, [w for _, w in ref.SURNAMES], size)
    pool_m, pool_f = ref.GIVEN_MALE, ref.GIVEN_FEMALE
    first = np.where(male, rng.integers(0, len(pool_m), size), rng.integers(0, len(pool_f), size))
    second = np.where(male, rng.integers(0, len(pool_m), size), rng.integers(0, len(pool_f), size))
    given1 = pl.Series(np.where(male, np.asarray(pool_m)[first % len(pool_m)],
                                np.asarray(pool_f)[first % len(pool_f)]))
    given2 = pl.Series(np.where(male, np.asarray(pool_m)[second % len(pool_m)],
                                np.asarray(pool_f)[second % len(pool_f)]))
    two = pl.Series(rng.random(size) < 0.7)
    surnames = _lookup([s for s, _ in ref.SURNAMES], surname)
    names = pl.DataFrame({"s": surnames, "g1": given1, "g2": given2, "two": two}).select(
        pl.concat_str("s", "g1", pl.when("two").then("g2").otherwise(pl.lit("")))
    ).to_series()
    return names, surname


def _age_weight(d: icd10.Diagnosis, ages: np.ndarray) -> np.ndarray:
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


def _diagnosis_table(chronic_only: bool) -> np.ndarray:
    """Probability table indexed by sex*(MAX_AGE+1)+age over DIAGNOSES."""
    ages = np.arange(MAX_AGE + 1, dtype=float)
    table = np.zeros((2 * (MAX_AGE + 1), len(icd10.DIAGNOSES)))
    for j, d in enumerate(icd10.DIAGNOSES):
        # Chronic diseases come only from a patient's own conditions, never as a one-off.
        if d.chronic != chronic_only:
            continue
        for s, sex in enumerate(("女", "男")):
            if d.sex is not None and d.sex != sex:
                continue
            table[s * (MAX_AGE + 1):(s + 1) * (MAX_AGE + 1), j] = d.weight * _age_weight(d, ages)
    table[table.sum(axis=1) == 0, 0] = 1.0
    return table


_ACUTE = _diagnosis_table(chronic_only=False)
_CHRONIC = _diagnosis_table(chronic_only=True)


def _chunk(rng: np.random.Generator, first: int, n: int, state: _RunState
           ) -> dict[str, pl.DataFrame]:
    patients, p = _patients(rng, first, n, state)
    visits, v = _visits(rng, p, state)
    return {
        "patients": patients,
        "visits": visits,
        "diagnoses": _diagnoses(rng, p, v),
        "labs": _labs(rng, p, v),
        "prescriptions": _prescriptions(rng, v),
        "costs": _costs(rng, p, v),
        "consents": _consents(rng, p, v),
    }


def _patients(rng: np.random.Generator, first: int, n: int, state: _RunState
              ) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    male = rng.random(n) < 0.48
    band = _choice(rng, _AGE_BANDS, n)
    age_days = ((band * 5 + rng.random(n) * 5) * 365.25).astype(np.int64)
    birth = _REF_DAY - age_days
    age = age_days // 365
    district = _choice(rng, [d[4] for d in ref.DISTRICTS], n)
    native = np.where(rng.random(n) < 0.85, district,
                      _choice(rng, [d[4] for d in ref.DISTRICTS], n))
    region_codes = np.array([int(d[0]) for d in ref.DISTRICTS])[native]
    names, surname = _names(rng, male)
    ethnicity = _choice(rng, [w for _, w in ref.ETHNICITIES], n)

    ages = np.arange(MAX_AGE + 1)
    occ_table = np.array([[w * (lo <= a <= hi) for (_, lo, hi, w) in ref.OCCUPATIONS]
                          for a in ages])
    occupation = _choice_by_group(rng, np.minimum(age, MAX_AGE), occ_table)
    marital_table = np.array([
        [1, 0, 0, 0] if a < 20 else
        [0.6, 0.38, 0.02, 0] if a < 30 else
        [0.08, 0.85, 0.06, 0.01] if a < 60 else
        [0.01, 0.75, 0.04, 0.2]
        for a in ages
    ])
    marital = _choice_by_group(rng, np.minimum(age, MAX_AGE), marital_table)
    insurance = _choice(rng, [w for _, w, _, _ in ref.INSURANCE], n)
    insurance = np.where((age < 18) & (rng.random(n) < 0.8), 1, insurance)

    street = rng.integers(0, len(ref.STREETS), n)
    address = pl.DataFrame({
        "p": _lookup([d[1] for d in ref.DISTRICTS], district),
        "c": _lookup([d[2] for d in ref.DISTRICTS], district),
        "d": _lookup([d[3] for d in ref.DISTRICTS], district),
        "s": _lookup(ref.STREETS, street),
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
    other_surname = _choice(rng, [w for _, w in ref.SURNAMES], n)
    guardian_names, _ = _names(rng, guardian_male,
                               np.where(guardian_male, surname, other_surname))
    guardian_birth = birth - ((22 + rng.random(n) * 18) * 365.25).astype(np.int64)
    guardian_ids = _id_numbers(rng, region_codes, guardian_birth, guardian_male, state)
    relation = np.where(guardian_male, np.where(rng.random(n) < 0.9, 0, 2),
                        np.where(rng.random(n) < 0.9, 1, 3))

    ids = pl.Series(np.arange(first + 1, first + n + 1)).cast(pl.String).str.zfill(10)
    frame = pl.DataFrame({
        "patient_id": "P" + ids,
        "name": names,
        "id_number": _id_numbers(rng, region_codes, birth, male, state),
        "sex": pl.Series(np.where(male, "男", "女")),
        "birth_date": _dates(birth),
        "phone": _phones(rng, n),
        "province": _lookup([d[1] for d in ref.DISTRICTS], district),
        "city": _lookup([d[2] for d in ref.DISTRICTS], district),
        "district": _lookup([d[3] for d in ref.DISTRICTS], district),
        "address": address,
        "ethnicity": _lookup([e for e, _ in ref.ETHNICITIES], ethnicity),
        "occupation": _lookup([o[0] for o in ref.OCCUPATIONS], occupation),
        "marital_status": _lookup(ref.MARITAL, marital),
        "insurance_type": _lookup([i[0] for i in ref.INSURANCE], insurance),
        "minor": pl.Series(minor),
        "guardian_name": guardian_names,
        "guardian_relation": _lookup(("父亲", "母亲", "祖父", "祖母"), relation),
        "guardian_id_number": guardian_ids,
        "guardian_phone": _phones(rng, n),
    }).with_columns(
        pl.when("minor").then(pl.col(c)).otherwise(None).alias(c)
        for c in ("guardian_name", "guardian_relation", "guardian_id_number", "guardian_phone")
    )
    sex_index = male.astype(np.int64)
    group = sex_index * (MAX_AGE + 1) + np.minimum(age, MAX_AGE)
    # Chronic conditions become likelier with age; -1 means none.
    has = rng.random((n, 2)) < np.minimum(0.9, 0.15 + age / 100.0)[:, None]
    conditions = np.where(has, np.stack([_choice_by_group(rng, group, _CHRONIC)
                                         for _ in range(2)], axis=1), -1)
    arrays = {"index": np.arange(n), "male": male, "birth": birth, "age": age,
              "insurance": insurance, "conditions": conditions,
              "ids": frame["patient_id"].to_numpy()}
    return frame, arrays


def _visits(rng: np.random.Generator, p: dict[str, np.ndarray], state: _RunState
            ) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    n_pat = len(p["index"])
    lam = rng.gamma(2.0, 4.5, n_pat) * (0.6 + np.minimum(p["age"], 90) / 80.0)
    count = 1 + rng.poisson(lam)
    owner = np.repeat(p["index"], count)
    n = len(owner)
    start = np.maximum(p["birth"][owner], _FIRST_DAY)
    day = start + (rng.random(n) * (_REF_DAY - start + 1)).astype(np.int64)
    order = np.lexsort((day, owner))
    owner, day = owner[order], day[order]
    age = np.clip((day - p["birth"][owner]) // 365, 0, MAX_AGE)
    male = p["male"][owner]
    group = male.astype(np.int64) * (MAX_AGE + 1) + age
    acute = _choice_by_group(rng, group, _ACUTE)
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

    hospital = _choice(rng, [w for _, w in ref.HOSPITALS], n)
    sensitive = np.array([d.sensitive for d in diag])[primary]
    hospital = np.where((sensitive == "malignant") & (rng.random(n) < 0.6), 4, hospital)
    hospital = np.where(((age < 14) | (sensitive == "pregnancy")) & (rng.random(n) < 0.6),
                        3, hospital)

    visit_no = np.arange(state.visits + 1, state.visits + n + 1)
    state.visits += n
    inpatient_no = np.zeros(n, dtype=np.int64)
    inpatient_no[inpatient] = np.arange(state.inpatient + 1, state.inpatient + inpatient.sum() + 1)
    state.inpatient += int(inpatient.sum())
    remark = _choice(rng, [w for _, w in ref.REMARKS], n)
    admission = _dates(day)
    frame = pl.DataFrame({
        "visit_id": "V" + pl.Series(visit_no).cast(pl.String).str.zfill(12),
        "patient_id": pl.Series(p["ids"][owner]),
        "hospital": _lookup([h for h, _ in ref.HOSPITALS], hospital),
        "department": _lookup(departments, dept),
        "visit_type": _lookup(("门诊", "急诊", "住院"), visit_type),
        "inpatient_no": pl.Series(inpatient_no),
        "admission_date": admission,
        "discharge_date": _dates(day + los),
        "remark": _lookup([r for r, _ in ref.REMARKS], remark),
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


def _diagnoses(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
               ) -> pl.DataFrame:
    n = len(v["owner"])
    other = p["conditions"][v["owner"], 1]
    second = np.where((other >= 0) & (other != v["primary"]) & (rng.random(n) < 0.35), other, -1)
    third = np.where(rng.random(n) < 0.15, _choice_by_group(rng, v["group"], _ACUTE), -1)
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
        "icd10_code": _lookup([d.code for d in icd10.DIAGNOSES], codes),
        "diagnosis_name": _lookup([d.name for d in icd10.DIAGNOSES], codes),
    })


def _labs(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
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


def _prescriptions(rng: np.random.Generator, v: dict[str, np.ndarray]) -> pl.DataFrame:
    n = len(v["owner"])
    table: list[tuple[str, str, float, str, str, float]] = []
    offset, length = {}, {}
    for cat, drugs in [("", ref.DEFAULT_DRUGS), *ref.DRUGS.items()]:
        offset[cat], length[cat] = len(table), len(drugs)
        table.extend(drugs)
    categories = [icd10.category(d.code) for d in icd10.DIAGNOSES]
    off = np.array([offset.get(c, 0) for c in categories])[v["primary"]]
    ln = np.array([length.get(c, length[""]) for c in categories])[v["primary"]]
    count = _choice(rng, [0.2, 0.4, 0.3, 0.1], n)
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
        "drug_name": _lookup([d[0] for d in table], drug),
        "specification": _lookup([d[1] for d in table], drug),
        "dose": pl.Series(np.array([d[2] for d in table], dtype=float)[drug]),
        "dose_unit": _lookup([d[3] for d in table], drug),
        "frequency": _lookup([d[4] for d in table], drug),
        "days": pl.Series(days.astype(np.int32)),
        "quantity": pl.Series(quantity),
        "unit_price": pl.Series(price),
        "amount": pl.Series(np.round(quantity * price, 2)),
    })


def _costs(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
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
        "settlement_date": _dates(v["day"] + v["los"]),
    })


def _consents(rng: np.random.Generator, p: dict[str, np.ndarray], v: dict[str, np.ndarray]
              ) -> pl.DataFrame:
    n = len(p["index"])
    first_visit = np.full(n, _REF_DAY, dtype=np.int64)
    np.minimum.at(first_visit, v["owner"], v["day"])
    consent_day = np.maximum(first_visit - rng.integers(0, 30, n), p["birth"])
    openness = rng.normal(0, 1, n)
    columns: dict[str, pl.Series] = {"patient_id": pl.Series(p["ids"])}
    for column, share in ref.CONSENT_SHARES.items():
        threshold = math.sqrt(2) * NormalDist().inv_cdf(share)
        columns[column] = pl.Series(openness + rng.normal(0, 1, n) < threshold)
    minor_at_consent = (consent_day - p["birth"]) < 14 * 365.25
    withdrawn = rng.random(n) < 0.015
    withdrawal_day = consent_day + (rng.random(n) * (_REF_DAY - consent_day + 1)).astype(np.int64)
    return pl.DataFrame({
        **columns,
        "consented_by": pl.Series(np.where(minor_at_consent, "监护人", "本人")),
        "consent_date": _dates(consent_day),
        "withdrawn_at": _dates(withdrawal_day),
        "withdrawn": pl.Series(withdrawn),
    }).with_columns(pl.when("withdrawn").then("withdrawn_at").otherwise(None)
                    .alias("withdrawn_at"))
