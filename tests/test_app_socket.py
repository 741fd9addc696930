"""The running app, driven over socket.io like the web page: messages, images, streaming, stop."""

from __future__ import annotations

from tests.helpers.client import GREEDY, LONG_ANSWER, ChatClient, png
from tests.helpers.server import generations, rows


async def test_message_with_image_streams_an_answer(server):
    async with ChatClient(server.url) as client:
        assert client.greetings[0]["output"].startswith("**Demo model.**")
        image = await client.upload("diagram.png", png(), "image/png")
        reply = await client.ask("What does this diagram show?", [image])
    assert reply.of("stream_start"), "the answer was not streamed"
    assert len(reply.tokens) > 1
    [answer] = reply.messages
    assert answer["output"] == "".join(reply.tokens)
    assert answer["metadata"]["ended"] == "finished"


def texts(reply) -> list[str]:
    return [message["output"] for message in reply.messages]


BAD_UPLOADS = {
    "empty.png": (b"", "the file is empty"),
    "archive.png": (b"PK\x03\x04" + bytes(range(256)) * 4, "it is not a file Loupe can read"),
    "cad.png": (b"\x00\x01\x02 drawing" * 40, "it is not a file Loupe can read"),
    "cut.png": (png()[:200], "the file is truncated or corrupt"),
    "bomb.png": (None, "the image has far too many pixels to open safely"),
}


async def test_bad_uploads_get_a_clear_message_and_the_app_keeps_serving(server):
    from tests.helpers.client import png_header_only

    async with ChatClient(server.url) as client:
        for name, (content, reason) in BAD_UPLOADS.items():
            data = png_header_only(30000, 30000) if content is None else content
            file_id = await client.upload(name, data, "image/png")
            reply = await client.ask("What is in this picture?", [file_id])
            [refusal] = texts(reply)
            assert f"**{name}**: {reason}" in refusal, refusal

        too_many = [await client.upload(f"{n}.png", png(), "image/png") for n in range(5)]
        [refusal] = texts(await client.ask("Compare these", too_many))
        assert "you attached 5 files; at most 4" in refusal

        [refusal] = texts(await client.ask("   "))
        assert refusal.startswith("Your message is empty")

        reply = await client.ask("Still there?", [await client.upload("ok.png", png(), "image/png")])
        assert reply.tokens and reply.messages[-1]["metadata"]["ended"] == "finished"


async def test_a_question_whose_attachment_is_refused_can_be_asked_without_it(server):
    """What the user typed is not lost with a refused attachment: a button under the refusal asks it without
    them, answered as the reply to that very message."""
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        cut = await client.upload("cut.png", png()[:200], "image/png")
        [refusal] = (await client.ask("Which resistor is larger?", [cut])).messages
        [button] = client.actions_for(refusal["id"], "ask_without_files")
        assert button["label"] == "Ask it without the attachments"
        [answer] = (await client.press(button)).messages
    assert answer["metadata"]["ended"] == "finished" and answer["output"]
    [(question,)] = rows(server, "SELECT output FROM steps WHERE id = ?", answer["metadata"]["generation"]["prompt_id"])
    assert question == "Which resistor is larger?", "the answer is the refused message's"
    assert not client.actions_for(refusal["id"], "ask_without_files"), "asked once"


async def test_stop_keeps_the_partial_answer_marked_as_stopped(server):
    async with ChatClient(server.url) as client:
        await client.change_settings(LONG_ANSWER)
        await client.send("Explain the whole diagram in detail.")
        await client.wait_for("stream_start")
        await client.stop()
        reply = await client.collect()
        answers = [m for m in reply.messages if m.get("metadata", {}).get("ended") == "stopped"]
        assert len(answers) == 1
        assert answers[0]["output"].endswith("■ *Stopped.*")
        assert [m["output"] for m in reply.messages if m is not answers[0]] == [], "one stop, one notice: the marker"
        # The model is free again at once: the next answer streams.
        assert (await client.ask("And now?")).tokens


async def test_a_waiting_user_sees_their_place_in_the_queue(server):
    async with ChatClient(server.url) as first, ChatClient(server.url) as second:
        await first.change_settings(LONG_ANSWER)
        await first.send("Write a long explanation.")
        await first.wait_for("stream_start")
        await second.send("My turn?")
        notice = await second.wait_for_message("⏳")
        assert notice["output"] == "⏳ Waiting for the model: 1 request(s) ahead of you."
        await first.stop()
        reply = await second.collect()
        assert reply.of("delete_message")[0]["id"] == notice["id"]  # the notice goes once served
        assert reply.tokens


async def test_korean_browser_gets_korean_messages(server):
    async with ChatClient(server.url, language="ko-KR") as client:
        assert client.greetings[0]["output"].startswith("**데모 모델입니다.**")
        assert "이유: `LOUPE_MODEL`이 `demo`로 설정되어 있습니다." in client.greetings[0]["output"], "the cause too"
        [refusal] = texts(await client.ask("", [await client.upload("빈.png", b"", "image/png")]))
        assert "**빈.png**: 빈 파일입니다" in refusal


async def test_a_message_longer_than_the_context_is_explained(server):
    async with ChatClient(server.url) as client:
        # Under LOUPE_MAX_MESSAGE_CHARS (32,000), but each Korean syllable is about a token: ~20,000 tokens.
        [refusal] = texts(await client.ask("저항기 " * 7000))
        assert refusal.startswith("Your message is too long for the model's context")
        assert (await client.ask("Short question?")).tokens


async def test_a_resumed_chat_continues_with_its_images_and_settings(server):
    async with ChatClient(server.url) as client:
        await client.change_settings({"max_new_tokens": 32, "system_prompt": "concise"})
        image = await client.upload("circuit.png", png(), "image/png")
        await client.ask("What is R1?", [image])
        thread_id = client.thread_id

    async with ChatClient(server.url, thread_id=thread_id) as resumed:
        await resumed.wait_for("resume_thread")
        initial = {widget["id"]: widget["initial"] for widget in resumed.settings_panel}
        assert (initial["max_new_tokens"], initial["system_prompt"]) == (32, "concise")
        assert (await resumed.ask("And R2?")).tokens

    first, second = await generations(server, thread_id, expected=2)
    # The follow-up's prompt holds the first turn again, image included (~100 visual tokens): without
    # the image it would be shorter than the first prompt, not longer.
    assert second["prompt_tokens"] > first["prompt_tokens"]
    assert second["settings"]["system_prompt"] == "concise" and second["settings"]["max_new_tokens"] == 32
