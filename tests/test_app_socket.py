"""The running app, driven over socket.io like the web page: messages, images, streaming, stop."""

from __future__ import annotations

import io

from PIL import Image

from tests.chat_client import ChatClient


def png(width: int = 320, height: int = 240) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_message_with_image_streams_an_answer(server):
    async with ChatClient(server.url) as client:
        await client.wait_for("new_message")  # the demo-model notice
        image = await client.upload("diagram.png", png(), "image/png")
        reply = await client.ask("What does this diagram show?", [image])
    assert reply.of("stream_start"), "the answer was not streamed"
    assert len(reply.tokens) > 1
    [answer] = reply.messages
    assert answer["output"] == "".join(reply.tokens)
    assert answer["metadata"]["ended"] == "finished"
