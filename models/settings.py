"""The settings the model side reads: which base model, on what device, in what precision, and where
its LoRA adapters live. The app's Settings (chat/settings.py) extends these, so each LOUPE_* setting
is defined once, and `python -m models train` reads LOUPE_MODEL exactly as the app does.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOUPE_", env_file=".env", env_ignore_empty=True, extra="ignore")

    model: str = Field("Qwen/Qwen2-VL-2B-Instruct", description="Hub id, local folder, or 'demo'.")
    adapters_dir: Path = Field(Path("models/adapters"), description="Each folder in it is a LoRA adapter profile.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps.")
    dtype: str = Field(
        "auto", description="auto (CUDA bf16, MPS fp16, CPU bf16 where native, else fp32), float32, bfloat16, float16."
    )
