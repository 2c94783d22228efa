"""The bounded view of a dataset version, built once by either engine.

At most ``contribution_bound`` rows per patient are kept — the privacy unit OpenDP
accounts for. Which rows is decided by a stored rank key: HMAC-SHA256 under the serving
side's own key of the patient's pseudonym and the row's position in the restricted records
file, kept as the column ``_rank``; a patient's rows with the ``bound`` smallest keys stay.
The key makes the choice unpredictable to anyone who does not hold it (so a patient's
visible rows cannot be steered into or out of the view), and the rule depends on nothing
but the row itself, so Polars (``build_polars``) and Spark (``sandbox.queries.spark``)
keep exactly the same rows. Text values outside their public categories become null and
each purpose's recorded consent becomes a boolean column ``_consent_<purpose>``, as the
catalogue states them; withdrawals made later are applied per query (``Dataset.excluded``),
so the view never has to be rebuilt for them. The view is written as Parquet partitioned
by the rank key's first hex digit (``_part=p0`` … ``_part=pf``), and ``view.json`` beside
the files says what was built, by which engine, from which files.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import polars as pl

from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.queries.plan import PATIENT, consent_column

RANK = "_rank"
PART = "_part"
ROW = "_row"
MANIFEST = "view.json"
SEPARATOR = "\x1f"  # between pseudonym and row number in the rank key's message
BUCKET_ROWS = 4_000_000  # rows of patients built at once (about 1 GB of working memory)
BUCKET_SEED = 20_251_231  # the patients' split into buckets (any fixed seed)



class Builder(Protocol):
    """An engine that can build bounded views (``exact.PolarsExecutor``,
    ``spark.SparkExecutor``)."""

    name: str

    def build(self, directory: Path, metadata: dict, secret: bytes, target: Path) -> int:
        """Write the view of ``directory``'s dataset into ``target``; its row count."""
        ...


def view_directory(cache: Path, metadata: dict) -> Path:
    """Where the view of this dataset version lives: one directory per version and files
    (a re-onboarded dataset under the same version gets a view of its own)."""
    files = hashlib.sha256(json.dumps(metadata.get("files", {}), sort_keys=True).encode())
    return Path(cache) / f"{metadata['id']}-{metadata['version']}-{files.hexdigest()[:12]}"


