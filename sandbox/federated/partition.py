"""``sandboxctl site split``: an onboarded dataset cut into site partitions, each patient
at one site, for a federation to serve (and for tests and demos of one)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl

from sandbox.data.metadata import load as load_metadata
from sandbox.errors import InputError


def split(dataset_dir: Path, sites: list[str], out: Path, dataset_id: str = "",
          catalog_dir: Path | None = None) -> dict:
    """Split an onboarded dataset into site partitions, each patient at one site (chosen
    by their pseudonym): ``out/<site>/`` is an onboarded dataset of that site's rows, and
    ``out/metadata.json`` the federation's public metadata. The federated dataset's id is
    ``dataset_id`` (default: the dataset's own, with ``-federated``). With ``catalog_dir``
    the public metadata and the dummy data also go to ``catalog_dir/<id>/``, where the
    portal lists the dataset (the gateway serves it through its sites, not from there)."""
    if len(sites) < 3 or len(set(sites)) != len(sites):
        raise InputError("a federation needs at least 3 distinct sites")
    meta = load_metadata(dataset_dir).document()
    meta["id"] = dataset_id or f"{meta['id']}-federated"
    key = meta["patient_key"]
    records = pl.read_parquet(dataset_dir / "restricted" / "records.parquet")
    consent = pl.read_parquet(dataset_dir / "restricted" / "consent.parquet")
    site_of = pl.col(key).map_elements(
        lambda p: int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) % len(sites),
        return_dtype=pl.Int64)
    records = records.with_columns(site_of.alias("_site"))
    consent = consent.with_columns(site_of.alias("_site"))
    out.mkdir(parents=True, exist_ok=True)
    for index, site in enumerate(sites):
        part = out / site
        (part / "restricted").mkdir(parents=True, exist_ok=True)
        rows = records.filter(pl.col("_site") == index).drop("_site")
        rows.write_parquet(part / "restricted" / "records.parquet")
        consent.filter(pl.col("_site") == index).drop("_site").write_parquet(
            part / "restricted" / "consent.parquet")
        site_meta = {**{k: v for k, v in meta.items() if k != "files"}, "site": site,
                     "federated": True, "sites": sites, "sites_per_patient": 1,
                     "sample_size": {"patients": rows[key].n_unique(), "records": rows.height}}
        (part / "metadata.json").write_text(json.dumps(site_meta, ensure_ascii=False,
                                                       indent=2), encoding="utf-8")
    # Each patient is at exactly one site here; a federation of separately onboarded
    # extracts declares how many sites may share a patient (checked, docs/federated.md).
    public = {**{k: v for k, v in meta.items() if k != "files"}, "federated": True,
              "sites": sites, "sites_per_patient": 1, "title": {
                  "zh": f"{meta['title']['zh']}（联邦：{len(sites)} 家机构）",
                  "en": f"{meta['title']['en']} (federated: {len(sites)} sites)"}}
    text = json.dumps(public, ensure_ascii=False, indent=2)
    (out / "metadata.json").write_text(text, encoding="utf-8")
    if catalog_dir is not None:
        entry = catalog_dir / meta["id"]
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "metadata.json").write_text(text, encoding="utf-8")
        if (dataset_dir / "dummy").is_dir():
            shutil.copytree(dataset_dir / "dummy", entry / "dummy", dirs_exist_ok=True)
    return {"dataset": meta["id"], "sites": sites, "records": records.height}
