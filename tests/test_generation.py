"""The demo model answering through Qwen's real processor: streaming, stop, queueing, errors."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest
from PIL import Image

from models.generation import Generator, SamplingSettings, Usage

LONG = SamplingSettings(temperature=0.7, top_p=0.8, max_new_tokens=4000, repetition_penalty=1.05)
SHORT = SamplingSettings(temperature=0, top_p=1, max_new_tokens=12, repetition_penalty=1.0)


def question(text: str = "Which component is shown?", with_image: bool = True) -> list[dict]:
    content = [{"type": "image", "image": Image.new("RGB", (224, 168), (10, 200, 90))}] if with_image else []
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def generator(demo) -> Generator:
    return Generator(demo)


async def answer(generator: Generator, messages: list[dict], sampling: SamplingSettings, **kwargs) -> str:
    async with aclosing(generator.stream(messages, sampling, **kwargs)) as pieces:
        return "".join([piece async for piece in pieces])


async def test_demo_model_answers_a_question_about_an_image(generator: Generator) -> None:
    usage = Usage()
    text = await answer(generator, question(), SHORT, usage=usage)
    assert text
    assert usage.ended == "finished"
    assert usage.prompt_tokens > 64  # the image's visual tokens are in the prompt
    assert 0 < usage.completion_tokens <= SHORT.max_new_tokens
    assert 0 < usage.time_to_first_token <= usage.duration


async def test_greedy_answers_are_repeatable(generator: Generator) -> None:
    assert await answer(generator, question(), SHORT) == await answer(generator, question(), SHORT)


async def test_cancelling_stops_the_generate_thread_promptly(generator: Generator) -> None:
    usage = Usage()
    first_piece = asyncio.Event()

    async def consume() -> None:
        async with aclosing(generator.stream(question(), LONG, usage=usage)) as pieces:
            async for _ in pieces:
                first_piece.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_piece.wait(), 60)
    cancelled_at = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Awaiting the task also waited for the worker thread: the model is free again.
    assert time.perf_counter() - cancelled_at < 2
    assert usage.ended == "stopped"
    assert usage.completion_tokens < LONG.max_new_tokens / 4
    assert len(generator.queue) == 0


async def test_requests_are_served_in_arrival_order_and_told_their_place(generator: Generator) -> None:
    finished: list[str] = []
    places: dict[str, list[int]] = {"second": [], "third": []}

    async def ask(name: str) -> None:
        async def on_wait(ahead: int) -> None:
            places[name].append(ahead)

        await answer(generator, question(name, with_image=False), SHORT, on_wait=on_wait)
        finished.append(name)

    first = asyncio.create_task(ask("first"))
    await asyncio.sleep(0)  # "first" takes the model before the others arrive
    await asyncio.gather(first, ask("second"), ask("third"))
    assert finished == ["first", "second", "third"]
    assert places == {"second": [1], "third": [2, 1]}


async def test_a_model_error_is_raised_and_frees_the_model(generator: Generator) -> None:
    usage = Usage()
    unusable = [{"role": "user", "content": [{"type": "image", "image": 42}, {"type": "text", "text": "?"}]}]
    with pytest.raises(Exception):  # noqa: B017 - whatever qwen-vl-utils raises, it must surface
        await asyncio.wait_for(answer(generator, unusable, SHORT, usage=usage), 60)
    assert usage.ended == "error"
    assert await answer(generator, question(), SHORT)
