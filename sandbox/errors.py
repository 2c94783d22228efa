"""Errors of the domain, each carrying a reason a person can read. Adapters map them once:
the CLI to a message and an exit code, HTTP services to a 4xx JSON body."""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error a user may see; ``reason`` is shown as is."""

    exit_code = 1

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InputError(SandboxError):
    """An input file, directory or argument is missing, unreadable or malformed."""

    exit_code = 2


class SpecError(SandboxError):
    """An onboarding spec is invalid or does not fit the raw extract."""

    exit_code = 3


class PolicyRefusal(SandboxError):
    """The data would break a de-identification rule, so it is not published."""

    exit_code = 4
