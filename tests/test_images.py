"""Image checks on real files: every bad file is refused with its reason, good ones come out RGB and upright."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from models.images import (
    CPU_MAX_TOKENS,
    GPU_MAX_TOKENS,
    ImageBudget,
    ImageRejected,
    fit_to_budget,
    image_mime,
    open_image,
)
from tests.helpers.budgets import CPU_BUDGET
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


@pytest.mark.parametrize(("device", "tokens"), [("cpu", CPU_MAX_TOKENS), ("cuda", GPU_MAX_TOKENS)])
@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (4000, 3000), (12000, 4000)])
def test_large_images_never_exceed_the_token_budget(
    family_processor, size: tuple[int, int], device: str, tokens: int
) -> None:
    budget = ImageBudget.of(family_processor, device)
    assert budget.max_pixels == tokens * budget.token_side**2
    assert 0 < budget.tokens(*size) <= tokens


def test_each_family_counts_its_own_token_size(family_processor) -> None:
    """28 x 28 pixels a token on Qwen2-VL and Qwen2.5-VL (14-pixel patches), 32 x 32 on Qwen3-VL (16)."""
    budget = ImageBudget.of(family_processor, "cpu")
    side = {"Qwen3VLProcessor": 32}.get(type(family_processor).__name__, 28)
    assert budget.token_side == side
    assert budget.fitted_size(1000, 1000) == (16 * side, 16 * side)  # 256 tokens, a square of 16 x 16


def test_tiny_images_are_raised_to_the_models_floor(family_processor) -> None:
    """Qwen2-VL's processor raises an image to 4 tokens' worth of pixels, Qwen3-VL's to 65,536 (64 tokens); a lower
    LOUPE_MIN_PIXELS could not go below it, as the processor would raise the image again."""
    floor = {"Qwen3VLProcessor": 64}.get(type(family_processor).__name__, 4)
    assert ImageBudget.of(family_processor, "cpu").tokens(20, 20) == floor
    assert ImageBudget.of(family_processor, "cpu", min_pixels=1).tokens(20, 20) == floor


def test_fitted_image_costs_what_the_processor_charges(family_processor) -> None:
    """Our token count must agree with the model's own image processor, for every size, on every family."""
    budget = ImageBudget.of(family_processor, "cpu")
    for size in [(4000, 3000), (640, 480), (20, 20), (3000, 200)]:
        fitted = fit_to_budget(Image.new("RGB", size, (90, 90, 90)), budget)
        grid = family_processor.image_processor(images=[fitted], return_tensors="pt")["image_grid_thw"][0]
        assert tuple(int(side) for side in grid[1:] * budget.patch) == fitted.size[::-1], "resized again"
        merged_tokens = int(grid.prod()) // budget.merge**2
        assert merged_tokens == budget.tokens(*size) <= CPU_MAX_TOKENS


def test_a_huge_jpeg_is_decoded_reduced_to_what_the_budget_needs(tmp_path: Path) -> None:
    """A JPEG declaring 6000 x 6000 pixels (108 MB decoded) is decoded at 1/8 scale: 750 x 750 still
    covers the 448 x 448 the CPU budget sizes it to."""
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 6000), (200, 30, 30)).save(path, "JPEG")
    reduced = open_image(path, LIMIT_MEGAPIXELS, CPU_BUDGET)
    assert reduced.size == (750, 750)
    assert fit_to_budget(reduced, CPU_BUDGET).size == (448, 448)


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
