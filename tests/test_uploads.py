"""A message's attachments: limits, and a refusal that names every bad file in the user's language."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from chat.documents.reading import Kind
from chat.ui.uploads import ImageLimits, Upload, UploadsRejected, read_attachments
from tests.helpers.budgets import CPU_BUDGET
from tests.helpers.client import png
from tests.helpers.pdfs import text_pdf

LIMITS = ImageLimits(max_files=3, max_file_mb=1, max_megapixels=50, budget=CPU_BUDGET)


def upload(tmp_path: Path, name: str, content: bytes | None = None) -> Upload:
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (1600, 1200), (200, 50, 50)).save(path)
    else:
        path.write_bytes(content)
    return Upload(name, path)


def test_good_images_come_back_in_order_within_budget(tmp_path: Path) -> None:
    images, documents = read_attachments([upload(tmp_path, "a.png"), upload(tmp_path, "b.jpg")], LIMITS, "en")
    assert len(images) == 2 and documents == []
    assert all(image.width * image.height <= CPU_BUDGET.max_pixels for image in images)


def test_files_are_told_apart_by_their_content_not_their_name(tmp_path: Path) -> None:
    files = [
        upload(tmp_path, "scan.pdf", png()),  # an image, named .pdf
        upload(tmp_path, "datasheet.png", text_pdf(["A PDF named .png"])),
        upload(tmp_path, "notes.bin", "측정 메모: 5.5 V\n".encode()),
        upload(tmp_path, "drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>'),  # SVG is read as text
    ]
    images, documents = read_attachments(files, replace(LIMITS, max_files=4), "en")
    assert len(images) == 1
    assert [(document.name, document.kind) for document in documents] == [
        ("datasheet.png", Kind.PDF),
        ("notes.bin", Kind.TEXT),
        ("drawing.svg", Kind.TEXT),
    ]


def test_every_bad_file_is_named_with_its_reason(tmp_path: Path) -> None:
    files = [upload(tmp_path, "fine.png"), upload(tmp_path, "empty.png", b""), upload(tmp_path, "x.dwg", b"\0" * 64)]
    with pytest.raises(UploadsRejected) as rejected:
        read_attachments(files, LIMITS, "en")
    message = str(rejected.value)
    assert "**empty.png**: the file is empty" in message
    assert "**x.dwg**: it is not a file Loupe can read" in message
    assert "fine.png" not in message


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    with pytest.raises(UploadsRejected, match=r"big\.png\*\*: the file is 2\.0 MB; the limit is 1 MB"):
        read_attachments([upload(tmp_path, "big.png", b"\0" * 2 * 1024 * 1024)], LIMITS, "en")


def test_more_files_than_allowed(tmp_path: Path) -> None:
    files = [upload(tmp_path, f"{n}.png") for n in range(4)]
    with pytest.raises(UploadsRejected, match="you attached 4 files; at most 3"):
        read_attachments(files, LIMITS, "en")


def test_refusal_in_korean(tmp_path: Path) -> None:
    with pytest.raises(UploadsRejected, match="빈 파일입니다"):
        read_attachments([upload(tmp_path, "빈.png", b"")], LIMITS, "ko")
