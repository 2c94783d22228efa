"""The packages' layers: the shared query layer imports neither side; the federated sites
and key service never import the central gateway (a site process must not carry it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package → packages it must never import
FORBIDDEN = {
    "sandbox/queries": ("sandbox.gateway", "sandbox.federated", "portal"),
    "sandbox/federated": ("sandbox.gateway", "portal"),
    "sandbox/gateway": ("portal",),
    "sandbox/data": ("sandbox.gateway", "sandbox.federated", "portal"),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)  # and what it names, which may be modules of a package
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("package", FORBIDDEN)
def test_no_package_imports_a_layer_it_must_not(package):
    offending = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for name in _imports(path)
                 if name.startswith(FORBIDDEN[package])]
    assert not offending


# the federated modules the central gateway may use: the protocol, not a service's internals
PROTOCOL = {"sandbox.federated.authorization", "sandbox.federated.messages",
            "sandbox.federated.noise", "sandbox.federated.plan", "sandbox.federated.spec"}


def test_the_gateway_uses_only_the_federated_protocol():
    # "sandbox.federated.plan.MIN_SITES" and "from sandbox.federated import keys" alike:
    # the module is the package's first level
    used = {".".join(name.split(".")[:3])
            for path in sorted((ROOT / "sandbox/gateway").rglob("*.py"))
            for name in _imports(path) if name.startswith("sandbox.federated.")}
    assert used <= PROTOCOL, used - PROTOCOL


def test_a_site_and_the_key_service_load_without_the_central_gateway():
    probe = ("import sys, sandbox.federated.site, sandbox.federated.keys_app; "
             "print(sorted(m for m in sys.modules if m.startswith('sandbox.gateway')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"
