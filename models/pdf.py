"""Read PDF documents with PDFium: check them, take each page's text layer, and render pages.

This is what a document worker runs (models/pdf_worker.py), one call at a time, under its memory and
CPU limits; the server reaches it only through the worker pool (models/pdf_pool.py). PDFium is
not thread-safe, and a worker is single-threaded. The module imports nothing heavier than PDFium
and Pillow, so a worker starts in a fraction of a second.

pypdfium2 (PDFium, Apache-2.0/BSD) decodes and renders; PyMuPDF would be AGPL. A file is a PDF by
its content (the `%PDF-` header), never by its name or the type the browser declared. Everything
a user can get wrong is refused with a reason code (the chat puts it into words) before anything
is stored: empty, not a PDF, cut short, damaged, password-protected, no pages, too many pages.
PDFium never runs a document's JavaScript or forms here: that needs a form environment
(`init_forms`), which Loupe never creates. A page is rendered at the scale that fits the model's
pixel budget, whatever size it claims, so a 200 x 200 inch page costs no more memory than a letter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pypdfium2 as pdfium
from PIL import Image

# PDF 1.7 (ISO 32000-1, annex H) lets readers accept the header within the first 1024 bytes, and
# the end-of-file marker within the last 1024; PDFium does the same.
HEADER = b"%PDF-"
END_MARKER = b"%%EOF"
SLACK = 1024
# Why PDFium could not open a file, read off the file itself: PDFium's own error code is left over from
# an earlier failure when it refuses a document with no pages (seen with PDFium 159), so it cannot be trusted.
ENCRYPTED = re.compile(rb"/Encrypt\b")  # the trailer's encryption dictionary: a user password is needed
NO_PAGES = re.compile(rb"/Type\s*/Pages\b[^>]*/Count\s+0\b|/Count\s+0\b[^>]*/Type\s*/Pages\b")


class DocumentRejected(ValueError):
    """The file cannot be read as a document. `reason` is a stable code, `details` its numbers;
    the chat turns both into a sentence in the user's language."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(f"{reason} {details}" if details else reason)
        self.reason, self.details = reason, details


@dataclass(frozen=True)
class PageText:
    number: int  # 1-based, as people cite pages
    text: str  # the text layer; empty for a scanned page
    width: float  # in points (1/72 inch)
    height: float


def is_pdf(head: bytes) -> bool:
    """Whether a file starting with `head` (its first SLACK bytes) is a PDF."""
    return HEADER in head[:SLACK]


def open_pdf(data: bytes, max_pages: int | None = None) -> pdfium.PdfDocument:
    """The document, once it is known to be usable (and at most `max_pages` long); the caller closes it.
    Raises DocumentRejected for a file that cannot be used."""
    if not data:
        raise DocumentRejected("empty")
    if not is_pdf(data):
        raise DocumentRejected("not_a_pdf")
    if END_MARKER not in data[-SLACK:]:
        raise DocumentRejected("pdf_truncated")
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError:
        if ENCRYPTED.search(data):
            raise DocumentRejected("pdf_encrypted") from None
        if NO_PAGES.search(data):
            raise DocumentRejected("pdf_no_pages") from None
        raise DocumentRejected("pdf_damaged") from None
    pages = len(document)
    if pages == 0:
        document.close()
        raise DocumentRejected("pdf_no_pages")
    if max_pages is not None and pages > max_pages:
        document.close()
        raise DocumentRejected("pdf_too_many_pages", pages=pages, limit=max_pages)
    return document


def page_text(document: pdfium.PdfDocument, number: int) -> PageText:
    """Page `number`'s (1-based) text layer and size."""
    page = document[number - 1]
    try:
        width, height = page.get_size()
        text_page = page.get_textpage()
        try:
            text = text_page.get_text_bounded().replace("\r\n", "\n").replace("\r", "\n").strip()
        finally:
            text_page.close()
    finally:
        page.close()
    return PageText(number, text, width, height)


def render_page(document: pdfium.PdfDocument, number: int, max_pixels: int, max_ratio: float) -> Image.Image:
    """Page `number` (1-based) as an RGB image of at most `max_pixels`, cut to at most `max_ratio`
    times as long as wide (or wide as long). models/pdf_pool.py sizes it for the model."""
    page = document[number - 1]
    try:
        width, height = page.get_size()
        # Pixels at scale s are (s * width) x (s * height): the largest s within the budget, never
        # above 4 pixels per point (288 dpi), which is past what any budget asks of a normal page.
        scale = min(math.sqrt(max_pixels / max(width * height, 1.0)), 4.0)
        # A page far longer than wide (a strip chart) is cut to the ratio the vision tower accepts.
        crop = _crop_to_ratio(width, height, max_ratio)
        bitmap = page.render(scale=scale, crop=crop, may_draw_forms=False)
        try:
            return bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()


def _crop_to_ratio(width: float, height: float, max_ratio: float) -> tuple[float, float, float, float]:
    """Points to cut off (left, bottom, right, top) so the page is at most max_ratio long; the top is kept."""
    if height > width * max_ratio * 0.99:
        return (0, height - width * max_ratio * 0.99, 0, 0)
    if width > height * max_ratio * 0.99:
        return (0, 0, width - height * max_ratio * 0.99, 0)
    return (0, 0, 0, 0)
