"""The quality of an export as a whole: the cap on rows per prompt.

chat/dataset/pairing.py judges one user message at a time; rule 8 (near-duplicate prompts) counts rows
per prompt across conversations. PromptCap keeps that count, and the export and `python -m chat stats`
each feed one in the same order, so they agree.
"""

from __future__ import annotations

from collections import Counter

from chat.dataset.pairing import MAX_ROWS_PER_PROMPT


class PromptCap:
    """Rule 8: admits the first MAX_ROWS_PER_PROMPT rows of each prompt (by its pairing.prompt_key), in order."""

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()

    def admit(self, prompt: str) -> bool:
        self.rows[prompt] += 1
        return self.rows[prompt] <= MAX_ROWS_PER_PROMPT
