"""The DP query engine: restricted rows in, OpenDP releases out.

Each dataset is served from a prepared *view*: the restricted records with at most
``contribution_bound`` rows per patient (a seeded sample, so one patient changes at most
that many rows — the privacy unit OpenDP accounts for), the patient's live consent for each
purpose as boolean columns (withdrawals applied), and text columns encoded against the
public category lists. The view is an Arrow IPC file that OpenDP's Polars plugin scans
directly, so no rows are copied through Python per query.

A query becomes a Polars plan on an empty frame of the view's schema; OpenDP's
``make_private_lazyframe`` turns it into a measurement whose privacy loss OpenDP computes.
Searching for the noise scale is the slow part (~0.6 s), so the scale found for a query
*shape* (the spec without filter values) and (ε, δ) is cached and reused; the reused
measurement's loss is still checked by OpenDP against (ε, δ) before it runs. Noise,
clamping and accounting all come from OpenDP.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import threading
from dataclasses import dataclass
from pathlib import Path

import opendp.prelude as dp
import polars as pl
from opendp.accuracy import summarize_polars_measurement
from opendp.domains import with_margin
from opendp.extras.polars import Margin, _lazyframe_domain_from_schema
from opendp.measurements import make_private_lazyframe
from opendp.mod import Measurement, OpenDPException, binary_search

from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.errors import InputError, PolicyRefusal
from sandbox.gateway.queries import MAX_CELLS, QUANTILE_CANDIDATES, Filter, QuerySpec

dp.enable_features("contrib")

SMALL_CELL = 5
COUNT = "count"
SUPPRESSED = "suppressed"
ALL_PURPOSES = "*"


def consent_column(purpose: str) -> str:
    return f"_consent_{purpose}"


@dataclass
class Dataset:
    """A dataset the gateway serves: its public metadata and its prepared view."""

    id: str
    directory: Path
    metadata: dict
    view: Path
    schema: pl.Schema
    fields: dict[str, dict]
    purposes: list[str]
    domain: object = None

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def contribution_bound(self) -> int:
        return int(self.metadata["contribution_bound"])

    def placeholder(self) -> pl.LazyFrame:
        return pl.LazyFrame(schema=self.schema)

    def scan(self) -> pl.LazyFrame:
        return pl.scan_ipc(self.view, memory_map=True)


def contains(dataset: Dataset, pseudonym: str) -> bool:
    """Whether any restricted record of ``dataset`` belongs to ``pseudonym``."""
    records = pl.scan_parquet(dataset.directory / "restricted" / f"{RECORDS}.parquet")
    return records.filter(pl.col("pseudonym") == pseudonym).select(pl.len()).collect(
    ).item() > 0


def patients(dataset: Dataset) -> list[str]:
    """The pseudonyms of every patient with a restricted record in ``dataset``."""
    key = dataset.metadata["patient_key"]
    records = pl.scan_parquet(dataset.directory / "restricted" / f"{RECORDS}.parquet")
    return records.select(pl.col(key).unique()).collect()[key].to_list()


def prepare(directory: Path, cache: Path, withdrawals: dict[str, set[str]]) -> Dataset:
    """Build (or rebuild) the view of the dataset in ``directory``. ``withdrawals`` maps a
    pseudonym to the purposes withdrawn ("*" for all)."""
    directory = Path(directory)
    try:
        metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{directory} is not an onboarded dataset: {exc}") from None
    if metadata.get("grade") == "public":
        raise InputError(f"{metadata['id']} is a public aggregate dataset; nothing to serve")
    fields = {f["name"]: f for f in metadata["tables"][RECORDS]["fields"]}
    purposes = [p["id"] for p in metadata["purposes"]]
    patient = metadata["patient_key"]
    records = pl.scan_parquet(directory / "restricted" / f"{RECORDS}.parquet")
    consent = pl.scan_parquet(directory / "restricted" / f"{CONSENT}.parquet")

    withdrawn = pl.DataFrame(
        [(p, purpose) for p, purposes_ in withdrawals.items() for purpose in purposes_],
        schema={patient: pl.String, "_purpose": pl.String}, orient="row",
    )
    consent_cols = []
    for purpose in purposes:
        live = withdrawn.filter(pl.col("_purpose").is_in([purpose, ALL_PURPOSES]))[patient]
        consent_cols.append(
            (pl.col(purpose).fill_null(False) & pl.col("withdrawn_at").is_null()
             & ~pl.col(patient).is_in(live.implode())).alias(consent_column(purpose))
        )
    consent = consent.select(patient, *consent_cols)

    encode = []
    for name, f in fields.items():
        if f["type"] == "string" and f.get("categories") is not None and f["role"] != "label":
            encode.append(pl.col(name).cast(pl.Enum(f["categories"]), strict=False))
    bound = int(metadata["contribution_bound"])
    # Keep at most `bound` rows per patient, chosen by a seeded shuffle: which rows is a
    # matter of utility, how many is the privacy unit.
    seed = int(metadata.get("spec_sha256", "0" * 8)[:8], 16)
    view = (
        records
        .filter(pl.int_range(pl.len()).shuffle(seed=seed).over(patient) < bound)
        .join(consent, on=patient, how="left")
        .with_columns(*(pl.col(consent_column(p)).fill_null(False) for p in purposes))
        .with_columns(encode)
        .drop(patient, *(n for n, f in fields.items() if f["role"] == "label"))
        .collect(engine="streaming")
    )
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{metadata['id']}-{metadata['version']}.arrow"
    tmp = target.with_suffix(".arrow.tmp")
    view.write_ipc(tmp)
    tmp.replace(target)
    return Dataset(metadata["id"], directory, metadata, target, view.schema,
                   fields, purposes, _domain(view.schema, metadata))


def _domain(schema: pl.Schema, metadata: dict) -> object:
    records = metadata["sample_size"]["records"]
    max_length = 10 ** math.ceil(math.log10(max(records, 1) * 1.5 + 1))
    return with_margin(_lazyframe_domain_from_schema(schema),
                       Margin(by=(), max_length=max_length))


def check_fields(names: list[str], fields: dict[str, dict], allowed: set[str]) -> None:
    """Refuse a field the dataset does not publish, or the grant does not cover."""
    granted = sorted(f for f in allowed if f in fields)
    for name in names:
        if name not in fields or fields[name]["role"] in ("patient_key", "label"):
            raise InputError(f"unknown field {name!r}; allowed fields: "
                             f"{', '.join(granted)}", allowed=granted)
        if name not in allowed:
            raise PolicyRefusal(f"field {name!r} is outside this project's grant; "
                                f"allowed fields: {', '.join(granted)}", allowed=granted)


def check_filters(filters: list[Filter], fields: dict[str, dict]) -> None:
    """Refuse a filter whose values do not fit its field's type or public categories."""
    for flt in filters:
        f = fields[flt.field]
        values = flt.value if isinstance(flt.value, list) else [flt.value]
        if f["type"] == "string":
            if flt.op not in ("eq", "ne", "in"):
                raise InputError(f"filter {flt.op!r} does not apply to text field "
                                 f"{flt.field!r}")
            unknown = [v for v in values if v not in (f.get("categories") or [])]
            if unknown:
                raise InputError(f"{unknown} not among the public categories of "
                                 f"{flt.field!r}: {', '.join(f.get('categories') or [])}")
        elif f["type"] in ("integer", "float"):
            if not all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in values):
                raise InputError(f"filter on {flt.field!r} needs numbers")
        elif f["type"] == "boolean" and not all(isinstance(v, bool) for v in values):
            raise InputError(f"filter on {flt.field!r} needs true or false")


