"""Plain bilingual PDF documents (agreements, reports): lines of Chinese and English text,
wrapped and paginated, in a CJK font every PDF reader has (STSong-Light)."""

from __future__ import annotations

import io

from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

FONT = "STSong-Light"
pdfmetrics.registerFont(UnicodeCIDFont(FONT))


class TextPdf:
    def __init__(self, title: str) -> None:
        self._buffer = io.BytesIO()
        self._pdf = canvas.Canvas(self._buffer, pagesize=A4)
        self._pdf.setTitle(title)
        self._top = A4[1] - 20 * mm
        self._y = self._top

    def line(self, text: str, size: int = 10, gap: float = 6.5) -> None:
        """Write ``text``, wrapped to the page width, starting a new page when full."""
        self._pdf.setFont(FONT, size)
        while text:
            chunk = text[:52] if any(ord(c) > 0x2E80 for c in text[:52]) else text[:95]
            self._pdf.drawString(18 * mm, self._y, chunk)
            text = text[len(chunk):]
            self._y -= gap * mm
            if self._y < 20 * mm:
                self._pdf.showPage()
                self._y = self._top
                self._pdf.setFont(FONT, size)

    def space(self, millimetres: float) -> None:
        self._y -= millimetres * mm

    def bytes(self) -> bytes:
        self._pdf.showPage()
        self._pdf.save()
        return self._buffer.getvalue()
