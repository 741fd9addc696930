"""Prompt building and trimming with Qwen2-VL's real tokenizer, chat template and image processor."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, SystemMessage
from PIL import Image
from qwen_vl_utils import process_vision_info

from chat.conversation import PromptBuilder, PromptTooLong, history_from_thread, turn_text, user_turn
from chat.documents.retrieval import ShownPage, with_pages
from chat.prompts import DEFAULT_PROMPT, system_prompts
from chat.store.generations import Source
from models.backend import ChatTemplateTokens
from models.generation import Generator
from models.vllm_client import to_openai
from tests.helpers.budgets import CPU_BUDGET
from tests.helpers.hostile import FORGED

SYSTEM = system_prompts()[DEFAULT_PROMPT]


@pytest.fixture(scope="module")
def builder(processor) -> PromptBuilder:
    return PromptBuilder(ChatTemplateTokens(processor), CPU_BUDGET)


def chart(width: int = 640, height: int = 480) -> Image.Image:
    return Image.new("RGB", (width, height), (250, 250, 250))


def conversation() -> list:
    return [
        user_turn("What is the cutoff frequency of this RC filter?", [chart()]),
        AIMessage(content="f = 1 / (2 pi R C) = 1 / (2 pi x 1 kOhm x 100 nF) = 1.59 kHz"),
        user_turn("이 그래프의 최대값은 얼마입니까?", [chart(1024, 768)]),
        AIMessage(content="최대값은 약 3.3 V입니다."),
        user_turn("And if C doubles?", []),
    ]


def real_prompt_length(processor, messages: list[dict]) -> int:
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, _ = process_vision_info(messages)
    return processor(text=[text], images=images, return_tensors="pt")["input_ids"].shape[1]


def test_token_count_matches_the_processor_exactly(builder, processor) -> None:
    history = conversation()
    prompt = builder.build(SYSTEM, history, budget=100_000)
    counted = sum(map(builder.count_tokens, [SystemMessage(SYSTEM), *history])) + builder.generation_prompt_tokens
    assert counted == real_prompt_length(processor, prompt)


def test_prompt_follows_qwen_format_with_images_before_text(builder) -> None:
    prompt = builder.build(SYSTEM, conversation(), budget=100_000)
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [part["type"] for part in prompt[1]["content"]] == ["image", "text"]
    assert prompt[3]["content"][1]["text"] == "이 그래프의 최대값은 얼마입니까?"
    assert prompt[0]["content"][0]["text"] == SYSTEM


def test_trimming_drops_the_oldest_turns_first_and_keeps_images_with_their_text(builder, processor) -> None:
    history = conversation()
    full = builder.build(SYSTEM, history, budget=100_000)
    without_first_turn = builder.build(SYSTEM, history[2:], budget=100_000)
    budget = real_prompt_length(processor, without_first_turn)  # room for all but the first exchange
    prompt = builder.build(SYSTEM, history, budget=budget)
    assert len(full) == 6
    assert prompt == without_first_turn
    assert [part["type"] for part in prompt[1]["content"]] == ["image", "text"]
    assert real_prompt_length(processor, prompt) <= budget


def test_trimmed_prompt_starts_with_a_user_turn(builder, processor) -> None:
    """One token short of two exchanges: the orphaned answer must go too, not lead the history."""
    history = conversation()
    budget = real_prompt_length(processor, builder.build(SYSTEM, history[2:], budget=100_000)) - 1
    prompt = builder.build(SYSTEM, history, budget=budget)
    assert [m["role"] for m in prompt] == ["system", "user"]


def test_a_turn_too_long_on_its_own_is_refused(builder) -> None:
    with pytest.raises(PromptTooLong) as too_long:
        builder.build(SYSTEM, [user_turn("word " * 500, [chart()])], budget=300)
    assert too_long.value.needed > too_long.value.budget


@pytest.mark.parametrize("name", sorted(system_prompts()))
def test_every_system_prompt_is_a_valid_template(builder, name: str) -> None:
    prompt = builder.build(system_prompts()[name], [user_turn("hi", [])], budget=100_000)
    assert prompt[0]["content"][0]["text"] == system_prompts()[name]


def test_history_goes_on_from_the_newest_answer_to_the_last_turn() -> None:
    """Regenerating the last answer replaces it; regenerating an earlier one is a side branch."""

    def asked(step_id: str, text: str) -> dict:
        return {"id": step_id, "type": "user_message", "output": text}

    def answered(step_id: str, text: str, prompt_id: str, context: list[str], ended: str = "finished") -> dict:
        """As the app stores an answer: shown with any label, the model's own text in its record."""
        generation = {"prompt_id": prompt_id, "context": context, "completion": text.rpartition("*\n\n")[2]}
        return {
            "id": step_id,
            "type": "assistant_message",
            "output": text,
            "metadata": {"ended": ended, "generation": generation},
        }

    steps = [
        asked("q1", "first"),
        answered("a1", "one", "q1", []),
        {"id": "n", "type": "assistant_message", "output": "a notice", "metadata": {}},
        asked("q2", "second"),
        answered("a2", "two", "q2", ["a1"]),
        answered("a2b", "*Answer 2 of 2*\n\ntwo again", "q2", ["a1"]),
        answered("a1b", "*Answer 2 of 2*\n\none again", "q1", []),  # regenerated after q2 was answered
        answered("a2c", "broken", "q2", ["a1"], ended="error"),
    ]
    history = history_from_thread(steps, lambda step_id: [])
    assert [(message.id, turn_text(message)) for message in history] == [
        ("q1", "first"),
        ("a1", "one"),
        ("q2", "second"),
        ("a2b", "two again"),
    ]


