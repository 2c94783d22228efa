"""Fixtures shared by every test package: the real CLI run as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path) -> CliResult:
    """Run ``sandboxctl`` as a user would: a separate process, real exit code."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "sandboxctl"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def cli():
    return run_cli
