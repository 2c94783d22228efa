"""A dataset's public metadata (``metadata.json``, written at onboarding): one model, one
loader, used by the gateway, the sites, the portal and the CLI. A document that is not
well formed is refused where it is read, with the reason — not met later as a KeyError in
the middle of a query."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox.errors import InputError

FILE = "metadata.json"


class FieldMeta(BaseModel):
    """One column: its type and role, and the public categories or bounds of its values."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    type: Literal["string", "integer", "float", "boolean", "date"]
    role: Literal["patient_key", "quasi_identifier", "sensitive", "attribute", "label",
                  "consent", "count"]
    categories: list[str] | None = None
    bounds: tuple[float, float] | None = None


class TableMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    fields: list[FieldMeta]


class SampleSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    patients: int = Field(ge=0)
    records: int = Field(ge=0)


class PurposeMeta(BaseModel):
    """A purpose the dataset's consent records: its id (a consent column) and titles."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)


class DatasetMetadata(BaseModel):
    """The public description of one dataset version (restricted, public aggregate, or a
    federation's shared metadata)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    metadata_version: int = 1
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(min_length=1)
    grade: Literal["public", "restricted", "identifiable"]
    title: dict[str, str]
    description: dict[str, str] = Field(default_factory=dict)
    sample_size: SampleSize
    years: list[int] = Field(default_factory=list)
    patient_key: str | None = None
    contribution_bound: int | None = Field(None, ge=1)
    tables: dict[str, TableMeta] = Field(min_length=1)
    purposes: list[PurposeMeta] = Field(default_factory=list)
    spec_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    federated: bool = False

    @model_validator(mode="after")
    def _served(self) -> DatasetMetadata:
        if self.grade != "public" and (self.patient_key is None
                                       or self.contribution_bound is None):
            raise ValueError("patient-level metadata names its patient key and "
                             "contribution bound")
        if self.grade != "public":  # what every view and plan reads the rows by
            if "records" not in self.tables:
                raise ValueError("patient-level metadata describes its records table")
            if self.patient_key not in {f.name for f in self.tables["records"].fields}:
                raise ValueError(f"the patient key {self.patient_key!r} is no field of "
                                 "the records table")
        return self

    def document(self) -> dict:
        """The metadata as the document it was read from (what the catalog shows)."""
        return self.model_dump(mode="json", exclude_unset=True)


def parse(document: object, where: str) -> DatasetMetadata:
    """``document`` as metadata; InputError naming ``where`` and the first problem."""
    try:
        return DatasetMetadata.model_validate(document)
    except ValidationError as exc:
        problem = exc.errors()[0]
        at = ".".join(str(p) for p in problem["loc"]) or "document"
        raise InputError(f"{where}: malformed metadata ({at}: {problem['msg']})") from None


def read(path: Path) -> DatasetMetadata:
    """The metadata document at ``path``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: no readable metadata ({exc})") from None
    return parse(document, str(path))


def load(directory: Path) -> DatasetMetadata:
    """The metadata of the onboarded dataset in ``directory``."""
    if not (Path(directory) / FILE).is_file():
        raise InputError(f"{directory} is not an onboarded dataset (no {FILE})")
    return read(Path(directory) / FILE)
