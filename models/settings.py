"""The settings the model side reads: which base model, on what device, in what precision, and where
its LoRA adapters live. The app's Settings (chat/settings.py) extends these, so each LOUPE_* setting
is defined once, and `python -m models train` reads LOUPE_MODEL exactly as the app does.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Visual-token budgets per image, in pixels (one visual token covers 28 x 28 pixels; docs/images-and-documents.md,
# "Image budget", gives the reasoning). Defined here, where nothing heavy is imported, for the app and training.
TOKEN_PIXELS = 28 * 28
CPU_MAX_PIXELS = 256 * TOKEN_PIXELS  # 256 tokens: prefill dominates a CPU's time to first token
GPU_MAX_PIXELS = 1280 * TOKEN_PIXELS  # 1280 tokens: Qwen's suggested ceiling, legible 1080p screenshots
DEFAULT_MIN_PIXELS = 4 * TOKEN_PIXELS  # 4 tokens: Qwen2-VL's own floor


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOUPE_", env_file=".env", env_ignore_empty=True, extra="ignore")

    model: str = Field("Qwen/Qwen2-VL-2B-Instruct", description="Hub id, local folder, or 'demo'.")
    adapters_dir: Path = Field(Path("models/adapters"), description="Each folder in it is a LoRA adapter profile.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps.")
    dtype: str = Field(
        "auto", description="auto (CUDA bf16, MPS fp16, CPU bf16 where native, else fp32), float32, bfloat16, float16."
    )
