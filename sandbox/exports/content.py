"""What a file is, by its bytes, whatever its name says.

The file-type library (``filetype``) names a file from its signature; it does not know the
data formats a sandbox holds (Parquet, Arrow, NumPy, HDF5, pickle, …), so they are added to
it here through its own extension point. Naming is only half of it: a file passes as a
figure, a PDF or text only when it *parses* as one (``images``, ``pdf``, the text rules
below) — a signature alone is three bytes an attacker writes."""

from __future__ import annotations

import codecs
import re

import filetype
from filetype.types.base import Type


class _Signature(Type):
    """A format recognised by fixed bytes at the start (and, for some, the end)."""

    def __init__(self, mime: str, extension: str, head: bytes, tail: bytes = b"",
                 offset: int = 0) -> None:
        super().__init__(mime=mime, extension=extension)
        self._head, self._tail, self._offset = head, tail, offset

    def match(self, buf: bytes) -> bool:
        start = bytes(buf[self._offset:self._offset + len(self._head)])
        return start == self._head and (not self._tail or bytes(buf).endswith(self._tail))


class _Pickle(Type):
    """Python's pickle, protocols 2–5 (a serialised DataFrame is one)."""

    def __init__(self) -> None:
        super().__init__(mime="application/x-python-pickle", extension="pkl")

    def match(self, buf: bytes) -> bool:
        return len(buf) > 2 and buf[0] == 0x80 and 2 <= buf[1] <= 5


DATA_FORMATS = (
    _Signature("application/vnd.apache.parquet", "parquet", b"PAR1"),
    _Signature("application/vnd.apache.arrow.file", "arrow", b"ARROW1"),
    _Signature("application/x-feather", "feather", b"FEA1"),
    _Signature("application/x-numpy", "npy", b"\x93NUMPY"),
    _Signature("application/x-hdf5", "h5", b"\x89HDF\r\n\x1a\n"),
    _Signature("application/avro", "avro", b"Obj\x01"),
    _Signature("application/x-orc", "orc", b"ORC"),
    _Signature("application/x-stata-dta", "dta", b"<stata_dta>"),
    _Signature("application/x-spss-sav", "sav", b"$FL2"),
    _Signature("application/x-spss-sav", "sav", b"$FL3"),
    _Signature("application/x-r-data", "rdata", b"RDX"),
    _Signature("application/x-sas-data", "sas7bdat", bytes.fromhex(
        "000000000000000000000000c2ea8160b31411cfbd92080009c7318c181f1011")),
    _Pickle(),
)
for _format in reversed(DATA_FORMATS):
    filetype.add_type(_format)

# Signatures of what a figure, a PDF or text may legitimately be.
IMAGE_MIMES = {"image/png": "PNG", "image/jpeg": "JPEG"}


def sniff(content: bytes) -> str | None:
    """The MIME type the content's signature names, or None when none matches."""
    if not content:
        return None
    kind = filetype.guess(content)
    return kind.mime if kind else None


def describe(content: bytes) -> str:
    """What the bytes are, in words for a reason ("application/zip data", "text", …).
    Text is text whatever its first bytes spell; signatures name only binary content."""
    if decode_text(content) is not None:
        return "text"
    mime = sniff(content)
    return f"{mime} data" if mime else "unrecognised binary data"


def is_data_format(mime: str | None) -> bool:
    """Archives, databases, data frames, executables: nothing that is a figure or text."""
    return mime is not None and mime not in IMAGE_MIMES and mime != "application/pdf"


# Control characters that text files do not contain (tab, newlines and form feed do).
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def decode_text(content: bytes) -> str | None:
    """``content`` as text (UTF-8, or GB18030 as Chinese Windows tools write it), or None
    when it is binary: undecodable, or holding control characters no text file has."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = codecs.decode(content, encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        if not _BINARY.search(text):
            return text
        return None
    return None
