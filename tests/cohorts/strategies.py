"""Random cohort definitions over the demo extract's event tables, and the extract as the
oracle reads it — shared by the frame's tests and the served gateway's."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

from hypothesis import strategies as st

from tests.cohorts import oracle

PURPOSE = "medical_research"


class World(dict):
    """The extract as the oracle reads it, and the dataset (shown by name only)."""

    def __repr__(self) -> str:
        return "World(emr-visits)"


def load_world(raw: Path, key_file: Path, dataset: Path) -> World:
    names = oracle.pseudonyms(raw, key_file)
    metadata = json.loads((dataset / "metadata.json").read_text(encoding="utf-8"))
    categories = {(t, f["name"]): f["categories"] for t, table in metadata["tables"].items()
                  for f in table["fields"] if f.get("categories")}
    return World({"metadata": metadata, "categories": categories,
                  "events": oracle.events(raw, dataset, names),
                  "consent": oracle.consenting(raw, names, PURPOSE, dataset),
                  "dataset": dataset})


days = st.dates(min_value=date(2018, 6, 1), max_value=date(2026, 6, 30)).map(str)


@st.composite
def selections(draw, world, relative: bool) -> dict:
    table = draw(st.sampled_from(["diagnoses", "labs", "prescriptions", "visits"]))
    out: dict = {"table": table}
    if table == "diagnoses":
        categories = sorted({c[:3] for c in world["categories"][("diagnoses",
                                                                "diagnosis_code")]
                             if re.fullmatch(r"[A-Z]\d\d.*", c)})
        entries = draw(st.lists(st.sampled_from(categories), min_size=1, max_size=3))
        if draw(st.booleans()):
            entries.append(draw(st.sampled_from(["E10-E14", "I10-I15", "I20-I25"])))
        out["codes"] = {"field": "diagnosis_code", "codelist": entries}
        if draw(st.booleans()):
            out["where"] = [{"field": "is_primary", "op": "eq", "value": draw(st.booleans())}]
    elif table == "labs":
        tests = world["categories"][("labs", "test_code")]
        out["where"] = [{"field": "test_code", "op": "in",
                         "value": draw(st.lists(st.sampled_from(tests), min_size=1,
                                                max_size=3, unique=True))}]
    elif table == "visits":
        if draw(st.booleans()):
            out["where"] = [{"field": "visit_type", "op": "in", "value": draw(st.lists(
                st.sampled_from(["门诊", "急诊", "住院"]), min_size=1, max_size=2,
                unique=True))}]
    else:
        drugs = world["categories"][("prescriptions", "drug_name")]
        out["where"] = [{"field": "drug_name", "op": "in",
                         "value": draw(st.lists(st.sampled_from(drugs), min_size=1,
                                                max_size=4, unique=True))}]
    window = {}
    if draw(st.booleans()):
        window["start"] = draw(days)
    if draw(st.booleans()):
        window["end"] = draw(days)
    if window.get("start", "") > window.get("end", "9999"):
        window["start"], window["end"] = window["end"], window["start"]
    if relative and draw(st.booleans()):
        low = draw(st.integers(-800, 400))
        window["after_index"] = [low, low + draw(st.integers(0, 900))]
    if window:
        out["window"] = window
    return out


@st.composite
def definitions(draw, world) -> dict:
    variables: dict = {}
    for i in range(draw(st.integers(1, 4))):
        events = draw(selections(world, relative=True))
        kinds = ["exists", "count", "days_to_first"]
        if events["table"] in ("labs", "prescriptions"):
            kinds += ["min", "max", "mean", "first_value", "last_value"]
        elif events["table"] == "visits":
            kinds += ["first_value", "last_value"]
        kind = draw(st.sampled_from(kinds))
        variable: dict = {"kind": kind, "events": events}
        if kind in ("min", "max", "mean"):
            variable["field"] = "value" if events["table"] == "labs" else draw(
                st.sampled_from(["dose", "days", "amount"]))
        elif kind in ("first_value", "last_value"):
            variable["field"] = {"labs": "test_code", "visits": "department"}.get(
                events["table"], "drug_name")
        variables[f"v{i}"] = variable
    if draw(st.booleans()):
        variables["surv"] = {"kind": "survival",
                             "events": draw(selections(world, relative=True)),
                             "followup": draw(selections(world, relative=False)),
                             "horizon": draw(st.integers(1, 800))}
    if draw(st.booleans()):
        variables["period"] = {"kind": "index_period",
                               "level": draw(st.sampled_from(["month", "quarter", "year"]))}
    numeric = [n for n, v in variables.items()
               if v["kind"] in ("count", "min", "max", "mean", "days_to_first", "survival")]
    where = []
    if numeric and draw(st.booleans()):
        source = draw(st.sampled_from(numeric))
        edges = sorted(draw(st.lists(st.integers(0, 40), min_size=2, max_size=5,
                                     unique=True)))
        variables["band"] = {"kind": "bands", "of": source, "edges": edges}
        if draw(st.booleans()):
            where.append({"field": source, "op": "ge", "value": draw(st.integers(0, 3))})
    texts = [n for n, v in variables.items() if v["kind"] == "exists"] + [
        f"{n}_event" for n, v in variables.items() if v["kind"] == "survival"]
    if texts and draw(st.booleans()):
        where.append({"field": texts[0], "op": "eq", "value": draw(st.sampled_from(
            ["yes", "no"]))})
    return {"dataset": "emr-visits",
            "index": {**draw(selections(world, relative=False)),
                      "which": draw(st.sampled_from(["first", "last"]))},
            "variables": variables, "where": where}
