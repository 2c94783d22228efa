"""The one-row-per-patient frame of a cohort definition as an engine-neutral plan: the
order of its steps — the index event, consent, each variable, the types, the ``where`` —
written once here and carried out by an engine that knows how to do each step: Polars
(``sandbox.cohorts.frame``, the reference, at the gateway and over dummy data in a
sandbox) or Spark (``sandbox.cohorts.spark``, for a gateway whose engine is Spark). The
two engines are held equal by tests on random definitions.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from sandbox.cohorts import checks
from sandbox.cohorts.spec import CohortSpec, Events, Variable
from sandbox.queries.spec import Filter

PATIENT = "_patient"
START, END = "_start", "_end"
INDEX_START, INDEX_END = "_index_start", "_index_end"

Frame = TypeVar("Frame")


class Steps(Protocol[Frame]):
    """What a cohort's plan asks of an engine; every step returns the engine's frame."""

    def events(self, selection: Events, table: checks.Table, key: str,
               index: Frame | None) -> Frame:
        """The rows of ``selection``: ``PATIENT``, the period of the table's date
        (``START``, ``END``) and the fields read; joined to ``index`` when the selection's
        window is relative to it."""

    def index(self, events: Frame, which: str) -> Frame:
        """Each patient's first or last event: ``PATIENT``, ``INDEX_START``, ``INDEX_END``."""

    def among(self, frame: Frame, patients: Frame) -> Frame:
        """The rows of ``frame`` whose patient is in ``patients``."""

    def bands(self, frame: Frame, name: str, variable: Variable) -> Frame: ...
    def square(self, frame: Frame, name: str, of: str) -> Frame: ...
    def period(self, frame: Frame, name: str, level: str) -> Frame: ...

    def per_patient(self, frame: Frame, name: str, variable: Variable, selected: Frame,
                    index: Frame) -> Frame:
        """``frame`` with the variable's value for each patient (0 or "no" where an
        ``exists`` or ``count`` found no event)."""

    def survival(self, frame: Frame, name: str, horizon: int, outcome: Frame,
                 followup: Frame, index: Frame) -> Frame: ...

    def typed(self, frame: Frame, fields: list[tuple[str, dict]]) -> Frame:
        """``PATIENT`` and each named column in the type its catalogue entry gives."""

    def where(self, frame: Frame, flt: Filter) -> Frame: ...


def build(spec: CohortSpec, metadata: dict, engine: Steps[Frame],
          consenting: Frame | None = None) -> Frame:
    """The cohort's frame on ``engine``: ``PATIENT`` and one column per variable, typed as
    ``checks.check`` describes them; ``consenting`` — the patients who may be counted —
    None: all (dummy data). Call ``checks.check`` first: this trusts the definition."""
    fields = checks.check(spec, metadata)
    known = checks.tables(metadata)
    key = metadata["patient_key"]

    def events(selection: Events, index: Frame | None = None) -> Frame:
        return engine.events(selection, known[selection.table], key, index)

    index = engine.index(events(spec.index), spec.index.which)
    if consenting is not None:
        index = engine.among(index, consenting)
    frame = index
    for name, variable in spec.variables.items():
        if variable.kind == "bands":
            frame = engine.bands(frame, name, variable)
        elif variable.kind == "square":
            assert variable.of is not None
            frame = engine.square(frame, name, variable.of)
        elif variable.kind == "index_period":
            frame = engine.period(frame, name, variable.level)
        else:
            assert variable.events is not None
            selected = events(variable.events, index if _relative(variable.events) else None)
            if variable.kind == "survival":
                assert variable.followup is not None
                followup = events(variable.followup,
                                  index if _relative(variable.followup) else None)
                frame = engine.survival(frame, name, variable.horizon or 0, selected,
                                        followup, index)
            else:
                frame = engine.per_patient(frame, name, variable, selected, index)
    frame = engine.typed(frame, [(name, fields[name]) for name in spec.columns()])
    for flt in spec.where:
        frame = engine.where(frame, flt)
    return frame


def _relative(events: Events) -> bool:
    return bool(events.window and events.window.after_index)
