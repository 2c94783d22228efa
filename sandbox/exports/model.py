"""The vocabulary of the export checks: the policy, a file, a check's outcome, and what a
file holds once parsed (its texts, tables and the files embedded in it). Plain values, so
that every checker module can speak them without importing another."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath


class Outcome(StrEnum):
    PASS = "pass"
    REVIEW = "review"
    FAIL = "fail"


@dataclass(frozen=True)
class ExportPolicy:
    max_files: int = 50
    max_file_bytes: int = 5 * 1024 * 1024
    max_total_bytes: int = 20 * 1024 * 1024
    allowed_suffixes: frozenset[str] = frozenset({
        ".csv", ".tsv", ".txt", ".md", ".png", ".jpg", ".jpeg", ".svg", ".pdf", ".ipynb",
        ".py", ".r", ".json"})
    max_decimals: int = 6
    max_significant: int = 10
    # A figure larger than this is no figure: a huge canvas hides data in a corner, and
    # decoding it is a memory bomb.
    max_pixels: int = 40_000_000
    # Text an image or PDF carries beside what it shows (PNG text chunks, JPEG comments):
    # a title or a software name is small, a table is not.
    max_metadata_bytes: int = 4096        # more goes to review
    max_metadata_fail_bytes: int = 65536  # more fails
    # Runs of base64 or hex at least this long are flagged and decoded (an Ed25519
    # signature is 88 base64 characters, a SHA-256 digest 64 hex digits: both shorter).
    min_base64_run: int = 120
    min_hex_run: int = 128
    max_pdf_pages: int = 200
    # How deep decoded content is unwrapped (base64 inside a notebook inside …).
    max_depth: int = 3


@dataclass(frozen=True)
class ExportFile:
    name: str
    content: bytes

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()


@dataclass(frozen=True)
class Check:
    check: str
    outcome: Outcome
    reason: str
    file: str | None = None


@dataclass(frozen=True)
class Text:
    """Readable text found in a file, checked for identifiers, tables and encoded runs."""

    origin: str        # where in the file, e.g. "cell 3, output 1" ("" for the file itself)
    text: str
    code: bool = False  # program source: a table guessed from it goes to review, not fail
    parsed: bool = False  # its tables were already read from its structure (a CSV file)


@dataclass(frozen=True)
class Table:
    """A table found in a file, whatever its form."""

    origin: str
    header: list[str]
    rows: list[list[str]]
    labels: int = 0       # leading cells of each row that label it (an index), not data
    certain: bool = True  # parsed from a structure; False when guessed from program text


@dataclass(frozen=True)
class Embedded:
    """Bytes carried inside a file (a notebook's figure, a data: URI, a decoded run)."""

    origin: str
    content: bytes
    claimed: str | None = None  # the type the carrier declares, e.g. "image/png"
    encoded: bool = False       # found as a base64/hex run, not in a declared place


@dataclass
class Contents:
    """What parsing one file found."""

    checks: list[Check] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    embedded: list[Embedded] = field(default_factory=list)

    def add(self, other: Contents) -> None:
        self.checks += other.checks
        self.texts += other.texts
        self.tables += other.tables
        self.embedded += other.embedded
