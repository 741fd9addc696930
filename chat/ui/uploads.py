"""Check a message's attachments and turn them into model-ready images, or say what is wrong.

Chainlit trusts the browser's declared type and enforces the file count only in the browser,
so every file is checked here: count, size, then a full decode (models.images).
A message with any unusable attachment is refused whole, naming each bad file, because an
answer that silently ignored one of the user's images would mislead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from chat.ui.texts import text
from models.images import ImageRejected, fit_to_budget, open_image


@dataclass
class Upload:
    name: str
    path: Path


@dataclass
class ImageLimits:
    max_files: int
    max_file_mb: float
    max_megapixels: float
    min_pixels: int
    max_pixels: int


class UploadsRejected(ValueError):
    """Carries the user-facing explanation, already in the user's language."""


def read_images(uploads: list[Upload], limits: ImageLimits, language: str) -> list[Image.Image]:
    """Decoded, upright, RGB images sized to the visual-token budget, in upload order."""
    if len(uploads) > limits.max_files:
        problem = text("too_many_files", language, count=len(uploads), limit=limits.max_files)
        raise UploadsRejected(text("rejected_files", language, problems=f"- {problem}"))

    images, problems = [], []
    for upload in uploads:
        try:
            images.append(_read_one(upload, limits))
        except ImageRejected as rejected:
            problems.append(f"- **{upload.name}**: {text(rejected.reason, language, **rejected.details)}")
    if problems:
        raise UploadsRejected(text("rejected_files", language, problems="\n".join(problems)))
    return images


def load_fitted_image(path: Path, limits: ImageLimits) -> Image.Image:
    """Decode, check and size an image file for the model."""
    image = open_image(path, limits.max_megapixels, limits.max_pixels)
    return fit_to_budget(image, limits.min_pixels, limits.max_pixels)


def _read_one(upload: Upload, limits: ImageLimits) -> Image.Image:
    size = upload.path.stat().st_size
    if size > limits.max_file_mb * 1024 * 1024:
        raise ImageRejected("file_too_big", size_mb=size / 1024 / 1024, limit_mb=limits.max_file_mb)
    return load_fitted_image(upload.path, limits)
