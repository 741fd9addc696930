"""A chat's history as LangChain messages, turned into a Qwen2-VL prompt that fits the context.

The history is plain LangChain messages: a user turn is one HumanMessage holding its images and
its text together, so trimming (whole messages, oldest first) can never split an image from the
question about it. Token counts come from the backend (models/backend.py: Qwen's real tokenizer
and chat template), with each image counted at the number of visual tokens it will expand to.
An answer enters the history as the model wrote it (its generation record's `completion`), never
as the page shows it. Every text reaches the model as plain text (models/control_tokens.py): a user's
words, a document's or an earlier answer never become the chat template's control tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, trim_messages
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from PIL import Image

from models.backend import Ended, TokenCounter
from models.control_tokens import plain_text
from models.images import ImageBudget


class PromptTooLong(ValueError):
    """The newest user turn alone does not fit the context budget."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(f"the message needs {needed} tokens but only {budget} fit")
        self.needed, self.budget = needed, budget


def user_turn(text: str, images: list[Image.Image], message_id: str | None = None) -> HumanMessage:
    """One user message: images first, then the text, as in Qwen's model card.

    `message_id` is the id of the user's message in the chat (its step), so a turn can be found
    again to regenerate its answer.
    """
    content: list[str | dict[str, Any]] = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": text})
    return HumanMessage(content=content, id=message_id)


def history_from_thread(
    steps: list[dict[str, Any]], images_of: Callable[[str], list[Image.Image]]
) -> list[BaseMessage]:
    """Rebuild the model's history from a stored thread's steps.

    Each answer's generation record names its prompt (the user message) and the earlier answers
    the model was shown (`context`). The conversation goes on from the answer with the longest
    context, the newest one among equals (a regenerated last answer replaces the one before it;
    a regenerated earlier answer is a side branch). Refusals, notices and errors have no
    generation record or did not end well, and were never in the history.
    `images_of(step_id)` returns the images attached to a user message.
    """
    by_id = {step["id"]: step for step in steps}
    kept = (Ended.FINISHED, Ended.STOPPED)
    answers = [
        step
        for step in steps
        if step["type"] == "assistant_message" and (step.get("metadata") or {}).get("ended") in kept
    ]
    if not answers:
        return []
    last = max(enumerate(answers), key=lambda item: (len(generation_of(item[1]).get("context", [])), item[0]))[1]
    history: list[BaseMessage] = []
    for answer_id in [*generation_of(last).get("context", []), last["id"]]:
        answer = by_id[answer_id]
        asked = by_id[generation_of(answer)["prompt_id"]]
        history.append(user_turn(asked["output"], images_of(asked["id"]), asked["id"]))
        history.append(AIMessage(content=generation_of(answer)["completion"], id=answer["id"]))
    return history


def turn_index(history: list[BaseMessage], prompt_id: str) -> int | None:
    """Where the user message `prompt_id` is in `history`; None if the conversation did not go on from it."""
    return next((i for i, turn in enumerate(history) if isinstance(turn, HumanMessage) and turn.id == prompt_id), None)


def generation_of(step: dict[str, Any]) -> dict[str, Any]:
    return (step.get("metadata") or {}).get("generation") or {}


def turn_text(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(block["text"] for block in message.content if block.get("type") == "text")


def turn_images(message: BaseMessage) -> list[Image.Image]:
    if isinstance(message.content, str):
        return []
    return [block["image"] for block in message.content if block.get("type") == "image"]


def to_qwen(message: BaseMessage, **pixel_budget: int) -> dict[str, Any]:
    """A LangChain message in the message format of Qwen-VL's chat template and qwen-vl-utils.

    `pixel_budget` (min_pixels, max_pixels) goes on each image, where qwen-vl-utils reads it. The text is
    plain text: what both backends send the model is built here, so no text can reach it as control tokens.
    """
    role = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}[type(message)]
    content = [{"type": "image", "image": image, **pixel_budget} for image in turn_images(message)]
    content.append({"type": "text", "text": plain_text(turn_text(message))})
    return {"role": role, "content": content}


class PromptBuilder:
    """Builds the prompt for the next answer and keeps it within the token budget."""

    def __init__(self, tokens: TokenCounter, budget: ImageBudget, max_images: int | None = None) -> None:
        self.tokens = tokens
        self.budget = budget  # of each image, in the model's tokens
        self.max_images = max_images  # per prompt: a serving engine refuses more (vLLM's --limit-mm-per-prompt)
        # The template adds a default system prompt before a conversation without one, so a
        # lone message is rendered behind an empty system turn whose tokens are then taken off.
        self._empty_system = {"role": "system", "content": [{"type": "text", "text": ""}]}
        self._empty_system_tokens = self.tokens.count_tokens([self._empty_system])
        self.generation_prompt_tokens = (
            self.tokens.count_tokens([self._empty_system], add_generation_prompt=True) - self._empty_system_tokens
        )

    def count_tokens(self, message: BaseMessage) -> int:
        """Exact prompt tokens of one message, each image counted as its visual tokens."""
        qwen = to_qwen(message)
        if qwen["role"] == "system":
            tokens = self.tokens.count_tokens([qwen])
        else:
            tokens = self.tokens.count_tokens([self._empty_system, qwen]) - self._empty_system_tokens
        for image in turn_images(message):
            # The template writes one <|image_pad|> per image; the processor expands it.
            tokens += self.budget.tokens(image.width, image.height) - 1
        return tokens

    def build(self, system_prompt: str, history: list[BaseMessage], budget: int) -> list[dict[str, Any]]:
        """Qwen-format messages: the system prompt and as many of the newest turns as fit `budget`
        (and, all together, hold at most `max_images` images).

        `history` ends with the user turn to answer. Raises PromptTooLong if even that turn
        and the system prompt do not fit.
        """
        template = ChatPromptTemplate.from_messages([("system", system_prompt), MessagesPlaceholder("history")])
        messages = template.invoke({"history": history}).to_messages()
        available = budget - self.generation_prompt_tokens
        kept = trim_messages(
            messages,
            max_tokens=available,
            token_counter=lambda some: sum(map(self.count_tokens, some)),
            strategy="last",
            include_system=True,
            start_on="human",
        )
        if not kept or kept[-1] is not messages[-1] or not isinstance(kept[0], SystemMessage):
            needed = self.count_tokens(messages[0]) + self.count_tokens(messages[-1])
            raise PromptTooLong(needed, available)
        while self.max_images is not None and sum(len(turn_images(m)) for m in kept) > self.max_images:
            if len(kept) <= 2:
                break  # the turn to answer alone: its images are within the per-message limits
            del kept[1]  # the oldest turn goes, question and answer together
            while len(kept) > 2 and not isinstance(kept[1], HumanMessage):
                del kept[1]
        pixels = {"min_pixels": self.budget.min_pixels, "max_pixels": self.budget.max_pixels}
        return [to_qwen(message, **pixels) for message in kept]
