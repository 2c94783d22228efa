"""The published API description is the one the gateway serves."""

from __future__ import annotations

import json

from tests.conftest import ROOT


def test_openapi_document_is_current(cli):
    result = cli("gateway", "openapi")
    assert result.code == 0
    committed = json.loads((ROOT / "docs" / "gateway-openapi.json").read_text())
    assert json.loads(result.stdout) == committed, \
        "regenerate: sandboxctl gateway openapi > docs/gateway-openapi.json"
    assert "/v1/query" in committed["paths"] and "/v1/preview" in committed["paths"]
