"""The demo model's image budgets as the app sets them on a CPU and on CUDA: Qwen2-VL's, 28 x 28 pixels a visual
token (models/images.py, ImageBudget)."""

from __future__ import annotations

from models.checkpoint import QWEN2_VL_FILES, load_processor
from models.images import ImageBudget

DEMO_PROCESSOR = load_processor(QWEN2_VL_FILES)
CPU_BUDGET = ImageBudget.of(DEMO_PROCESSOR, "cpu")  # 256 visual tokens: 200,704 pixels
GPU_BUDGET = ImageBudget.of(DEMO_PROCESSOR, "cuda")  # 1280 visual tokens: 1,003,520 pixels
