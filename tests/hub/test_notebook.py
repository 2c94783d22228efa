"""The example notebook runs inside a live sandbox (nbclient, the sandbox's own kernel and
environment) and its DP results carry receipts that verify against the gateway's key."""

from __future__ import annotations

import json

import httpx
import nbformat

from sandbox import receipts
from sandbox.hub.names import server_name
from tests.services import ROOT

EXECUTE = """
import nbclient, nbformat
nb = nbformat.read("getting-started.ipynb", as_version=4)
nbclient.NotebookClient(nb, kernel_name="python3", timeout=300).execute()
nbformat.write(nb, "getting-started.executed.ipynb")
"""


def test_getting_started_runs_in_a_sandbox(stack):
    project, researcher = stack.approved_project()
    assert stack.hub().wait_ready(f"user-{researcher.id}", server_name(project)).ready
    box = stack.container(project, researcher)
    # the workspace starts with the example notebook, identical to the repository's
    code, shipped = box.exec_run(["cat", "/home/researcher/work/getting-started.ipynb"],
                                 user="1000:1000")
    assert code == 0
    assert json.loads(shipped) == json.loads(
        (ROOT / "notebooks" / "getting-started.ipynb").read_text())
    code, out = box.exec_run(["python3", "-c", EXECUTE], user="1000:1000",
                             workdir="/home/researcher/work")
    assert code == 0, out.decode(errors="replace")[-3000:]
    _, text = box.exec_run(["cat", "getting-started.executed.ipynb"], user="1000:1000",
                           workdir="/home/researcher/work")
    notebook = nbformat.reads(text.decode(), as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    line = next(s for s in printed.splitlines() if s.startswith("RECEIPTS "))
    released = json.loads(line.removeprefix("RECEIPTS "))
    public_key = httpx.get(f"{stack.gateway.url}/v1/public-key").text.encode()
    payloads = [receipts.verify(r, public_key) for r in released]
    assert {p["project"] for p in payloads} == {f"application-{project}"}
    assert sum(p["epsilon"] for p in payloads) == 0.5
    code, _ = box.exec_run(["test", "-s", "mean-cost-by-age.png"], user="1000:1000",
                           workdir="/home/researcher/work")
    assert code == 0, "the plot was saved in the workspace"
