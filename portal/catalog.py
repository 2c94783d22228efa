"""The dataset catalog as researchers see it: the public metadata documents written at
onboarding. The portal never opens restricted files."""

from __future__ import annotations

import logging
from pathlib import Path

from sandbox.data import metadata
from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.errors import InputError

log = logging.getLogger(__name__)


def load(datasets_dir: Path) -> list[dict]:
    entries = []
    root = Path(datasets_dir)
    if not root.is_dir():
        return entries
    for meta_file in sorted(root.glob(f"*/{metadata.FILE}")):
        try:
            entries.append(metadata.read(meta_file).document())
        except InputError as exc:  # one bad document must not take the catalog down
            log.warning("catalog entry left out: %s", exc.reason)
    return entries


def fields(entry: dict) -> list[dict]:
    """The requestable fields of a dataset (not the patient key): the records table's by
    name, then each event table's as ``table.field`` — the names a grant gives them."""
    out = []
    for name, table in entry["tables"].items():
        if name == CONSENT:
            continue
        for f in table["fields"]:
            if f["role"] != "patient_key":
                out.append(f if name == RECORDS else {**f, "name": f"{name}.{f['name']}",
                                                      "table": name})
    return out


def search(entries: list[dict], query: str) -> list[dict]:
    query = query.strip().lower()
    if not query:
        return entries
    def text(e: dict) -> str:
        # a description is optional in a catalog document (the loader checks its type)
        parts = [e["id"], *e["title"].values(), *e.get("description", {}).values()]
        parts += [f["name"] for f in fields(e)]
        parts += [v for f in fields(e) for v in f.get("description", {}).values()]
        return " ".join(parts).lower()
    return [e for e in entries if query in text(e)]
