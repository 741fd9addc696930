"""Every setting of Loupe, read from LOUPE_* environment variables or a `.env` file.

README.md documents each one; `.env.example` lists them with their defaults.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Visual-token budgets (one token = 28 x 28 pixels); see README "Image budget" for the reasoning.
CPU_MAX_PIXELS = 256 * 28 * 28  # 256 tokens: keeps a 2B model's prefill to seconds on a laptop CPU
GPU_MAX_PIXELS = 1280 * 28 * 28  # 1280 tokens: Qwen's suggested ceiling, legible 1080p screenshots
DEFAULT_MIN_PIXELS = 4 * 28 * 28  # 4 tokens: Qwen2-VL's own floor


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOUPE_", env_file=".env", env_ignore_empty=True, extra="ignore")

    model: str = Field("Qwen/Qwen2-VL-2B-Instruct", description="Hub id, local folder, or 'demo'.")
    adapter: Path | None = Field(None, description="Folder of a LoRA adapter (peft) to apply.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps.")
    dtype: str = Field("auto", description="auto (CUDA bf16, MPS fp16, CPU fp32), float32, bfloat16, float16.")
    max_pixels: int | None = Field(None, description="Per-image pixel budget; default depends on the device.")
    min_pixels: int = Field(DEFAULT_MIN_PIXELS, description="Small images are upscaled to at least this.")
    context_tokens: int = Field(8192, description="Prompt plus answer budget; oldest turns are dropped first.")
    max_images_per_message: int = Field(4, ge=1)
    max_upload_mb: float = Field(20, gt=0, description="Largest accepted upload per file.")
    max_image_megapixels: float = Field(50, gt=0, description="Larger images are refused before decoding.")
    host: str = "127.0.0.1"
    port: int = 8000

    def image_max_pixels(self, device_type: str) -> int:
        if self.max_pixels is not None:
            return self.max_pixels
        return GPU_MAX_PIXELS if device_type == "cuda" else CPU_MAX_PIXELS


@cache
def get_settings() -> Settings:
    return Settings()
