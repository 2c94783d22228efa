"""The federated example notebook runs against the federation (three site processes, the key
service, the gateway as deployed) in a real kernel, and its answers carry receipts."""

from __future__ import annotations

import json

import nbclient
import nbformat

from sandbox import receipts
from sandbox.client import TOKEN_ENV, URL_ENV
from tests.federated.conftest import grant
from tests.services import ROOT


def test_the_federated_notebook_runs(noisy, tmp_path, monkeypatch):
    project = grant(noisy, project="notebook")
    monkeypatch.setenv(URL_ENV, noisy.url)
    monkeypatch.setenv(TOKEN_ENV, project["token"])
    notebook = nbformat.read(ROOT / "notebooks" / "federated-queries.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    line = next(s for s in printed.splitlines() if s.startswith("RECEIPTS "))
    public_key = noisy.admin("GET", "/v1/public-key").text.encode()
    payloads = [receipts.verify(r, public_key, receipts.Domain.RECEIPT)
                for r in json.loads(line[9:])]
    assert [p["query"]["kind"] for p in payloads] == ["histogram", "mean",
                                                       "linear_regression"]
    assert {p["project"] for p in payloads} == {"notebook"}
    assert (tmp_path / "federated-length-of-stay.png").stat().st_size > 1000
