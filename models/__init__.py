"""Loading Qwen-VL models, preparing images, and generating answers. Never imports Chainlit."""
