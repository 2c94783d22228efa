"""The onboarding spec: one declarative TOML file per dataset saying which raw tables make
it, which columns are direct identifiers, which are quasi-identifiers (with their
generalisation hierarchies), the sensitive attribute, public bounds, and the privacy
parameters. Validated here, before any data is read; checks against the data itself live
in ``onboard``."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sandbox import purposes as purposes_
from sandbox.errors import InputError, SpecError

Grade = Literal["public", "restricted", "identifiable"]
ValueType = Literal["string", "integer", "float", "date", "boolean"]
DATE_LEVELS = ("day", "month", "quarter", "year")
ICD10_LEVELS = ("code", "category", "block", "chapter")
KNOWN_PURPOSES = purposes_.IDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(_Strict):
    """A user-facing text in both languages."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class BandsHierarchy(_Strict):
    """Numbers → bands of the given widths (each dividing the next), then "*"."""

    kind: Literal["bands"]
    widths: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)

    @field_validator("widths")
    @classmethod
    def _nested(cls, widths: list[int]) -> list[int]:
        for small, large in itertools.pairwise(widths):
            if large <= small or large % small:
                raise ValueError("each band width must be a larger multiple of the one before")
        return widths


class DateHierarchy(_Strict):
    """Dates → day, month, quarter or year (coarser each step), then "*"."""

    kind: Literal["date"]
    levels: list[Literal["day", "month", "quarter", "year"]] = Field(min_length=1)

    @field_validator("levels")
    @classmethod
    def _coarser(cls, levels: list[str]) -> list[str]:
        order = [DATE_LEVELS.index(level) for level in levels]
        if order != sorted(set(order)):
            raise ValueError(f"levels must get coarser in the order {', '.join(DATE_LEVELS)}")
        return levels


class PathHierarchy(_Strict):
    """A path such as 省/市/区 → its first N parts, fewer each step, then "*"."""

    kind: Literal["path"]
    depths: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    separator: str = "/"

    @field_validator("depths")
    @classmethod
    def _shorter(cls, depths: list[int]) -> list[int]:
        if depths != sorted(set(depths), reverse=True):
            raise ValueError("depths must strictly decrease")
        return depths


class Icd10Hierarchy(_Strict):
    """ICD-10 code → category → block → chapter, then "*". ``label`` names an output column
    that receives the Chinese name of whatever the code was generalised to."""

    kind: Literal["icd10"]
    levels: list[Literal["code", "category", "block", "chapter"]] = Field(min_length=1)
    label: str | None = None

    @field_validator("levels")
    @classmethod
    def _coarser(cls, levels: list[str]) -> list[str]:
        order = [ICD10_LEVELS.index(level) for level in levels]
        if order != sorted(set(order)):
            raise ValueError(f"levels must get coarser in the order {', '.join(ICD10_LEVELS)}")
        return levels


class GroupingHierarchy(_Strict):
    """Categories → named groups, one mapping per step (unlisted values stay), then "*"."""

    kind: Literal["grouping"]
    groups: list[dict[str, list[str]]] = Field(min_length=1)


class SuppressHierarchy(_Strict):
    """The value itself, then "*"."""

    kind: Literal["suppress"]


Hierarchy = Annotated[
    BandsHierarchy | DateHierarchy | PathHierarchy | Icd10Hierarchy | GroupingHierarchy
    | SuppressHierarchy,
    Field(discriminator="kind"),
]

# Which source types each hierarchy accepts.
HIERARCHY_TYPES: dict[str, tuple[str, ...]] = {
    "bands": ("integer", "float"),
    "date": ("date",),
    "path": ("string",),
    "icd10": ("string",),
    "grouping": ("string",),
    "suppress": ("string", "integer", "boolean"),
}


RESERVED_TABLES = ("records", "consent", "aggregates")


