"""Loupe's API: OpenAI-compatible endpoints under /v1, for programs calling with a user's key (chat/store/keys.py)."""
