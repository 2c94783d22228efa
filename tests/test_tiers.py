"""The test tiers (tests/tiers.py): every test of the suite has exactly one; the rule that
infers it — directory, fixtures, parameters, explicit markers — gives what it says on small
suites of its own; a unit test that reaches a server fails; and one PostgreSQL serves the
whole run, left running at its end while another run uses it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, others_connected
from tests.services import Postgres
from tests.tiers import tier

pytest_plugins = ("pytester",)

NO_TIER = "not unit and not service and not docker and not browser"


def test_every_test_of_the_suite_has_exactly_one_tier():
    """No test falls outside the tiers (and two on one test is a collection error)."""
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "-m", NO_TIER],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    last = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 5, run.stdout[-2000:] + run.stderr[-2000:]
    assert re.match(r"no tests collected \(\d{3,} deselected\)", last), last


@pytest.fixture
def suite(pytester):
    """A small suite of its own with the plugin loaded, laid out like tests/."""
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ("tests.tiers",)\n')
    return pytester


def tiers(pytester) -> dict[str, str]:
    """test name → the tier marker its collection gave it."""
    items, _ = pytester.inline_genitems()
    return {item.name: ",".join(m.name for m in item.iter_markers()
                                if m.name in ("unit", "service", "browser", "docker"))
            for item in items}


def test_the_directory_decides_for_hub_browser_and_attacks(suite):
    for folder in ("hub", "browser", "attacks", "portal"):
        # plain directories: a package named ``tests`` would be this project's
        (suite.path / "tests" / folder).mkdir(parents=True)
        (suite.path / "tests" / folder / f"test_{folder}.py").write_text(
            f"def test_in_{folder}():\n    pass\n")
    assert tiers(suite) == {"test_in_hub": "docker", "test_in_browser": "browser",
                            "test_in_attacks": "service", "test_in_portal": "unit"}


def test_a_fixture_that_starts_something_makes_every_test_using_it_that_tier(suite):
    suite.makepyfile(test_fixtures="""
        import pytest
        from tests.tiers import tier

        @pytest.fixture(scope="session")
        @tier("service")
        def server():
            return "served"

        @pytest.fixture
        def client(server):  # uses it only through another fixture
            return server

        @pytest.fixture
        @tier("docker")
        def engine(client):
            return client

        def test_plain():
            pass

        def test_direct(server):
            pass

        def test_indirect(client):
            pass

        def test_heaviest_wins(engine):
            pass
    """)
    assert tiers(suite) == {"test_plain": "unit", "test_direct": "service",
                            "test_indirect": "service", "test_heaviest_wins": "docker"}


def test_a_postgresql_parameter_is_a_service(suite):
    suite.makepyfile(test_params="""
        import pytest

        @pytest.fixture(params=["sqlite", "postgresql"])
        def backend(request):
            return request.param

        def test_on(backend):
            pass

        @pytest.mark.parametrize("database", ["sqlite", "postgresql"])
        def test_direct(database):
            pass
    """)
    assert tiers(suite) == {"test_on[sqlite]": "unit", "test_on[postgresql]": "service",
                            "test_direct[sqlite]": "unit",
                            "test_direct[postgresql]": "service"}


def test_an_explicit_marker_raises_a_test_where_the_rule_cannot_tell(suite):
    suite.makepyfile(test_explicit="""
        import pytest

        @pytest.mark.service
        def test_starts_its_own():
            pass
    """, test_module="""
        import pytest

        pytestmark = pytest.mark.service

        def test_in_a_marked_module():
            pass
    """)
    assert tiers(suite) == {"test_starts_its_own": "service",
                            "test_in_a_marked_module": "service"}


def test_two_tiers_on_one_test_is_a_collection_error(suite):
    suite.makepyfile(test_two="""
        import pytest

        @pytest.mark.unit
        @pytest.mark.service
        def test_both():
            pass
    """)
    result = suite.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_both: marked service and unit; a test has one tier*"])


def test_an_explicit_marker_lighter_than_the_rule_is_a_collection_error(suite):
    suite.makepyfile(test_lighter="""
        import pytest

        @pytest.mark.unit
        @pytest.mark.parametrize("backend", ["postgresql"])
        def test_claims_unit(backend):
            pass
    """)
    result = suite.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_claims_unit*marked unit but needs service*"])


def test_an_unknown_tier_is_refused_and_tier_goes_under_pytest_fixture():
    with pytest.raises(ValueError, match="unknown tier 'fast'"):
        tier("fast")
    def fixture():
        return None

    with pytest.raises(TypeError, match=r"under @pytest\.fixture"):
        tier("service")(pytest.fixture(fixture))


def test_a_unit_test_that_reaches_a_server_fails_and_names_the_tier_it_needs(suite,
                                                                            monkeypatch):
    """Over a real socket on loopback, in a pytest run of its own (the watch is on the
    socket class for the whole process); the project on its path, for the plugin."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))
    suite.makepyfile(test_reach="""
        import socket
        import threading

        import pytest

        def serve():
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            return listener

        @pytest.fixture(scope="module")
        def undeclared():  # starts a server but does not say so
            listener = serve()
            yield listener
            listener.close()

        def test_listens():
            serve().close()

        def test_listens_in_a_thread_it_starts():
            thread = threading.Thread(target=lambda: serve().close())
            thread.start()
            thread.join()

        def test_through_a_fixture(undeclared):
            pass

        def test_a_refused_connection_reaches_nothing():
            free = socket.socket()
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
            free.close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)

        @pytest.mark.service
        def test_a_service_may(undeclared):
            socket.create_connection(undeclared.getsockname(), timeout=5).close()
    """)
    result = suite.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2, errors=1)
    result.stdout.fnmatch_lines_random([
        "*test_listens is `unit` but listens on ('127.0.0.1', *): mark it `service`*",
        "*test_listens_in_a_thread_it_starts is `unit` but listens on*",
        "*test_through_a_fixture is `unit` but listens on*",
    ])


def test_one_postgresql_for_the_whole_run():
    """Only the session fixture starts the cluster (through infra/scripts/postgres.sh);
    every test that needs PostgreSQL takes a database of its own on it."""
    starters = {path.relative_to(ROOT).as_posix()
                for folder in ("tests", "bench") for path in (ROOT / folder).rglob("*.py")
                if path.name != "test_tiers.py"
                and re.search(r"postgres\.sh|Postgres\.start\(", path.read_text("utf-8"))}
    assert starters == {"tests/services.py", "tests/conftest.py"}
    conftest = (ROOT / "tests" / "conftest.py").read_text("utf-8")
    assert conftest.count("Postgres.start(") == 1
    assert '@pytest.fixture(scope="session")\n@tier("service")\ndef postgres():' in conftest


def test_a_run_leaves_postgresql_running_while_another_run_is_connected(postgres):
    """The session stops the cluster it started only when no one else uses it: a client
    connected to a database this session did not make (another run's) keeps it up."""
    this_run = Postgres(postgres.base_url, started=True)  # made no database of its own
    other_run = create_engine(postgres.new_database())
    with other_run.connect() as conn:
        assert conn.scalar(text("SELECT 1")) == 1
        assert others_connected(this_run)
    other_run.dispose()