class DatasetInfo(_Strict):
    """Catalog facts about the dataset."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    version: str = Field(min_length=1)
    grade: Grade
    title: Text
    description: Text
    conditions: Text
    unit: Text
    year_column: str | None = None  # a date column: the catalog states the years it spans


class Join(_Strict):
    """A raw table joined one-to-one onto the base table."""

    table: str
    on: str
    where: dict[str, str | int | bool] = Field(default_factory=dict)


class Source(_Strict):
    """The raw base table (one output row per row) and what is joined onto it."""

    table: str
    patient_column: str
    joins: list[Join] = Field(default_factory=list)


class Derive(_Strict):
    """A column computed from raw columns before generalisation."""

    name: str
    op: Literal["age_years", "days_between", "path"]
    args: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _arity(self) -> Derive:
        if self.op in ("age_years", "days_between") and len(self.args) != 2:
            raise ValueError(f"{self.op} takes exactly two date columns")
        return self


class Identifiers(_Strict):
    """Direct identifiers: never published. ``name_columns`` hold patients' (and
    guardians') names, whose values are also searched for in every published column.
    ``keep`` names identifiers an *identifiable* dataset publishes for a special need (an
    address for epidemiological tracing); ID numbers, phones and names are still refused
    by the value scan."""

    columns: list[str] = Field(min_length=1)
    name_columns: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)


class Pseudonym(_Strict):
    """The keyed HMAC-SHA256 pseudonym replacing the patient ID."""

    source: str
    column: str = "pseudonym"


class FieldSpec(_Strict):
    """One published column."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: str | None = None
    role: Literal["quasi_identifier", "sensitive", "attribute"]
    type: ValueType
    description: Text
    hierarchy: Hierarchy | None = None
    bounds: tuple[float, float] | None = None
    categories: list[str] | None = None

    @property
    def source_column(self) -> str:
        return self.source or self.name

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.role in ("quasi_identifier", "sensitive") and self.hierarchy is None:
            raise ValueError(f"{self.role} needs a hierarchy")
        if self.role == "attribute" and self.hierarchy is not None:
            raise ValueError("only quasi-identifiers and the sensitive attribute are generalised")
        if self.hierarchy is not None and self.type not in HIERARCHY_TYPES[self.hierarchy.kind]:
            allowed = ", ".join(HIERARCHY_TYPES[self.hierarchy.kind])
            raise ValueError(f"a {self.hierarchy.kind} hierarchy needs a column of type {allowed}")
        if self.role == "attribute" and self.type in ("integer", "float") and self.bounds is None:
            raise ValueError("numeric attributes need public bounds (used for clamping)")
        if self.role == "attribute" and self.type == "date":
            raise ValueError("dates are quasi-identifiers: declare them with a date hierarchy")
        if self.bounds is not None and (self.type not in ("integer", "float")
                                        or self.bounds[0] >= self.bounds[1]):
            raise ValueError("bounds need a numeric type and lower < upper")
        return self


class Privacy(_Strict):
    """Minimum count and the limits of generalisation."""

    k: int = Field(default=5, ge=5)
    max_suppression: float = Field(default=0.05, ge=0.0, le=0.2)
    contribution_bound: int = Field(ge=1)


class ConsentSpec(_Strict):
    """Where each patient's consent for the seven purposes comes from."""

    table: str
    on: str
    purposes: list[str] = Field(min_length=1)
    consented_by: str | None = None  # who gave consent (the patient, a guardian, …)
    withdrawn_at: str | None = None  # a date: the patient is left out of every purpose

    @field_validator("purposes")
    @classmethod
    def _known(cls, purposes: list[str]) -> list[str]:
        unknown = sorted(set(purposes) - set(KNOWN_PURPOSES))
        if unknown:
            raise ValueError(f"unknown purposes {unknown}; known: {', '.join(KNOWN_PURPOSES)}")
        return purposes


