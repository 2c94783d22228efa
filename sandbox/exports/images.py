"""Figures (PNG, JPEG): a file passes as a figure only when it is one from its first byte
to its end marker. Against a researcher hiding data in a picture:

- nothing may follow the end marker (PNG ``IEND``, JPEG ``EOI``) — a zip appended to a PNG
  still displays as the PNG;
- every PNG chunk is a standard one with a valid CRC, and its pixel data holds no more
  bytes than its pixels need;
- dimensions are a figure's (a huge canvas hides rows in a corner, and is a memory bomb);
- text carried beside the pixels (PNG text chunks, JPEG comments, Exif/XMP) is small and
  readable, and is handed on to the text checks (identifiers, tables, encoded runs);
- finally Pillow must decode the pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from sandbox.exports.content import decode_text, describe
from sandbox.exports.model import Check, Contents, ExportPolicy, Outcome, Text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks of the PNG specification (third edition); anything else is data no viewer shows.
PNG_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA",
                        b"iCCP", b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"bKGD",
                        b"hIST", b"pHYs", b"sPLT", b"eXIf", b"tIME", b"tEXt", b"zTXt",
                        b"iTXt"})
PNG_METADATA = frozenset({b"iCCP", b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"sPLT"})
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type → samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))
MAX_TEXT_CHUNK = 1 << 20


def _fail(reason: str, name: str) -> Check:
    return Check("content", Outcome.FAIL, reason, name)


def check_png(content: bytes, name: str, policy: ExportPolicy) -> Contents:
    found = Contents()
    if not content.startswith(PNG_SIGNATURE):
        found.checks.append(_fail(f"not a PNG image: {describe(content)}", name))
        return found
    pos, header, pixels, metadata = len(PNG_SIGNATURE), None, [], 0
    while True:
        if pos + 12 > len(content):
            found.checks.append(_fail("the PNG ends before its IEND chunk", name))
            return found
        length, kind = struct.unpack(">I4s", content[pos:pos + 8])
        data = content[pos + 8:pos + 8 + length]
        crc = content[pos + 8 + length:pos + 12 + length]
        label = kind.decode("latin-1")
        if len(crc) != 4 or zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
            found.checks.append(_fail(f"the {label!r} chunk at byte {pos} is corrupt", name))
            return found
        pos += 12 + length
        if kind not in PNG_CHUNKS:
            found.checks.append(_fail(f"a non-standard {label!r} chunk of {length:,} bytes: "
                                      "data no viewer shows", name))
        elif kind == b"IHDR" and length == 13:
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            pixels.append(data)
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            text = _png_text(kind, data)
            if text is None:
                found.checks.append(_fail(f"a {label} chunk holds binary data", name))
            else:
                found.texts.append(Text(f"PNG {label} chunk", text))
        elif kind == b"IEND":
            break
        if kind in PNG_METADATA:
            metadata += length
    _trailing(found, content[pos:], "the PNG's end (IEND)", name)
    if header is None:
        found.checks.append(_fail("the PNG has no valid IHDR chunk", name))
        return found
    width, height, depth, colour, _, _, interlaced = header
    if not _dimensions(found, width, height, name, policy):
        return found
    extra = _extra_pixel_bytes(b"".join(pixels), width, height, depth, colour, interlaced)
    if extra:
        found.checks.append(_fail(f"the PNG's pixel data runs on past its {width}×{height} "
                                  "pixels: data no viewer shows", name))
    _metadata(found, metadata, "PNG", name, policy)
    _decode(found, content, "PNG", name)
    if not found.checks:
        found.checks.append(Check("content", Outcome.PASS,
                                  f"a PNG image, {width}×{height}", name))
    return found


def _png_text(kind: bytes, data: bytes) -> str | None:
    """The text of a tEXt/zTXt/iTXt chunk (keyword included), or None if binary."""
    keyword, _, rest = data.partition(b"\0")
    try:
        if kind == b"zTXt":
            rest = _inflate(rest[1:])
        elif kind == b"iTXt":
            compressed, rest = rest[:1] == b"\1", rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, rest = rest.partition(b"\0")
            if compressed:
                rest = _inflate(rest)
            return _text(keyword + b": " + rest, "utf-8")
        return _text(keyword + b": " + rest, "latin-1")
    except (zlib.error, ValueError):
        return None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_CHUNK)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def _text(data: bytes, encoding: str) -> str | None:
    text = data.decode(encoding)
    return text if decode_text(text.encode()) is not None else None


def _extra_pixel_bytes(data: bytes, width: int, height: int, depth: int, colour: int,
                       interlaced: int) -> int:
    """Whether (how many, at least) bytes the compressed pixel data holds beyond what the
    image needs; 0 if none."""
    bits = CHANNELS.get(colour, 4) * depth
    if interlaced:
        passes = [((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy)
                  for x0, y0, dx, dy in ADAM7 if width > x0 and height > y0]
    else:
        passes = [(width, height)]
    need = sum(h * (1 + (w * bits + 7) // 8) for w, h in passes)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, need + 1)
        extra = len(out) - need
        if extra <= 0 and inflater.unconsumed_tail:
            extra = len(inflater.decompress(inflater.unconsumed_tail, 1 << 16))
    except zlib.error:
        return 0  # corrupt data: Pillow's decoding says so
    return max(extra, 0) + len(inflater.unused_data)


# -- JPEG -------------------------------------------------------------------------------

SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                 *range(0xCD, 0xD0)})


def check_jpeg(content: bytes, name: str, policy: ExportPolicy) -> Contents:
    found = Contents()
    if not content.startswith(b"\xff\xd8"):
        found.checks.append(_fail(f"not a JPEG image: {describe(content)}", name))
        return found
    pos, size, metadata, end = 2, None, 0, None
    while pos < len(content):
        if content[pos] != 0xFF:
            found.checks.append(_fail(f"the JPEG is corrupt at byte {pos}", name))
            return found
        while pos < len(content) and content[pos] == 0xFF:
            pos += 1
        if pos >= len(content):
            break
        marker = content[pos]
        pos += 1
        if marker == 0xD9:
            end = pos
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        length = int.from_bytes(content[pos:pos + 2], "big")
        segment = content[pos + 2:pos + length]
        pos += length
        if marker in SOF and len(segment) >= 5:
            height, width = struct.unpack(">HH", segment[1:5])
            size = (width, height)
        elif marker == 0xFE or (0xE1 <= marker <= 0xEF):
            metadata += len(segment)
            text = decode_text(segment.removeprefix(b"http://ns.adobe.com/xap/1.0/\0"))
            if text is not None:
                found.texts.append(Text(f"JPEG segment {marker:#04x}", text))
        elif marker == 0xDA:
            pos = _end_of_scan(content, pos)
    if end is None:
        found.checks.append(_fail("the JPEG ends before its end marker (EOI)", name))
        return found
    _trailing(found, content[end:], "the JPEG's end (EOI)", name)
    if size is None:
        found.checks.append(_fail("the JPEG has no frame header", name))
        return found
    if not _dimensions(found, *size, name, policy):
        return found
    _metadata(found, metadata, "JPEG", name, policy)
    _decode(found, content, "JPEG", name)
    if not found.checks:
        found.checks.append(Check("content", Outcome.PASS,
                                  f"a JPEG image, {size[0]}×{size[1]}", name))
    return found


def _end_of_scan(content: bytes, pos: int) -> int:
    """Where the entropy-coded data that starts at ``pos`` ends (its next marker)."""
    while True:
        pos = content.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(content):
            return len(content)
        following = content[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2  # stuffed byte, restart marker, fill
            continue
        return pos


# -- shared -----------------------------------------------------------------------------

def _trailing(found: Contents, trailing: bytes, where: str, name: str) -> None:
    if trailing:
        found.checks.append(_fail(f"{len(trailing):,} bytes after {where}: "
                                  f"{describe(trailing)}", name))


def _dimensions(found: Contents, width: int, height: int, name: str,
                policy: ExportPolicy) -> bool:
    if width * height > policy.max_pixels or not width or not height:
        found.checks.append(_fail(f"{width}×{height} pixels: no figure is that size (the "
                                  f"limit is {policy.max_pixels:,} pixels)", name))
        return False
    return True


def _metadata(found: Contents, size: int, kind: str, name: str,
              policy: ExportPolicy) -> None:
    if size > policy.max_metadata_fail_bytes:
        found.checks.append(_fail(f"{size:,} bytes of {kind} metadata beside the pixels: "
                                  "data no viewer shows", name))
    elif size > policy.max_metadata_bytes:
        found.checks.append(Check("content", Outcome.REVIEW, f"{size:,} bytes of {kind} "
                                  "metadata beside the pixels (a figure carries a title or "
                                  "a software name)", name))


def _decode(found: Contents, content: bytes, kind: str, name: str) -> None:
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.format != kind:
                raise ValueError(f"Pillow reads it as {image.format}")
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        found.checks.append(_fail(f"not a readable {kind}: {exc}", name))
