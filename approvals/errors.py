"""Domain errors of the approval workflow, each with a reason in both languages."""

from __future__ import annotations

from sandbox.errors import Conflict, Forbidden, InputError, PolicyRefusal


class Reason:
    """A user-facing reason: a stable code plus Chinese and English text."""

    __slots__ = ("code", "en", "zh")

    def __init__(self, code: str, zh: str, en: str) -> None:
        self.code, self.zh, self.en = code, zh, en

    def text(self, lang: str = "en") -> str:
        return self.zh if lang == "zh" else self.en

    def __repr__(self) -> str:
        return f"Reason({self.code!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reason) and other.code == self.code

    def __hash__(self) -> int:
        return hash(self.code)


class IllegalTransition(PolicyRefusal):
    """The application's state does not allow this action."""

    code = "illegal_transition"


class NotPermitted(Forbidden):
    """This user may not take this action."""

    code = "not_permitted"


class Ineligible(PolicyRefusal):
    """The applicant or application fails eligibility; ``reasons`` lists every failure."""

    code = "ineligible"

    def __init__(self, reasons: list[Reason]) -> None:
        super().__init__("; ".join(r.en for r in reasons),
                         zh="；".join(r.zh for r in reasons))
        self.reasons = reasons


class ConflictOfInterest(PolicyRefusal):
    """An expert may not review this application."""

    code = "conflict_of_interest"


class InvalidDecision(InputError):
    """A score or decision is malformed or incomplete."""

    code = "invalid_decision"


class DuplicateInstitution(Conflict):
    """One of the names given is already the name (or alias) of a registry entry."""

    code = "duplicate_institution"