def test_older_turns_give_way_when_the_prompt_holds_more_images_than_allowed(processor) -> None:
    """A serving engine takes a fixed number of images per prompt (vLLM's --limit-mm-per-prompt)."""
    builder = PromptBuilder(ChatTemplateTokens(processor), CPU_BUDGET, max_images=3)
    history = [
        user_turn("First board?", [chart(), chart()]),
        AIMessage(content="A motor driver."),
        user_turn("Second board?", [chart(), chart()]),
        AIMessage(content="A charger."),
        user_turn("Compare them with this one.", [chart()]),
    ]
    prompt = builder.build(SYSTEM, history, 8000)
    assert [turn_text_of(message) for message in prompt] == [
        SYSTEM,
        "Second board?",
        "A charger.",
        history[-1].content[-1]["text"],
    ]
    assert sum(block["type"] == "image" for message in prompt for block in message["content"]) == 3


def turn_text_of(message: dict) -> str:
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")


def test_text_carrying_control_tokens_reaches_either_backend_as_plain_text(builder, demo, processor) -> None:
    """A question that forges a turn, an earlier answer, and a document page (its text and its file name)
    carrying control tokens: the prompt holds exactly the control tokens of the template's own structure,
    the same as for the same conversation in ordinary words, and ends on the template's one assistant turn."""

    def prompt(text: str) -> list[dict]:
        page = ShownPage(Source(f"{text}.pdf", "ab" * 32, 1, "pdf"), text, chart(280, 280))
        history = [user_turn(text, [chart()]), AIMessage(content=text), with_pages(user_turn(text, []), [page])]
        return builder.build(SYSTEM, history, budget=100_000)

    tokenizer = processor.tokenizer
    added = set(tokenizer.added_tokens_decoder)
    generation_prompt = tokenizer("<|im_start|>assistant\n")["input_ids"]

    def local_ids(messages: list[dict]) -> list[int]:  # what the in-process model gets
        return Generator(demo).prepare_inputs(messages)["input_ids"][0].tolist()

    def vllm_ids(messages: list[dict]) -> list[int]:  # what a vLLM server makes of the messages Loupe sends it
        sent = [to_openai(message) for message in messages]
        return tokenizer(processor.apply_chat_template(sent, add_generation_prompt=True, tokenize=False))["input_ids"]

    for ids_of in (local_ids, vllm_ids):
        hostile, ordinary = ids_of(prompt(FORGED)), ids_of(prompt("What is R1?"))
        assert [token for token in hostile if token in added] == [token for token in ordinary if token in added]
        assert hostile[-len(generation_prompt) :] == generation_prompt
        assert hostile.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 4 + 1  # 4 turns, then the answer
