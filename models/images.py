"""Decode, check and size user images before they reach the vision tower.

Every image is decoded in full here, so a file that is not really an image, is cut short, or
would blow up memory is refused with a reason (a code the chat puts into words) before any
model work.
The visual-token budget is the model's own (ImageBudget): an image of W x H pixels costs
(W/28) x (H/28) tokens on Qwen2-VL and Qwen2.5-VL, (W/32) x (H/32) on Qwen3-VL, after `smart_resize`, so
bounding pixels bounds tokens.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError
from qwen_vl_utils.vision_process import MAX_RATIO, smart_resize

if TYPE_CHECKING:
    from transformers import ProcessorMixin

# Visual tokens per image by default (docs/images-and-documents.md, "Image budget", gives the reasoning).
CPU_MAX_TOKENS = 256  # prefill dominates a CPU's time to first token
GPU_MAX_TOKENS = 1280  # Qwen's suggested ceiling: legible 1080p screenshots


@dataclass(frozen=True)
class ImageBudget:
    """The pixels an image may have when the model sees it, and how the model counts them.

    A Qwen-VL vision tower cuts an image into `patch` x `patch` squares and merges `merge` x `merge` of them into
    one visual token, so one token covers a square of `token_side` pixels: 28 on Qwen2-VL and Qwen2.5-VL
    (14-pixel patches), 32 on Qwen3-VL (16). Images are sized here, before the model's processor sees them,
    within the processor's own limits, so that it never resizes them again and every count here is exact.
    """

    min_pixels: int
    max_pixels: int
    patch: int
    merge: int

    @classmethod
    def of(
        cls, processor: ProcessorMixin, device_type: str, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> ImageBudget:
        """The budget for `processor`'s model: `max_pixels`, or by default CPU_MAX_TOKENS (GPU_MAX_TOKENS on CUDA)
        tokens; `min_pixels`, or by default the model's own floor (4 tokens on Qwen2-VL, 64 on Qwen3-VL). Both stay
        within the processor's limits, which would otherwise resize the image again."""
        images = processor.image_processor
        side = images.patch_size * images.merge_size
        floor, ceiling = images.size["shortest_edge"], images.size["longest_edge"]
        tokens = GPU_MAX_TOKENS if device_type == "cuda" else CPU_MAX_TOKENS
        return cls(
            min_pixels=min(max(min_pixels or floor, floor), ceiling),
            max_pixels=min(max(max_pixels or tokens * side**2, floor), ceiling),
            patch=images.patch_size,
            merge=images.merge_size,
        )

    @property
    def token_side(self) -> int:
        return self.patch * self.merge

    def fitted_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of this size as the model sees it: whole tokens, within the budget."""
        fitted_height, fitted_width = smart_resize(
            height, width, self.token_side, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return fitted_width, fitted_height

    def tokens(self, width: int, height: int) -> int:
        """Tokens the language model sees for an image of this size."""
        fitted_width, fitted_height = self.fitted_size(width, height)
        return (fitted_width // self.token_side) * (fitted_height // self.token_side)


# Pillow format names we accept; MPO is how Pillow names the JPEGs many phones write.
SUPPORTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF"}


class ImageRejected(ValueError):
    """The file cannot be used as an image. `reason` is a stable code, `details` its numbers;
    the chat turns both into a sentence in the user's language."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(f"{reason} {details}" if details else reason)
        self.reason, self.details = reason, details


def open_image(path: Path, max_megapixels: float, budget: ImageBudget | None = None) -> Image.Image:
    """Decode the image at `path` fully and return it upright, in RGB.

    Raises ImageRejected for empty, unreadable, unsupported, truncated, oversized or
    extremely elongated files. GIFs and multi-page TIFFs use their first frame.
    With `budget` (the one fit_to_budget will size it to), a JPEG is decoded reduced
    (1/2, 1/4 or 1/8, Pillow's draft mode) as far as that still covers the budget: a tiny file
    declaring 7000 x 7000 pixels then costs a few MB to decode instead of hundreds.
    """
    image = _opened(path, max_megapixels)
    with image:
        width, height = image.size
        if width * height > max_megapixels * 1_000_000:
            raise ImageRejected("too_large", megapixels=round(width * height / 1e6, 1), limit=max_megapixels)
        if max(width, height) / min(width, height) > MAX_RATIO:
            raise ImageRejected("elongated", width=width, height=height, limit=MAX_RATIO)
        if budget is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", budget.fitted_size(width, height))
        try:
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, EOFError):
            raise ImageRejected("corrupt") from None
        return to_rgb(upright)


def image_mime(path: Path) -> str:
    """The MIME type of the image at `path`, from its decoded header and a check of its structure,
    never from a name or a declared type; ImageRejected when it is not an image Loupe accepts."""
    image = _opened(path, max_megapixels=math.inf)
    with image:
        try:
            image.verify()  # checks the structure (chunk CRCs for PNG) without decoding pixels
        except (OSError, SyntaxError, ValueError, EOFError):
            raise ImageRejected("corrupt") from None
        return "image/jpeg" if image.format == "MPO" else Image.MIME[image.format]


def _opened(path: Path, max_megapixels: float) -> Image.Image:
    """The image's header read (pixels not yet decoded), if it is of a format we accept."""
    if path.stat().st_size == 0:
        raise ImageRejected("empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then errors, on huge images; our own limit below is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageRejected("bomb", limit=max_megapixels) from None
    except ValueError as error:
        # Pillow refuses compressed text chunks that would inflate past its limit (a zlib bomb).
        reason = "metadata_bomb" if "Decompressed" in str(error) else "not_an_image"
        raise ImageRejected(reason) from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ImageRejected("not_an_image") from None
    if image.format not in SUPPORTED_FORMATS:
        image.close()
        raise ImageRejected("unsupported_format", format=image.format)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (diagrams are drawn for white paper) and drop alpha."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def fit_to_budget(image: Image.Image, budget: ImageBudget) -> Image.Image:
    """Resize to the size the model would use, so the stored image costs what it will cost."""
    size = budget.fitted_size(image.width, image.height)
    if size == image.size:
        return image
    # reducing_gap shrinks in two steps (box filter, then bicubic): 2x faster on photos, same look.
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
