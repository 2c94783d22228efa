"""One model and one loader for a dataset's public metadata: every onboarded document
reads back as itself, and a malformed one is refused where it is read, with the reason —
by the CLI (message, non-zero exit) as by the loader every service uses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.data import metadata
from sandbox.errors import InputError

CTL = str(Path(sys.executable).parent / "sandboxctl")  # the running venv's


def test_an_onboarded_document_reads_back_as_itself(dataset):
    document = json.loads((dataset / metadata.FILE).read_text(encoding="utf-8"))
    loaded = metadata.load(dataset)
    assert loaded.document() == document
    assert loaded.contribution_bound == document["contribution_bound"]
    assert {f.name for f in loaded.tables["records"].fields} == {
        f["name"] for f in document["tables"]["records"]["fields"]}


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.pop("tables"), "tables"),
    (lambda d: d.update(contribution_bound=0), "contribution_bound"),
    (lambda d: d.update(grade="secret"), "grade"),
    (lambda d: d["tables"]["records"]["fields"][0].update(type="blob"), "type"),
    (lambda d: d.update(patient_key=None), "patient key"),
    (lambda d: d.update(id="../etc"), "id"),
    # what the views and plans read: met later as a bare KeyError/ValueError otherwise
    (lambda d: d.update(tables={"visits": d["tables"]["records"]}), "records table"),
    (lambda d: d.update(purposes=[{"en": "research"}]), "purposes.0.id"),
    (lambda d: d.update(spec_sha256="not-a-digest"), "spec_sha256"),
    (lambda d: d.update(patient_key="nobody"), "patient key 'nobody'"),
])
def test_a_malformed_document_is_refused_with_its_reason(dataset, tmp_path, change, problem):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    document = json.loads((copy / metadata.FILE).read_text(encoding="utf-8"))
    change(document)
    (copy / metadata.FILE).write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(InputError) as refused:
        metadata.load(copy)
    assert problem in refused.value.reason
    shown = subprocess.run([CTL, "data", "catalog", str(copy)], capture_output=True, text=True)
    assert shown.returncode != 0 and problem in shown.stderr
    assert "Traceback" not in shown.stderr


def test_a_directory_without_metadata_is_named(tmp_path):
    with pytest.raises(InputError, match="not an onboarded dataset"):
        metadata.load(tmp_path)