@dataclass(frozen=True)
class Release:
    """What OpenDP released, as rows, and what it cost."""

    rows: list[dict]
    epsilon: float
    delta: float
    columns: list[str]
    refused: str | None = None  # a refusal decided from noisy values: the release itself


class Engine:
    """Compiles query specs to OpenDP measurements and runs them on dataset views."""

    def __init__(self) -> None:
        self._scales: dict[tuple, tuple[float, int | None]] = {}
        self._calibrating: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- validation ------------------------------------------------------------------
    def check(self, spec: QuerySpec, dataset: Dataset, allowed: set[str]) -> None:
        """Refuse a spec the dataset or the grant does not allow; nothing is spent."""
        check_fields(spec.fields_used(), dataset.fields, allowed)
        if spec.field:
            f = dataset.fields[spec.field]
            if f["type"] not in ("integer", "float"):
                raise InputError(f"{spec.kind} needs a numeric field; {spec.field!r} is "
                                 f"{f['type']}")
            low, high = f["bounds"]
            if spec.bounds and (spec.bounds[0] < low or spec.bounds[1] > high):
                raise InputError(f"bounds {list(spec.bounds)} lie outside the public bounds "
                                 f"[{low:g}, {high:g}] of {spec.field!r}")
            if spec.bins and (spec.bins[0] < low or spec.bins[-1] > high):
                raise InputError(f"bins must lie within the public bounds [{low:g}, {high:g}]")
        cells = 1
        for name in spec.group_by:
            f = dataset.fields[name]
            if f["type"] != "string":
                raise InputError(f"group_by needs text fields; {name!r} is {f['type']}")
            cells *= len(f.get("categories") or [])
        if spec.group_by and spec.keys == "public" and cells > MAX_CELLS:
            raise InputError(f"grouping by {spec.group_by} makes {cells} cells; "
                             f"at most {MAX_CELLS}")
        check_filters(spec.filters, dataset.fields)

    # -- compilation -----------------------------------------------------------------
    def _plan(self, spec: QuerySpec, dataset: Dataset, purpose: str) -> pl.LazyFrame:
        consent = consent_column(purpose)
        frame = dataset.placeholder().filter(pl.col(consent))
        if spec.kind in ("count", "histogram"):
            # Project early: a count's plan otherwise reads every column of the view. (Not
            # for sums and means: a projection drops the margin their sensitivity needs.)
            frame = frame.select(spec.fields_used() or [consent])
        for flt in spec.filters:
            frame = frame.filter(predicate(flt))
        if spec.kind == "histogram":
            return self._histogram(spec, frame)
        aggs = self._aggregates(spec, dataset)
        if not spec.group_by:
            return frame.select(aggs)
        grouped = frame.group_by(spec.group_by).agg(dp.len(signed=True).alias(COUNT), *aggs)
        if spec.keys == "private":
            return grouped
        keys = _public_keys(spec.group_by, dataset)
        return keys.join(grouped, on=spec.group_by, how="left", nulls_equal=True)

    def _bounds(self, spec: QuerySpec, dataset: Dataset) -> tuple[float, float]:
        low, high = spec.bounds or dataset.fields[spec.field]["bounds"]
        return float(low), float(high)

    def _aggregates(self, spec: QuerySpec, dataset: Dataset) -> list[pl.Expr]:
        if spec.kind == "count":
            return [] if spec.group_by else [dp.len(signed=True).alias(COUNT)]
        low, high = self._bounds(spec, dataset)
        value = pl.col(spec.field).cast(pl.Float64).fill_null(low).clip(low, high)
        if spec.kind == "sum":
            return [value.dp.sum((low, high)).alias("sum")]
        if spec.kind == "mean":
            return [value.dp.mean((low, high)).alias("mean")]
        step = (high - low) / (QUANTILE_CANDIDATES - 1)
        candidates = [low + i * step for i in range(QUANTILE_CANDIDATES)]
        return [value.dp.quantile(q, candidates).alias(f"q{q:g}") for q in spec.quantiles]

    def _histogram(self, spec: QuerySpec, frame: pl.LazyFrame) -> pl.LazyFrame:
        edges = spec.bins
        labels = _bin_labels(edges)
        value = pl.col(spec.field).cast(pl.Float64).fill_null(edges[0]).clip(edges[0], edges[-1])
        binned = frame.with_columns(
            value.cut(edges[1:-1], labels=labels, left_closed=True).alias("bin"))
        counts = binned.group_by("bin").agg(dp.len(signed=True).alias(COUNT))
        keys = pl.LazyFrame({"bin": pl.Series(labels, dtype=pl.Categorical)})
        return keys.join(counts, on="bin", how="left", nulls_equal=True)

    def _make(self, dataset: Dataset, plan: pl.LazyFrame, scale: float,
              threshold: int | None) -> Measurement:
        return make_private_lazyframe(
            input_domain=dataset.domain,
            input_metric=dp.symmetric_distance(),
            output_measure=dp.approximate(dp.max_divergence()),
            lazyframe=plan, global_scale=scale, threshold=threshold,
        )

    def measurement(self, spec: QuerySpec, dataset: Dataset, purpose: str) -> Measurement:
        """The OpenDP measurement answering ``spec`` within (ε, δ), scale cached by shape."""
        plan = self._plan(spec, dataset, purpose)
        d_in = dataset.contribution_bound
        key = (dataset.id, dataset.version, purpose, spec.shape())
        with self._lock:
            cached = self._scales.get(key)
            busy = self._calibrating.setdefault(key, threading.Lock())
        if cached is None:
            with busy:  # concurrent queries of a new shape calibrate once
                with self._lock:
                    cached = self._scales.get(key)
                if cached is None:
                    cached = self._calibrate(dataset, plan, d_in, spec.epsilon, spec.delta,
                                             spec.keys == "private" and bool(spec.group_by))
                    with self._lock:
                        self._scales[key] = cached
        try:  # a cached scale skips calibration, not OpenDP's checks of this query's plan
            measurement = self._make(dataset, plan, *cached)
            eps, delta = measurement.map(d_in)
        except (OpenDPException, ValueError) as exc:
            raise InputError(f"this query cannot be answered privately: "
                             f"{_first_line(exc)}") from None
        if eps > spec.epsilon * (1 + 1e-9) or delta > spec.delta * (1 + 1e-9) + 1e-300:
            raise PolicyRefusal("the calibrated measurement exceeds the requested budget")
        return measurement

    def _calibrate(self, dataset: Dataset, plan: pl.LazyFrame, d_in: int, epsilon: float,
                   delta: float, threshold: bool) -> tuple[float, int | None]:
        try:
            if not threshold:
                scale = binary_search(
                    lambda s: self._make(dataset, plan, s, None).map(d_in)[0] <= epsilon,
                    T=float)
                return scale, None
            scale = binary_search(
                lambda s: self._make(dataset, plan, s, 2**32 - 1).map(d_in)[0] <= epsilon,
                T=float)
            cut = binary_search(
                lambda t: self._make(dataset, plan, scale, t).map(d_in)[1] <= delta, T=int)
            return scale, cut
        except (OpenDPException, ValueError) as exc:
            raise InputError(f"this query cannot be answered privately: "
                             f"{_first_line(exc)}") from None

    # -- running ---------------------------------------------------------------------
    def run(self, spec: QuerySpec, dataset: Dataset, measurement: Measurement) -> Release:
        """Release the answer of ``measurement`` (from ``measurement()``). Call only after
        the budget has been charged."""
        eps, delta = measurement.map(dataset.contribution_bound)
        frame = measurement(dataset.scan()).collect()
        bounds = self._bounds(spec, dataset) if spec.field else None
        frame = _post_process(spec, frame, bounds)
        return Release(_rows(frame), float(eps), float(delta), frame.columns)

    def preview(self, spec: QuerySpec, dataset: Dataset, purpose: str,
                alpha: float = 0.05) -> list[dict]:
        """Noise scale and (1 − alpha) error bound of each released statistic; no data read."""
        measurement = self.measurement(spec, dataset, purpose)
        summary = summarize_polars_measurement(measurement, alpha)
        return _rows(summary)