def manifest(target: Path) -> dict | None:
    try:
        return json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def ensure(directory: Path, metadata: dict, secret: bytes, cache: Path,
           builder: Builder) -> tuple[Path, dict]:
    """The view of ``directory``'s dataset version: built by ``builder`` if not there yet
    (into a fresh directory renamed into place, so a reader never sees half a view)."""
    target = view_directory(cache, metadata)
    found = manifest(target)
    if found is not None:
        return target, found
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{target.name}.{uuid.uuid4().hex[:8]}"
    try:
        rows = builder.build(directory, metadata, secret, staging)
        found = {"dataset": metadata["id"], "version": metadata["version"],
                 "files": metadata.get("files", {}), "rows": rows,
                 "bound": int(metadata["contribution_bound"]),
                 "rank": "HMAC-SHA256(key, pseudonym ␟ row number)",
                 "built_by": builder.name}
        (staging / MANIFEST).write_text(json.dumps(found, ensure_ascii=False, indent=1),
                                        encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # built meanwhile by another process: theirs is the same rows
            found = manifest(target)
            if found is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, found


def served_fields(metadata: dict) -> dict[str, dict]:
    """The record fields a view keeps: all but labels (the patient key is kept for
    exclusions and never published)."""
    return {f["name"]: f for f in metadata["tables"][RECORDS]["fields"]
            if f["role"] != "label"}


def rank_keys(secret: bytes) -> Callable[[pl.Series], pl.Series]:
    """HMAC-SHA256(secret, pseudonym ␟ row) in hex for a struct series of both."""
    base = hmac.new(secret, digestmod=hashlib.sha256)

    def ranks(batch: pl.Series) -> pl.Series:
        out = []
        for patient, row in zip(batch.struct.field(PATIENT).to_list(),
                                batch.struct.field(ROW).to_list(), strict=True):
            mac = base.copy()
            mac.update(f"{patient}{SEPARATOR}{row}".encode())
            out.append(mac.hexdigest())
        return pl.Series(RANK, out, dtype=pl.String)

    return ranks


def build_polars(directory: Path, metadata: dict, secret: bytes, target: Path) -> int:
    """Build the bounded view with Polars, in buckets of patients (each bucket's rows are
    all of its patients' rows, so the bound is applied within it) of about
    ``BUCKET_ROWS`` rows each: memory does not grow with the dataset. The number of rows
    kept."""
    patient = metadata["patient_key"]
    records = pl.scan_parquet(directory / "restricted" / f"{RECORDS}.parquet")
    consent = pl.scan_parquet(directory / "restricted" / f"{CONSENT}.parquet")
    total = records.select(pl.len()).collect().item()
    buckets = max(1, -(-total // BUCKET_ROWS))
    target.mkdir(parents=True)
    kept = 0
    for b in range(buckets):
        def mine(frame: pl.LazyFrame, b: int = b) -> pl.LazyFrame:
            return frame if buckets == 1 else frame.filter(
                pl.col(patient).hash(seed=BUCKET_SEED) % buckets == b)
        view = _bounded(records.with_row_index(ROW), consent, metadata, secret, mine)
        write(view, target, f"part-{b}.parquet")
        kept += view.height
    return kept


def _bounded(records: pl.LazyFrame, consent: pl.LazyFrame, metadata: dict, secret: bytes,
             mine: Callable[[pl.LazyFrame], pl.LazyFrame]) -> pl.DataFrame:
    """The view's rows of the patients ``mine`` keeps (records numbered in the file)."""
    patient = metadata["patient_key"]
    bound = int(metadata["contribution_bound"])
    fields = served_fields(metadata)
    purposes = [p["id"] for p in metadata["purposes"]]
    # One row per patient: joined after the bound, a second consent row would copy the
    # patient's kept rows past it. A patient consents only if every row of theirs does.
    consent = mine(consent).group_by(patient).agg(
        *((pl.col(p).fill_null(False) & pl.col("withdrawn_at").is_null()).all()
          .alias(consent_column(p)) for p in purposes))
    public = []
    for name, f in fields.items():
        if f["type"] == "string" and f.get("categories") is not None:
            # Out-of-catalogue text reads as null, as it did under the Enum view.
            public.append(pl.when(pl.col(name).is_in(f["categories"])).then(pl.col(name))
                          .alias(name))
        else:
            public.append(pl.col(name))
    return (
        mine(records.select(ROW, *fields))
        .with_columns(pl.struct(patient, ROW).map_batches(rank_keys(secret),
                                                          return_dtype=pl.String).alias(RANK))
        .filter(pl.col(RANK).rank("ordinal").over(patient) <= bound)
        .join(consent, on=patient, how="left")
        .select(*public, *(pl.col(consent_column(p)).fill_null(False) for p in purposes),
                pl.col(RANK))
        .rename({patient: PATIENT} if patient != PATIENT else {})
        .collect(engine="streaming")
    )


def write(view: pl.DataFrame, target: Path, name: str = "part-0.parquet") -> None:
    """Hive-style partitions by the rank key's first hex digit, LZ4 (raw) compressed —
    a codec both Polars and Spark read; ``name``: this file's name in each partition."""
    parts = view.with_columns(pl.concat_str(pl.lit("p"), pl.col(RANK).str.head(1)).alias(PART))
    target.mkdir(parents=True, exist_ok=True)
    for (part_name,), part in parts.partition_by(PART, as_dict=True).items():
        folder = target / f"{PART}={part_name}"
        folder.mkdir(exist_ok=True)
        part.drop(PART).write_parquet(folder / name, compression="lz4")
