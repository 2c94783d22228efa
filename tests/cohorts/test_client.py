"""A researcher's cohort in the sandbox: built with ``Cohort``, tried on the dummy data by
the code the gateway runs, with only the modules the sandbox image carries."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from sandbox.client import Cohort, codelist
from sandbox.hub.image import CLIENT_MODULES
from tests.conftest import ROOT


def test_a_cohort_runs_on_the_dummy_data_before_any_budget_is_spent(dataset, tmp_path):
    codes = tmp_path / "t2d.txt"
    codes.write_text("# type 2 diabetes\ncode\nE11\nE11.9, with no complication\n\n",
                     encoding="utf-8")
    assert codelist(codes) == ["E11", "E11.9"]
    cohort = (Cohort("emr-visits", Cohort.events("diagnoses", codes=codelist(codes)))
              .first_value("sex", Cohort.events("records"), "sex")
              .max("glucose", Cohort.events("labs", where={"test_code": "GLU"}), "value")
              .bands("control", "glucose", [0, 7, 1100])
              .count("visits", Cohort.events("records"))
              .exists("readmitted", Cohort.events("visits", where={"visit_type": "住院"},
                                                  after_index=(1, 30))))
    frame = cohort.frame(dataset.parent)
    assert frame.columns == ["sex", "glucose", "control", "visits", "readmitted"]
    assert frame.height > 0 and frame["visits"].min() >= 0
    assert set(frame["readmitted"].cast(str).unique()) <= {"yes", "no"}
    spec = cohort.spec()
    assert spec["index"]["codes"] == {"field": "diagnosis_code", "codelist": ["E11", "E11.9"]}
    with pytest.raises(ValueError, match="not an ICD-10 code"):
        Cohort("emr-visits", Cohort.events("diagnoses", codes=["diabetes"])).spec()


def test_the_client_imports_with_only_the_modules_the_image_carries(tmp_path):
    """The image copies CLIENT_MODULES of ``sandbox`` and nothing else: the client, its
    cohorts and their checks must import from those alone."""
    package = tmp_path / "lib" / "sandbox"
    for name in CLIENT_MODULES:
        source = ROOT / "sandbox" / name
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, package / name)
        else:
            shutil.copy2(source, package / name)
    probe = ("import sys, sandbox.client, sandbox.cohorts.frame; "
             "assert sandbox.client.__file__.startswith(sys.argv[1]), sandbox.client.__file__; "
             "print(sorted(m for m in sys.modules if m.startswith('sandbox')))")
    result = subprocess.run([sys.executable, "-c", probe, str(package)], cwd=tmp_path,
                            env={"PYTHONPATH": str(tmp_path / "lib"), "PATH": "/usr/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sandbox.gateway" not in result.stdout and "sandbox.data" not in result.stdout
