"""Anomaly rules over the audit trail: signs of misuse a controller should see at once.

Each rule reads audit entries (as stored by ``sandbox.audit``) and yields alerts; the
thresholds are one ``AnomalyPolicy``. Rules are plain functions of the entries, so the
same code checks a live log, a CSV export or a synthetic trace in the tests:

- **off hours**: a project queries, or anyone signs in, outside working hours (local time);
- **query burst**: a project asks more than ``burst_queries`` questions in
  ``burst_minutes``;
- **repeated refusals**: a project's queries are refused ``refusals`` times within
  ``refusal_minutes`` (probing the limits);
- **failed logins**: ``failed_logins`` failed sign-ins for one account or address within
  ``login_minutes``;
- **large export**: an export request larger than ``export_bytes`` or with more than
  ``export_files`` files.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sandbox import audit
from sandbox.errors import InputError

QUERY_ACTIONS = frozenset({"release.charged", "query.previewed"})
REFUSED = "query.refused"
LOGIN_FAILED = "login.failed"
LOGIN_ACTIONS = frozenset({"login.succeeded", LOGIN_FAILED})
EXPORT_SUBMITTED = "export.submitted"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AnomalyPolicy:
    timezone: str = "Asia/Shanghai"
    work_start: time = time(7, 0)
    work_end: time = time(22, 0)
    weekends_off: bool = False
    burst_queries: int = 60
    burst_minutes: int = 5
    refusals: int = 10
    refusal_minutes: int = 30
    failed_logins: int = 5
    login_minutes: int = 15
    export_bytes: int = 20 * 1024 * 1024
    export_files: int = 50

    @classmethod
    def from_mapping(cls, values: dict) -> AnomalyPolicy:
        """The policy from configuration (JSON): times of day as ``"HH:MM"``, numbers as
        numbers, a known time zone; anything else is an ``InputError`` naming the key."""
        known = {f.name: f for f in fields(cls)}
        parsed: dict[str, object] = {}
        for key, value in values.items():
            if key not in known:
                raise InputError(f"anomaly policy: unknown setting {key!r} (known: "
                                 f"{', '.join(known)})")
            default = getattr(cls, key)
            try:
                if isinstance(default, time):
                    parsed[key] = value if isinstance(value, time) else time.fromisoformat(value)
                elif isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise ValueError("true or false")
                    parsed[key] = value
                elif isinstance(default, int):
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise ValueError("a whole number of at least 1")
                    parsed[key] = value
                else:
                    ZoneInfo(value)
                    parsed[key] = value
            except (TypeError, ValueError, ZoneInfoNotFoundError) as exc:
                raise InputError(f"anomaly policy: {key} = {value!r} is not valid "
                                 f"({exc or 'expected like ' + str(default)})") from None
        policy = cls(**parsed)
        if policy.work_start >= policy.work_end:
            raise InputError("anomaly policy: work_start must come before work_end")
        return policy


@dataclass(frozen=True)
class Entry:
    """One audit entry, as the rules need it."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: object) -> Entry:
        """An audit entry (a row, or an object with its fields). A malformed one — which
        verifying the chain names — is read as far as it goes, so that it cannot stop the
        rules: no details, and the start of the epoch for a time that cannot be read."""
        return cls(row.seq, audit.parse_time(row.at) or EPOCH, row.actor, row.action,
                   row.subject,
                   audit.details_of(getattr(row, "details", "{}")) or {})


@dataclass(frozen=True)
class Alert:
    rule: str
    who: str
    first_at: datetime
    last_at: datetime
    count: int
    reason: str
    seqs: tuple[int, ...]


def detect(entries: Iterable[Entry], policy: AnomalyPolicy = AnomalyPolicy()) -> list[Alert]:
    """Every alert the rules raise on ``entries``, in time order."""
    ordered = sorted(entries, key=lambda e: (e.at, e.seq))
    alerts = [*off_hours(ordered, policy), *query_bursts(ordered, policy),
              *repeated_refusals(ordered, policy), *failed_logins(ordered, policy),
              *large_exports(ordered, policy)]
    return sorted(alerts, key=lambda a: (a.first_at, a.rule, a.who))


