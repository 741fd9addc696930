"""Loading Qwen2-VL, preparing images, and generating answers. Never imports Chainlit."""
