"""The system prompts (assistant styles): one text file each in prompts/, named by the file's stem.

Apart from chat/conversation.py so that tools which only need the texts, such as the preference-data
export, do not import the model stack (transformers and torch: seconds and ~1 GB).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from langchain_core.prompts import PromptTemplate

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPT = "engineering"
# How document pages go to the model with a question (chat/documents/retrieval.py), and to training (the export).
PAGES_PROMPT = PromptTemplate.from_file(PROMPTS_DIR / "documents" / "pages.txt", encoding="utf-8")
PAGE_BLOCK = PromptTemplate.from_file(PROMPTS_DIR / "documents" / "page.txt", encoding="utf-8")
NO_TEXT_LAYER = "(no text layer: a scanned page, read its image)"


@cache
def system_prompts() -> dict[str, str]:
    """Prompt name (file stem) -> text, from prompts/*.txt."""
    return {path.stem: path.read_text(encoding="utf-8").strip() for path in sorted(PROMPTS_DIR.glob("*.txt"))}


def system_prompt(name: str | None) -> str:
    """The text of the style `name`; the default style's when the name is missing or unknown, as in the chat."""
    prompts = system_prompts()
    return prompts.get(name or DEFAULT_PROMPT) or prompts[DEFAULT_PROMPT]


def pages_prompt(question: str, pages: list[tuple[str, str]]) -> str:
    """The user's question with document pages, each (citation, text layer), before it; the page images
    go before this text in the same order."""
    blocks = "\n\n".join(
        PAGE_BLOCK.format(citation=citation, text=text or NO_TEXT_LAYER).strip() for citation, text in pages
    )
    return PAGES_PROMPT.format(pages=blocks, question=question).strip()  # the files end with a line break