def off_hours(entries: list[Entry], policy: AnomalyPolicy) -> Iterator[Alert]:
    zone = ZoneInfo(policy.timezone)
    per_day: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.action not in QUERY_ACTIONS | LOGIN_ACTIONS:
            continue
        local = entry.at.astimezone(zone)
        weekend = policy.weekends_off and local.weekday() >= 5
        if weekend or not policy.work_start <= local.time() < policy.work_end:
            per_day[(_who(entry), local.date().isoformat())].append(entry)
    for (who, day), hits in per_day.items():
        yield _alert("off_hours", who, hits,
                     f"{len(hits)} actions on {day} outside {policy.work_start:%H:%M}–"
                     f"{policy.work_end:%H:%M} ({policy.timezone})")


def query_bursts(entries: list[Entry], policy: AnomalyPolicy) -> Iterator[Alert]:
    yield from _windows(
        [e for e in entries if e.action in QUERY_ACTIONS], policy.burst_queries + 1,
        timedelta(minutes=policy.burst_minutes), "query_burst",
        lambda n: f"{n} queries within {policy.burst_minutes} min "
                  f"(more than {policy.burst_queries})")


def repeated_refusals(entries: list[Entry], policy: AnomalyPolicy) -> Iterator[Alert]:
    yield from _windows(
        [e for e in entries if e.action == REFUSED], policy.refusals,
        timedelta(minutes=policy.refusal_minutes), "repeated_refusals",
        lambda n: f"{n} refused queries within {policy.refusal_minutes} min")


def failed_logins(entries: list[Entry], policy: AnomalyPolicy) -> Iterator[Alert]:
    yield from _windows(
        [e for e in entries if e.action == LOGIN_FAILED], policy.failed_logins,
        timedelta(minutes=policy.login_minutes), "failed_logins",
        lambda n: f"{n} failed sign-ins within {policy.login_minutes} min")


def _count(details: dict, name: str) -> int:
    """A count in an entry's details (0 when it is not an integer: a malformed entry)."""
    value = details.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def large_exports(entries: list[Entry], policy: AnomalyPolicy) -> Iterator[Alert]:
    for entry in entries:
        if entry.action != EXPORT_SUBMITTED:
            continue
        size, files = _count(entry.details, "bytes"), _count(entry.details, "files")
        if size > policy.export_bytes or files > policy.export_files:
            yield _alert("large_export", _who(entry), [entry],
                         f"export of {size:,} bytes in {files} files (limits "
                         f"{policy.export_bytes:,} bytes, {policy.export_files} files)")


def _windows(entries: list[Entry], threshold: int, window: timedelta, rule: str,
             reason) -> Iterator[Alert]:
    """One alert per run of at least ``threshold`` entries of one actor in which each
    entry lies within ``window`` of the ``threshold``-th before it."""
    by_who: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_who[_who(entry)].append(entry)
    for who, hits in by_who.items():
        run: list[Entry] = []
        for i, entry in enumerate(hits):
            dense = i + 1 >= threshold and entry.at - hits[i + 1 - threshold].at <= window
            if dense:
                if not run:
                    run = hits[i + 1 - threshold:i]
                run.append(entry)
            elif run:
                yield _alert(rule, who, run, reason(len(run)))
                run = []
        if run:
            yield _alert(rule, who, run, reason(len(run)))


def _who(entry: Entry) -> str:
    """Whom an entry is about: the project's grant for queries, the account (or the address
    for unknown accounts) for sign-ins, the actor otherwise."""
    if entry.action in LOGIN_ACTIONS:
        return entry.subject if entry.subject not in ("", "anonymous") else \
            f"ip:{entry.details.get('ip', '?')}"
    return entry.actor


def _alert(rule: str, who: str, hits: list[Entry], reason: str) -> Alert:
    return Alert(rule, who, hits[0].at, hits[-1].at, len(hits), reason,
                 tuple(e.seq for e in hits))
