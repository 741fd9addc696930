"""The system prompts (assistant styles): one text file each in prompts/, named by the file's stem.

Apart from chat/conversation.py so that tools which only need the texts, such as the preference-data
export, do not import the model stack (transformers and torch: seconds and ~1 GB).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPT = "engineering"


@cache
def system_prompts() -> dict[str, str]:
    """Prompt name (file stem) -> text, from prompts/*.txt."""
    return {path.stem: path.read_text(encoding="utf-8").strip() for path in sorted(PROMPTS_DIR.glob("*.txt"))}


def system_prompt(name: str | None) -> str:
    """The text of the style `name`; the default style's when the name is missing or unknown, as in the chat."""
    prompts = system_prompts()
    return prompts.get(name or DEFAULT_PROMPT) or prompts[DEFAULT_PROMPT]
