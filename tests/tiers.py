"""Test tiers (a pytest plugin, loaded by tests/conftest.py): every test is exactly one of

- ``unit``: in this process — no served process, no PostgreSQL, no server reached over
  the network (the real CLI may still run as a short-lived subprocess, as a user runs it);
- ``service``: starts real processes or servers and talks to them over HTTP or SQL —
  gateway, portal, sites, key service, SMTP, PostgreSQL;
- ``browser``: drives Chromium through Playwright;
- ``docker``: needs the Docker engine (the sealed sandboxes).

The tier is inferred, so that a new test needs no marker in the common cases; the rule:

1. the directory: ``tests/hub/`` is ``docker``, ``tests/browser/`` is ``browser``,
   ``tests/attacks/`` is ``service`` (attacks are played over the real process boundary);
2. the fixtures the test uses, however indirectly: a fixture that starts something says so
   with ``@tier("service")`` (or ``docker``/``browser``) under its ``@pytest.fixture``;
3. the parameters: a test parametrized with ``"postgresql"`` (the database backends of the
   portal, gateway and audit fixtures) runs against PostgreSQL, so it is ``service``;
4. otherwise ``unit``.

The test's tier is the heaviest of these (unit < service < browser < docker). An explicit
marker is needed only where none of this can tell (a test that starts a service in its own
body or through a dynamically requested fixture); it may not name a lighter tier than the
rule infers, and a test takes at most one. A ``unit`` test is held to its tier while it
runs: starting PostgreSQL, listening on an Internet socket or reaching a server on one
fails it, naming the tier it needs.

PYTEST_DONT_REWRITE: the conftests import ``tier`` before pytest loads this module as a
plugin; it has no assertion to rewrite.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FunctionType
from typing import TypeVar

import pytest

# lightest first; registered as markers here (``pytest --markers`` lists them)
DESCRIPTIONS = {
    "unit": "in this process: no served process, no PostgreSQL, no network",
    "service": "starts real processes or servers (gateway, portal, sites, key service, "
               "SMTP, PostgreSQL)",
    "browser": "drives Chromium through Playwright",
    "docker": "needs the Docker engine (the sealed sandboxes)",
}
TIERS = tuple(DESCRIPTIONS)
DIRECTORIES = {"hub": "docker", "browser": "browser", "attacks": "service"}  # tests/<dir>/
SERVICE_PARAMETERS = frozenset({"postgresql"})
INTERNET = (socket.AF_INET, socket.AF_INET6)

Fixture = TypeVar("Fixture", bound=Callable)


def tier(name: str) -> Callable[[Fixture], Fixture]:
    """Mark a fixture as starting what ``name`` needs: every test using it, directly or
    through other fixtures, is at least that tier. Goes under ``@pytest.fixture``."""
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; one of {', '.join(TIERS)}")

    def mark(function: Fixture) -> Fixture:
        if not isinstance(function, FunctionType):
            raise TypeError("@tier goes under @pytest.fixture, on the function itself")
        function.tier = name
        return function

    return mark


def _heaviest(names: list[str]) -> str:
    return max(names, key=TIERS.index, default="unit")


def inferred(item: pytest.Item, tests_dir: Path) -> str:
    """The tier the rule gives ``item`` (explicit markers aside)."""
    found = []
    try:
        parts = item.path.relative_to(tests_dir).parts
    except ValueError:
        parts = ()
    if len(parts) > 1 and parts[0] in DIRECTORIES:
        found.append(DIRECTORIES[parts[0]])
    # pytest's own record of every fixture the test uses, however indirectly (doctests and
    # other non-function items have none)
    info = getattr(item, "_fixtureinfo", None)
    for definitions in (info.name2fixturedefs.values() if info else ()):
        # the definition in effect is the last (nearest) one
        found.append(getattr(definitions[-1].func, "tier", "unit"))
    callspec = getattr(item, "callspec", None)
    if callspec and SERVICE_PARAMETERS & {v for v in callspec.params.values()
                                          if isinstance(v, str)}:
        found.append("service")
    return _heaviest(found)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in DESCRIPTIONS.items():
        config.addinivalue_line("markers", f"{name}: test tier: {description} "
                                "(tests/tiers.py)")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = config.rootpath / "tests"
    wrong = []
    for item in items:
        explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
        rule = inferred(item, tests_dir)
        if len(explicit) > 1:
            wrong.append(f"{item.nodeid}: marked {' and '.join(sorted(explicit))}; "
                         "a test has one tier")
        elif explicit and TIERS.index(rule) > TIERS.index(next(iter(explicit))):
            wrong.append(f"{item.nodeid}: marked {next(iter(explicit))} but needs {rule} "
                         "(by its directory, fixtures or parameters)")
        elif not explicit:
            item.add_marker(rule)
    if wrong:
        raise pytest.UsageError("test tiers:\n  " + "\n  ".join(wrong))


def tier_of(item: pytest.Item) -> str:
    return next(m.name for m in item.iter_markers() if m.name in TIERS)


@contextmanager
def watched(seen: list[str]) -> Iterator[None]:
    """While inside, note in ``seen`` each time this thread, or a thread it starts, listens
    on an Internet socket or reaches something that answers on one, or starts PostgreSQL
    or takes a database on it. A connection refused is not noted: nothing was served (an
    in-process portal notifying a mail server that is down stays a unit test). Only noted,
    never refused: what was started runs and is stopped as usual."""
    from tests.services import Postgres

    background = {t.ident for t in threading.enumerate()} - {threading.get_ident()}
    sockets = {name: getattr(socket.socket, name) for name in ("listen", "connect",
                                                                "connect_ex")}
    start, new_database = Postgres.__dict__["start"], Postgres.new_database

    def noting(name: str, original: Callable) -> Callable:
        def call(sock: socket.socket, *args: object) -> object:
            if sock.family not in INTERNET or threading.get_ident() in background:
                return original(sock, *args)
            if name == "listen":
                seen.append(f"listens on {sock.getsockname()}")
                return original(sock, *args)
            try:
                result = original(sock, *args)
            except BlockingIOError:  # under way (non-blocking): counts as reached
                seen.append(f"connects to {args[0]}")
                raise
            if result in (None, 0):
                seen.append(f"connects to {args[0]}")
            return result

        return call

    def start_noted(cls: type[Postgres]) -> Postgres:
        seen.append("starts PostgreSQL")
        return start.__func__(cls)

    def new_database_noted(server: Postgres) -> str:
        seen.append("takes a PostgreSQL database")
        return new_database(server)

    try:
        for name, original in sockets.items():
            setattr(socket.socket, name, noting(name, original))
        Postgres.start = classmethod(start_noted)
        Postgres.new_database = new_database_noted
        yield
    finally:
        for name, original in sockets.items():
            setattr(socket.socket, name, original)
        Postgres.start, Postgres.new_database = start, new_database


def _held(item: pytest.Item) -> Iterator[None]:
    """A unit test's phase, failed if it did what only a heavier tier may."""
    if tier_of(item) != "unit":
        return (yield)
    seen: list[str] = []
    try:
        with watched(seen):
            return (yield)
    finally:
        if seen:
            pytest.fail(f"{item.nodeid} is `unit` but {seen[0]}: mark it `service` "
                        "(see tests/tiers.py)", pytrace=False)


# Set-up and the test itself; not teardown, where the session may stop what an earlier
# service test started (the last test to run need not be a service test).
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _held(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _held(item))
