"""Every setting of Loupe, read from LOUPE_* environment variables or a `.env` file.

Those the model side reads too are inherited from models/settings.py. README.md documents each
one; `.env.example` lists them with their defaults.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from models.settings import ModelSettings

# Visual-token budgets (one token = 28 x 28 pixels); see README "Image budget" for the reasoning.
CPU_MAX_PIXELS = 256 * 28 * 28  # 256 tokens: prefill dominates a CPU's time to first token
GPU_MAX_PIXELS = 1280 * 28 * 28  # 1280 tokens: Qwen's suggested ceiling, legible 1080p screenshots
DEFAULT_MIN_PIXELS = 4 * 28 * 28  # 4 tokens: Qwen2-VL's own floor

ASYNC_DRIVERS = {
    "sqlite://": "sqlite+aiosqlite://",
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
}


class Settings(ModelSettings):
    adapter: str | None = Field(None, description="Adapter new chats use; `python -m chat promote` overrides.")
    max_pixels: int | None = Field(None, description="Per-image pixel budget; default depends on the device.")
    min_pixels: int = Field(DEFAULT_MIN_PIXELS, description="Small images are upscaled to at least this.")
    context_tokens: int = Field(8192, description="Prompt plus answer budget; oldest turns are dropped first.")
    max_images_per_message: int = Field(4, ge=1)
    max_upload_mb: float = Field(20, gt=0, description="Largest accepted upload per file.")
    max_image_megapixels: float = Field(50, gt=0, description="Larger images are refused before decoding.")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(Path(".data"), description="Database file, stored images and the auth secret.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    admin_password: str | None = Field(None, description="Password for the first user, 'admin'; else generated.")
    trusted_user_header: str | None = Field(None, description="Header naming the user, set by an auth proxy.")
    reasons_down: Annotated[list[str], NoDecode] = Field(
        ["wrong", "incomplete", "misread_image", "wrong_language", "unsafe", "other"],
        description="Reasons offered after a thumbs down, comma-separated codes.",
    )
    reasons_up: Annotated[list[str], NoDecode] = Field(
        ["correct", "helpful", "clear"], description="Reasons offered after a thumbs up, comma-separated codes."
    )

    @field_validator("reasons_down", "reasons_up", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """'wrong, too_long' -> ['wrong', 'too_long'] (codes; chat/texts.py labels the known ones)."""
        if isinstance(value, str):
            return [code.strip() for code in value.split(",") if code.strip()]
        return value

    @model_validator(mode="after")
    def _async_database_url(self) -> Settings:
        """Default to SQLite in the data directory; accept plain URLs and use the async drivers."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'loupe.db').resolve()}"
        for plain, async_driver in ASYNC_DRIVERS.items():
            if url.startswith(plain):
                url = async_driver + url.removeprefix(plain)
        self.database_url = url
        return self

    @property
    def files_dir(self) -> Path:
        """Where uploaded images are kept, by content (chat/storage.py)."""
        return self.data_dir / "files"

    def image_max_pixels(self, device_type: str) -> int:
        if self.max_pixels is not None:
            return self.max_pixels
        return GPU_MAX_PIXELS if device_type == "cuda" else CPU_MAX_PIXELS


@cache
def get_settings() -> Settings:
    return Settings()
