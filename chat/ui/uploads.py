"""Check a message's attachments: images become model-ready images, PDFs and text files documents.

Chainlit trusts the browser's declared type and enforces the file count only in the browser,
so every file is checked here: count, size, what it is by its content (chat/documents/reading.py),
then a full decode of each image (models.images). Documents are read page by page afterwards
(chat/ui/documents.py), unless the library has them already.
A message with any unusable attachment is refused whole, naming each bad file, because an
answer that silently ignored one of the user's files would mislead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from chat.documents.reading import DocumentFile, Kind, file_kind
from chat.ui.texts import text
from models.images import ImageBudget, ImageRejected, fit_to_budget, open_image
from models.pdf import DocumentRejected


@dataclass
class Upload:
    name: str
    path: Path


@dataclass
class ImageLimits:
    max_files: int
    max_file_mb: float
    max_megapixels: float
    budget: ImageBudget  # the model's (models/images.py)


class UploadsRejected(ValueError):
    """Carries the user-facing explanation, already in the user's language."""

    @classmethod
    def naming(cls, problems: list[tuple[str, ImageRejected | DocumentRejected]], language: str) -> UploadsRejected:
        """The refusal of a message, naming each bad file and why."""
        lines = [f"- **{name}**: {text(error.reason, language, **error.details)}" for name, error in problems]
        return cls(text("rejected_files", language, problems="\n".join(lines)))


def read_attachments(
    uploads: list[Upload], limits: ImageLimits, language: str
) -> tuple[list[Image.Image], list[DocumentFile]]:
    """The images, decoded, upright, RGB and sized to the visual-token budget, and the documents, in upload order."""
    if len(uploads) > limits.max_files:
        problem = text("too_many_files", language, count=len(uploads), limit=limits.max_files)
        raise UploadsRejected(text("rejected_files", language, problems=f"- {problem}"))

    images, documents, problems = [], [], []
    for upload in uploads:
        try:
            _check_size(upload, limits)
            if (kind := file_kind(upload.path)) == Kind.IMAGE:
                images.append(load_fitted_image(upload.path, limits))
            else:
                data = upload.path.read_bytes()
                documents.append(DocumentFile(upload.name, kind, data, hashlib.sha256(data).hexdigest()))
        except ImageRejected as rejected:
            problems.append((upload.name, rejected))
    if problems:
        raise UploadsRejected.naming(problems, language)
    return images, documents


def load_fitted_image(path: Path, limits: ImageLimits) -> Image.Image:
    """Decode, check and size an image file for the model."""
    image = open_image(path, limits.max_megapixels, limits.budget)
    return fit_to_budget(image, limits.budget)


def _check_size(upload: Upload, limits: ImageLimits) -> None:
    size = upload.path.stat().st_size
    if size > limits.max_file_mb * 1024 * 1024:
        raise ImageRejected("file_too_big", size_mb=size / 1024 / 1024, limit_mb=limits.max_file_mb)