class EventTable(_Strict):
    """Another restricted table of the dataset: events of the same patients (every
    diagnosis, lab result, prescription), one row per event, under the same pseudonym. It
    has its own base table, joins, derived columns and fields, and goes through the same
    identifier checks and minimum count as the records table."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: Text
    source: Source
    derive: list[Derive] = Field(default_factory=list)
    fields: list[FieldSpec] = Field(min_length=1)
    contribution_bound: int | None = Field(default=None, ge=1)  # rows per patient


class Spec(_Strict):
    """A whole onboarding spec."""

    dataset: DatasetInfo
    source: Source
    identifiers: Identifiers
    pseudonym: Pseudonym
    derive: list[Derive] = Field(default_factory=list)
    fields: list[FieldSpec] = Field(min_length=1)
    privacy: Privacy
    consent: ConsentSpec
    events: list[EventTable] = Field(default_factory=list)

    @model_validator(mode="after")
    def _coherent(self) -> Spec:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"fields declared twice: {duplicates}")
        kept = set(self.identifiers.keep)
        if kept and self.dataset.grade != "identifiable":
            raise ValueError("identifiers.keep is only allowed in an identifiable dataset")
        if not kept <= set(self.identifiers.columns):
            raise ValueError(f"identifiers.keep names columns that are not identifiers: "
                             f"{sorted(kept - set(self.identifiers.columns))}")
        leaked = sorted({f.source_column for f in self.fields}
                        & (set(self.identifiers.columns) - kept))
        if leaked:
            raise ValueError(f"fields publish direct identifiers {leaked}")
        if self.pseudonym.column in names:
            raise ValueError(f"field {self.pseudonym.column!r} clashes with the pseudonym column")
        if not self.quasi_identifiers:
            raise ValueError("declare at least one quasi_identifier")
        if len([f for f in self.fields if f.role == "sensitive"]) > 1:
            raise ValueError("declare at most one sensitive attribute")
        tables = [e.name for e in self.events]
        taken = sorted({t for t in tables if tables.count(t) > 1 or t in RESERVED_TABLES})
        if taken:
            raise ValueError(f"event tables named twice or by a reserved name: {taken}")
        if self.events and self.dataset.grade == "public":
            raise ValueError("a public dataset publishes aggregates of one table: no events")
        for event in self.events:
            self.event_spec(event)
        return self

    def event_spec(self, event: EventTable) -> Spec:
        """The spec one event table is onboarded by: this one's dataset, identifiers,
        pseudonym, privacy and consent, with the table's own source, derivations and
        fields (every rule of a spec checked again)."""
        document = self.model_dump(exclude={"events"})
        document["dataset"]["year_column"] = None  # the records table states the years
        document.update(source=event.source.model_dump(),
                        derive=[d.model_dump() for d in event.derive],
                        fields=[f.model_dump() for f in event.fields])
        if event.contribution_bound is not None:
            document["privacy"]["contribution_bound"] = event.contribution_bound
        try:
            return Spec.model_validate(document)
        except ValidationError as exc:
            problems = "; ".join(e["msg"].removeprefix("Value error, ")
                                 for e in exc.errors(include_url=False))
            raise ValueError(f"event table {event.name}: {problems}") from None

    @property
    def quasi_identifiers(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.role == "quasi_identifier"]

    @property
    def sensitive(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.role == "sensitive"), None)


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file; every problem becomes a SpecError naming where."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"spec file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read spec file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec {path.name} is not valid TOML: {exc}") from None
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"spec {path.name} is invalid:\n" + _describe(exc, raw)) from None


def _describe(exc: ValidationError, raw: dict) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        where = _where(error["loc"], raw)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "literal_error":
            message = f"{error['input']!r} is not allowed; {message.lower()}"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def _where(loc: tuple, raw: dict) -> str:
    """A readable location: fields are named by their ``name`` rather than list index."""
    parts: list[str] = []
    node: object = raw
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            label = item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{label}]" if label else f"[{key}]")
            node = item
        elif isinstance(key, str) and isinstance(node, dict) and key in node:
            parts.append(key)
            node = node[key]
        elif isinstance(key, str) and not key[0].isupper():
            parts.append(key)
    return ".".join(parts).replace(".[", "[") or "spec"
