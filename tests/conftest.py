"""Fixtures shared by every test package: the real CLI run as a subprocess, the session's
PostgreSQL; and the test tiers (tests/tiers.py: which tests need a service, a browser or
Docker)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.services import Postgres
from tests.tiers import tier

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ("tests.tiers",)


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
@tier("service")
def postgres():
    """Debian's PostgreSQL, started once per session (only when a test asks for it); each
    test takes its own database. Stopped at the end if this session started it and no
    other client is connected: another run on the same machine may have come to use the
    cluster meanwhile, and stopping it would fail that run half-way."""
    server = Postgres.start()
    yield server
    server.started = server.started and not others_connected(server)
    server.stop()


def others_connected(server: Postgres) -> bool:
    """Whether a client other than this session's (connected to a database it did not
    create) is connected to the cluster."""
    admin = create_engine(server.base_url)
    with admin.connect() as conn:
        others = conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND NOT (datname = ANY(:ours))"),
            {"ours": server.databases})
    admin.dispose()
    return others > 0


@pytest.fixture(scope="session")
def cli():
    return run_cli


# A small raw extract and its onboarded dataset, made once per test session through the
# real CLI; tests that change data copy them first.
SPEC = ROOT / "sandbox" / "data" / "specs" / "emr-visits.toml"
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
PATIENTS = 1500


@pytest.fixture(scope="session")
def spec_path() -> Path:
    return SPEC


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extract") / "raw"
    result = run_cli("data", "generate", "--patients", PATIENTS, "--seed", 11, "--out", out)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "pseudonym.key"
    assert run_cli("data", "keygen", path).code == 0
    return path


DEMO_PATIENTS = int(re.search(r"DEMO_PATIENTS \?= (\d+)", MAKEFILE)[1])
DEMO_SEED = int(re.search(r"DEMO_SEED \?= (\d+)", MAKEFILE)[1])


@pytest.fixture(scope="session")
def demo_dataset(key_file, tmp_path_factory) -> Path:
    """The demo's dataset — ``make run``'s size and seed, 100,000 patients, every event
    date kept to the day — made once per session: where a study needs its numbers."""
    root = tmp_path_factory.mktemp("demo")
    result = run_cli("data", "generate", "--patients", DEMO_PATIENTS, "--seed", DEMO_SEED,
                     "--out", root / "raw")
    assert result.code == 0, result.stderr
    out = root / "datasets" / "emr-visits"
    result = run_cli("data", "onboard", "--raw", root / "raw", "--spec", SPEC, "--key-file",
                     key_file, "--out", out)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def dataset(raw, key_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "emr-visits"
    result = run_cli("data", "onboard", "--raw", raw, "--spec", SPEC, "--key-file", key_file,
                     "--out", out)
    assert result.code == 0, result.stderr
    return out