def _bin_labels(edges: list[float]) -> list[str]:
    labels = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def _public_keys(names: list[str], dataset: Dataset) -> pl.LazyFrame:
    columns = [pl.Series(n, dataset.fields[n]["categories"], dtype=dataset.schema[n])
               for n in names]
    frame = pl.DataFrame(columns[0])
    for col in columns[1:]:
        frame = frame.join(pl.DataFrame(col), how="cross")
    return frame.lazy()


def predicate(flt: Filter) -> pl.Expr:
    col = pl.col(flt.field)
    match flt.op:
        case "eq":
            return col == flt.value
        case "ne":
            return col != flt.value
        case "in":
            return functools.reduce(operator.or_, (col == v for v in flt.value))
        case "lt":
            return col < flt.value
        case "le":
            return col <= flt.value
        case "gt":
            return col > flt.value
        case "ge":
            return col >= flt.value
    return (col >= flt.value[0]) & (col <= flt.value[1])


def _post_process(spec: QuerySpec, frame: pl.DataFrame,
                  bounds: tuple[float, float] | None) -> pl.DataFrame:
    """Small cells: a group whose noisy count is below 5 is withheld (post-processing of
    the DP release, so it costs nothing), as the guide's minimum-count rule asks."""
    # Rows come back in no particular order; present them in category (or bin) order.
    if spec.kind == "histogram":
        labels = _bin_labels(spec.bins)
        frame = frame.with_columns(pl.col("bin").cast(pl.String).cast(pl.Enum(labels)))
        frame = frame.sort("bin")
    elif spec.group_by:
        frame = frame.sort(spec.group_by, nulls_last=True)
    frame = frame.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String))
    if spec.kind == "mean" and bounds is not None:
        # A noisy mean can fall outside the clamping bounds; bringing it back is free
        # post-processing and never moves it further from the truth.
        frame = frame.with_columns(pl.col("mean").clip(*bounds))
    if COUNT in frame.columns and (spec.group_by or spec.kind == "histogram"):
        small = pl.col(COUNT).fill_null(0) < SMALL_CELL
        values = [c for c in frame.columns if c not in (*spec.group_by, "bin")]
        frame = frame.with_columns(
            *(pl.when(small).then(None).otherwise(pl.col(c)).alias(c) for c in values),
            small.alias(SUPPRESSED),
        )
    return frame


def _rows(frame: pl.DataFrame) -> list[dict]:
    rows = frame.to_dicts()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                row[k] = None
    return rows
