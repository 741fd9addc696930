"""Image checks on real files: every bad file is refused with its reason, good ones come out RGB and upright."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from models.images import (
    ImageRejected,
    fit_to_budget,
    image_mime,
    open_image,
    visual_tokens,
)
from models.settings import CPU_MAX_PIXELS, DEFAULT_MIN_PIXELS, GPU_MAX_PIXELS
from tests.helpers.client import png_header_only

LIMIT_MEGAPIXELS = 50


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


PHOTO = Image.radial_gradient("L").convert("RGB").resize((320, 240))
GOOD_PNG = encoded(PHOTO, "PNG")
GOOD_JPEG = encoded(PHOTO, "JPEG")


def text_bomb_png() -> bytes:
    """A small PNG whose compressed text chunk inflates to 20 MB: a zlib bomb in its metadata."""
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("comment", "A" * 20_000_000, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=metadata)
    return buffer.getvalue()


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty.png": (b"", "empty"),
    "notes.png": (b"These are my notes, not a picture.\n" * 20, "not_an_image"),
    "report.jpg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n", "not_an_image"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "not_an_image"),
    "cut.png": (GOOD_PNG[: len(GOOD_PNG) // 2], "corrupt"),
    "cut.jpg": (GOOD_JPEG[: len(GOOD_JPEG) // 2], "corrupt"),
    "garbled.png": (GOOD_PNG[:100] + bytes(len(GOOD_PNG) - 100), "corrupt"),
    "bomb.png": (png_header_only(30000, 30000), "bomb"),
    "huge.png": (png_header_only(10000, 8000), "too_large"),
    "strip.png": (encoded(Image.new("RGB", (3000, 10)), "PNG"), "elongated"),
    "image.ppm": (encoded(PHOTO, "PPM"), "unsupported_format"),
    "icon.ico": (encoded(PHOTO, "ICO"), "unsupported_format"),
    "zlib-bomb.png": (text_bomb_png(), "metadata_bomb"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_is_refused_with_its_reason(tmp_path: Path, name: str) -> None:
    content, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageRejected) as rejected:
        open_image(path, LIMIT_MEGAPIXELS)
    assert rejected.value.reason == reason


@pytest.mark.parametrize(
    ("format", "options"),
    [("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("BMP", {}), ("GIF", {}), ("TIFF", {"compression": "tiff_lzw"})],
)
def test_supported_formats_decode_to_rgb(tmp_path: Path, format: str, options: dict) -> None:
    path = tmp_path / f"picture.{format.lower()}"
    path.write_bytes(encoded(PHOTO, format, **options))
    image = open_image(path, LIMIT_MEGAPIXELS)
    assert (image.mode, image.size) == ("RGB", PHOTO.size)


def test_animated_gif_uses_its_first_frame(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    path = tmp_path / "blink.gif"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    assert open_image(path, LIMIT_MEGAPIXELS).getpixel((32, 32)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Phones store portrait photos landscape with an EXIF 'rotate 90' tag."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (400, 300), (0, 128, 0)).save(path, exif=exif)
    assert open_image(path, LIMIT_MEGAPIXELS).size == (300, 400)


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "diagram.png"
    Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(path)
    assert open_image(path, LIMIT_MEGAPIXELS).getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize("max_pixels", [CPU_MAX_PIXELS, GPU_MAX_PIXELS])
@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (4000, 3000), (12000, 4000)])
def test_large_images_never_exceed_the_token_budget(size: tuple[int, int], max_pixels: int) -> None:
    tokens = visual_tokens(*size, DEFAULT_MIN_PIXELS, max_pixels)
    assert 0 < tokens <= max_pixels // (28 * 28)


def test_tiny_images_are_raised_to_the_minimum() -> None:
    assert visual_tokens(20, 20, DEFAULT_MIN_PIXELS, CPU_MAX_PIXELS) == DEFAULT_MIN_PIXELS // (28 * 28)


def test_fitted_image_costs_what_the_processor_charges(processor) -> None:
    """Our token count must agree with Qwen's image processor on the same 4000x3000 photo."""
    photo = Image.new("RGB", (4000, 3000), (90, 90, 90))
    fitted = fit_to_budget(photo, DEFAULT_MIN_PIXELS, CPU_MAX_PIXELS)
    grid = processor.image_processor(images=[fitted], return_tensors="pt")["image_grid_thw"][0]
    merged_tokens = int(grid.prod()) // 4  # 2 x 2 patches merge into one token
    assert merged_tokens == visual_tokens(4000, 3000, DEFAULT_MIN_PIXELS, CPU_MAX_PIXELS) <= 256


def test_a_huge_jpeg_is_decoded_reduced_to_what_the_budget_needs(tmp_path: Path) -> None:
    """A JPEG declaring 6000 x 6000 pixels (108 MB decoded) is decoded at 1/8 scale: 750 x 750 still
    covers the 448 x 448 the CPU budget sizes it to."""
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 6000), (200, 30, 30)).save(path, "JPEG")
    reduced = open_image(path, LIMIT_MEGAPIXELS, CPU_MAX_PIXELS)
    assert reduced.size == (750, 750)
    assert fit_to_budget(reduced, DEFAULT_MIN_PIXELS, CPU_MAX_PIXELS).size == (448, 448)


def test_a_files_type_comes_from_its_decoded_bytes(tmp_path: Path) -> None:
    page = b"<html><script>alert(1)</script></html>"
    for name, content, expected in (("page.png", page, None), ("polyglot.png", GOOD_PNG + page, "image/png")):
        path = tmp_path / name
        path.write_bytes(content)
        if expected is None:
            with pytest.raises(ImageRejected):
                image_mime(path)
        else:
            assert image_mime(path) == expected
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(GOOD_JPEG)
    assert image_mime(jpeg) == "image/jpeg"
