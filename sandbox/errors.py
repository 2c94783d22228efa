"""Errors of the domain, each carrying a reason a person can read. Adapters map them once:
the CLI to a message and ``exit_code``, HTTP services to ``http_status`` with a JSON body
``{"error": code, "reason": reason}``."""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error a user may see; ``reason`` is shown as is."""

    exit_code = 1
    http_status = 400
    code = "bad_request"

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class InputError(SandboxError):
    """An input file, directory, argument or request is missing, unreadable or malformed."""

    exit_code = 2
    http_status = 422
    code = "invalid_input"


class SpecError(SandboxError):
    """An onboarding spec is invalid or does not fit the raw extract."""

    exit_code = 3
    http_status = 422
    code = "invalid_spec"


class PolicyRefusal(SandboxError):
    """The data or the request would break a privacy rule, so nothing is released."""

    exit_code = 4
    http_status = 403
    code = "refused"


class Unauthenticated(SandboxError):
    """No credentials, or credentials nobody issued."""

    exit_code = 5
    http_status = 401
    code = "unauthenticated"


class Forbidden(PolicyRefusal):
    """Valid credentials that may not do this (suspended, revoked, expired, out of scope)."""

    code = "forbidden"


class BudgetExhausted(PolicyRefusal):
    """The query would spend more privacy budget than remains."""

    http_status = 403
    code = "budget_exhausted"


class RefusedRelease(PolicyRefusal):
    """A charged query whose outcome, decided from noisy values, is a refusal ("fewer than
    5 patients"): that refusal is the release — stored, receipted, and the same for the
    identical query again. The details carry the release id and its receipt."""

    code = "refused_release"


class NotFound(SandboxError):
    """The thing asked for does not exist (or is not the caller's to see)."""

    exit_code = 2
    http_status = 404
    code = "not_found"


class Conflict(SandboxError):
    """The request clashes with the current state (an identical query still in flight)."""

    http_status = 409
    code = "conflict"


class PartitionChanged(Conflict):
    """A federated site's data changed since the federation's overlap check: nothing was
    computed; check the federation again before asking."""

    code = "partition_changed"


class RateLimited(SandboxError):
    """Too many requests for this token in too short a time."""

    http_status = 429
    code = "rate_limited"


class Unavailable(SandboxError):
    """Something the request needs (Docker engine, hub, a build tool) does not answer."""

    exit_code = 6
    http_status = 503
    code = "unavailable"
