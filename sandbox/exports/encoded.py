"""Long base64 and hex runs in text: the way to carry a file through a text-only channel.

A run is a stretch of base64 (or hex) alphabet, allowed to continue across the separators
an encoder or a program puts between its pieces (line ends, quotes, commas, ``+``), as
long as each piece is long itself — prose has short words between its spaces. Runs at
least ``ExportPolicy.min_base64_run``/``min_hex_run`` long are decoded, and the checks
then look at what the bytes are (a table, a known file type, text, noise)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox.exports.model import ExportPolicy

PIECE = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
HEX_PIECE = re.compile(r"(?:\\x[0-9a-fA-F]{2}){8,}|(?:[0-9a-fA-F]{2}[ :]?){8,}")
# What may stand between two pieces of one run.
JOINT = re.compile(r"""^[\s"',;|+]*$""")
# data: URIs are declared embeddings (an SVG's raster, a Markdown image): checked as the
# file they declare, not as a run.
DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,\s*"
                      r"([A-Za-z0-9+/=\s]+)")


@dataclass(frozen=True)
class Run:
    kind: str   # "base64" or "hex"
    start: int  # offset in the text
    text: str

    def decode(self) -> bytes | None:
        """The bytes the run encodes, or None when it does not decode."""
        if self.kind == "hex":
            digits = re.sub(r"\\x|[^0-9a-fA-F]", "", self.text)
            return bytes.fromhex(digits[:len(digits) // 2 * 2])
        compact = re.sub(r"[^A-Za-z0-9+/_-]", "", self.text)
        if len(compact) % 4 == 1:  # a stray character: no base64 ends so
            compact = compact[:-1]
        compact += "=" * (-len(compact) % 4)
        if "-" in compact or "_" in compact:  # the URL-safe alphabet
            compact = compact.translate(str.maketrans("-_", "+/"))
        try:
            return base64.b64decode(compact.encode(), validate=True)
        except (binascii.Error, ValueError):
            return None


def runs(text: str, policy: ExportPolicy) -> Iterator[Run]:
    """Every long base64 or hex run in ``text`` (data: URIs excepted: see ``data_uris``)."""
    covered = [(m.start(), m.end()) for m in DATA_URI.finditer(text)]
    hex_runs = list(_joined(HEX_PIECE, text, covered))
    for start, end in hex_runs:
        digits = len(re.sub(r"\\x|[^0-9a-fA-F]", "", text[start:end]))
        if digits >= policy.min_hex_run:
            yield Run("hex", start, text[start:end])
    for start, end in _joined(PIECE, text, covered):
        chunk = re.sub(r"[^A-Za-z0-9+/_=-]", "", text[start:end])
        inside_hex = any(s <= start and end <= e for s, e in hex_runs)
        mixed = (re.search(r"[0-9+/]", chunk) and re.search(r"[a-z]", chunk)
                 and re.search(r"[A-Z]", chunk))
        if len(chunk) >= policy.min_base64_run and mixed and not inside_hex:
            yield Run("base64", start, text[start:end])


def data_uris(text: str) -> Iterator[tuple[str, bytes | None]]:
    """Each ``data:…;base64,`` URI's declared type and bytes (None if they do not
    decode)."""
    for match in DATA_URI.finditer(text):
        compact = re.sub(r"\s", "", match.group(2))
        try:
            yield match.group(1) or "", base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            yield match.group(1) or "", None


def _joined(piece: re.Pattern, text: str, covered: list[tuple[int, int]]
            ) -> Iterator[tuple[int, int]]:
    start = end = None
    for match in piece.finditer(text):
        if any(s <= match.start() < e for s, e in covered):
            continue
        if start is not None and JOINT.match(text[end:match.start()]):
            end = match.end()
            continue
        if start is not None:
            yield start, end
        start, end = match.start(), match.end()
    if start is not None:
        yield start, end
