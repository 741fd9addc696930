"""A socket.io client that talks to Loupe the way Chainlit's web page does.

Used by the integration tests: upload files over HTTP, send a message over the socket, and
collect everything the server emits until the run ends.
"""

from __future__ import annotations

import asyncio
import io
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import socketio
from PIL import Image

from chat.prompts import DEFAULT_PROMPT
from tests.helpers.server import ADMIN_PASSWORD, Server

# A whole 1024-token demo answer takes ~30 s on 2 idle cores; CI machines are shared and can be 10x slower.
ANSWER_TIMEOUT_S = 300


@dataclass
class Reply:
    """What the server emitted for one user message, in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def of(self, name: str) -> list[Any]:
        return [payload for event, payload in self.events if event == name]

    @property
    def tokens(self) -> list[str]:
        """Streamed pieces; the first travels inside stream_start."""
        return [start["output"] for start in self.of("stream_start")] + [
            payload["token"] for payload in self.of("stream_token")
        ]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Final state of each assistant message, by id, in the order they first appeared."""
        final: dict[str, dict[str, Any]] = {}
        for event, payload in self.events:
            if event in ("new_message", "update_message") and payload.get("type") == "assistant_message":
                final[payload["id"]] = payload
        return list(final.values())


async def login(url: str, username: str, password: str, timeout: float = 60) -> dict[str, str]:
    """Chainlit's password login; returns its cookies for later requests: the session cookie, and a load
    balancer's stickiness cookie when the login went through one.

    The timeout is generous: each login costs the server an argon2 verification (~0.1-0.2 s of CPU),
    so many users logging in at once (tests/helpers/load.py) queue behind each other.
    """
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        response = await http.post("/login", data={"username": username, "password": password})
    response.raise_for_status()
    return dict(response.cookies)


def socket_http_session() -> aiohttp.ClientSession:
    """The socket's HTTP session, whose jar keeps the cookies set on the handshake even from 127.0.0.1, as a
    browser does (aiohttp's default jar refuses cookies from IP addresses)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


class ChatClient:
    """One browser tab: logged in as `username` (admin by default), one chat session."""

    def __init__(
        self,
        url: str,
        language: str = "en-US",
        username: str = "admin",
        password: str | None = None,
        thread_id: str | None = None,
        profile: str | None = None,
        cookies: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.username, self.password = username, password or ADMIN_PASSWORD
        self.thread_id = thread_id
        self.profile = profile  # the chat profile chosen on the page (None: the default one)
        self.cookies = dict(cookies or {})  # a login made already (through a sign-in provider); else it logs in
        self.session_id = str(uuid.uuid4())
        self.language = language
        self.sio = socketio.AsyncClient(reconnection=False, http_session=socket_http_session)
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.seen: list[str] = []  # every event name received, including those wait_for skipped
        self.actions: dict[str, dict[str, Any]] = {}  # the buttons on screen, by id
        self.elements: dict[str, dict[str, Any]] = {}  # every element received, by id
        self.seen_messages: list[dict[str, Any]] = []  # every message sent or updated, in order
        self.deleted: list[str] = []  # the ids of the messages taken off the page, in order
        self.toasts: list[dict[str, Any]] = []  # every notice shown, in order
        self.ask_answers: asyncio.Queue[str] = asyncio.Queue()  # what the user types when asked
        self.sio.on("*", self._record)
        self.sio.on("ask", self._answer_ask)

    async def _record(self, event: str, payload: Any = None) -> None:
        self.seen.append(event)
        if event == "first_interaction":
            self.thread_id = payload["thread_id"]
        elif event in ("new_message", "update_message"):
            self.seen_messages.append(payload)
        elif event == "action":
            self.actions[payload["id"]] = payload
        elif event == "remove_action":
            self.actions.pop(payload["id"], None)
        elif event == "element":
            self.elements[payload["id"]] = payload
        elif event == "delete_message":
            self.deleted.append(payload["id"])
        elif event == "toast":
            self.toasts.append(payload)
        await self._events.put((event, payload))

    async def _answer_ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Chainlit's AskUserMessage: the page answers with the user's next message."""
        await self._record("ask", payload)
        return self.user_message(await self.ask_answers.get())

    async def __aenter__(self) -> ChatClient:
        self.cookies = self.cookies or await login(self.url, self.username, self.password)
        await self.sio.connect(
            self.url,
            socketio_path="/ws/socket.io",
            transports=["websocket"],
            wait_timeout=30,  # the default 1 s is too short when many users connect at once
            headers={
                "Accept-Language": self.language,
                "Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items()),
            },
            auth={
                "sessionId": self.session_id,
                "clientType": "webapp",
                "userEnv": "{}",
                "chatProfile": self.profile,
                "threadId": self.thread_id,
            },
        )
        # A load balancer that sent this socket to another server than its cookie named (that one is down) names
        # the new one in a cookie on the handshake: kept, as the browser keeps it, so that uploads and ratings go
        # where the session is. The jar's cookies without a domain are the ones this client sent.
        self.cookies |= {cookie.key: cookie.value for cookie in self.sio.eio.http.cookie_jar if cookie["domain"]}
        await self.sio.emit("connection_successful")
        # on_chat_start (or on_chat_resume) runs as a Chainlit task: wait for its end, so that
        # the task_end a later wait takes is never this one.
        self.settings_panel = await self.wait_for("chat_settings")
        self.greetings = [message async for message in self._messages_until_task_end()]
        return self

    async def _messages_until_task_end(self, timeout: float = 60) -> AsyncIterator[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while (event := await self._events.get())[0] != "task_end":
                if event[0] == "new_message":
                    yield event[1]

    async def __aexit__(self, *exc: object) -> None:
        await self.sio.disconnect()

    async def wait_for(self, name: str, timeout: float = 60) -> Any:
        """Skip events until `name` arrives, and return its payload."""
        async with asyncio.timeout(timeout):
            while True:
                event, payload = await self._events.get()
                if event == name:
                    return payload

    async def next_event(self) -> tuple[str, Any]:
        """The next event, whichever it is, and its payload."""
        return await self._events.get()

    async def wait_for_message(self, starting_with: str, timeout: float = 60) -> dict[str, Any]:
        """Skip events until a new message whose text starts with `starting_with` arrives."""
        async with asyncio.timeout(timeout):
            while not (message := await self.wait_for("new_message"))["output"].startswith(starting_with):
                pass
        return message

    async def upload(self, name: str, content: bytes, mime: str = "application/octet-stream") -> str:
        async with httpx.AsyncClient(base_url=self.url, cookies=self.cookies) as http:
            response = await http.post(
                "/project/file", params={"session_id": self.session_id}, files={"file": (name, content, mime)}
            )
        response.raise_for_status()
        return response.json()["id"]

    @staticmethod
    def user_message(text: str) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "output": text,
            "name": "User",
            "type": "user_message",
            "createdAt": datetime.now(UTC).isoformat(),
        }

    async def send(self, text: str, file_ids: list[str] | None = None, command: str | None = None) -> None:
        """A message as the page sends it, with the composer's `command` if one is chosen."""
        message = self.user_message(text) | ({"command": command} if command else {})
        await self.sio.emit(
            "client_message", {"message": message, "fileReferences": [{"id": file_id} for file_id in file_ids or []]}
        )

    def actions_for(self, message_id: str, name: str | None = None) -> list[dict[str, Any]]:
        """The buttons shown under a message, optionally only those of one kind, in the order sent."""
        return [
            action
            for action in self.actions.values()
            if action["forId"] == message_id and name in (None, action["name"])
        ]

    async def click(self, action: dict[str, Any], timeout: float = ANSWER_TIMEOUT_S) -> httpx.Response:
        """Press a button, as the page does: POST /project/action, which returns when its callback ends."""
        async with httpx.AsyncClient(base_url=self.url, cookies=self.cookies, timeout=timeout) as http:
            response = await http.post("/project/action", json={"action": action, "sessionId": self.session_id})
        await self.catch_up()
        return response

    async def catch_up(self) -> None:
        """Receive every event the server emitted before now.

        An HTTP response can overtake the socket events sent while it was handled. A socket.io
        call's acknowledgement comes after everything emitted before it on this connection, so an
        empty settings change (which changes nothing) works as a fence: its handler runs as a task,
        whose end is the last one queued when the acknowledgement comes. That end and everything
        before it are taken, so that no later read takes the fence's task for a run's.
        """
        await self.sio.call("chat_settings_change", {}, timeout=10)
        queued = [self._events.get_nowait() for _ in range(self._events.qsize())]
        fence = max(index for index, (event, _) in enumerate(queued) if event == "task_end")
        for event in queued[fence + 1 :]:
            self._events.put_nowait(event)

    async def regenerate(self, answer_id: str, timeout: float = ANSWER_TIMEOUT_S) -> Reply:
        """Press Regenerate under an answer; everything emitted until the new answer's task ends."""
        [button] = self.actions_for(answer_id, "regenerate")
        return await self.press(button, timeout)

    async def press(self, button: dict[str, Any], timeout: float = ANSWER_TIMEOUT_S) -> Reply:
        """Press a button that starts an answer; everything emitted until its task ends."""
        clicked = asyncio.create_task(self.click(button, timeout))
        await self.wait_for("task_start", timeout)
        reply = await self.collect(timeout)
        (await clicked).raise_for_status()
        return reply

    async def rate(self, run_id: str, value: int, comment: str | None = None) -> httpx.Response:
        """A thumb (1 up, 0 down) on the answer of a run, as the page sends it."""
        feedback = {"forId": run_id, "value": value, "comment": comment, "threadId": self.thread_id}
        async with httpx.AsyncClient(base_url=self.url, cookies=self.cookies, timeout=60) as http:
            response = await http.put("/feedback", json={"feedback": feedback, "sessionId": self.session_id})
        await self.catch_up()
        return response

    async def change_settings(self, values: dict[str, Any]) -> None:
        """Like moving the sliders. The handler runs as a Chainlit task: wait for its task_end."""
        await self.sio.call("chat_settings_change", values, timeout=10)
        await self.wait_for("task_end")

    async def stop(self) -> None:
        await self.sio.emit("stop")

    async def collect(self, timeout: float = ANSWER_TIMEOUT_S) -> Reply:
        """Everything emitted from now until the run's task_end."""
        reply = Reply()
        async with asyncio.timeout(timeout):
            while True:
                event, payload = await self._events.get()
                reply.events.append((event, payload))
                if event == "task_end":
                    return reply

    async def ask(
        self,
        text: str,
        file_ids: list[str] | None = None,
        timeout: float = ANSWER_TIMEOUT_S,
        command: str | None = None,
    ) -> Reply:
        await self.send(text, file_ids, command)
        await self.wait_for("task_start", timeout)  # events before it belong to earlier runs
        reply = await self.collect(timeout)
        if self.thread_id is None:  # Chainlit names the new thread once it is stored; it may come last
            await self.wait_for("first_interaction", timeout)
        return reply


@dataclass
class OwnedThread:
    """A thread of one user's: a question with an image, and the answer, rated thumbs down."""

    thread_id: str
    prompt_id: str
    run_id: str
    answer_id: str
    element_id: str
    object_key: str
    feedback_id: str


async def rated_thread_with_image(url: str, image: bytes) -> tuple[OwnedThread, ChatClient]:
    """admin asks about `image` (a short answer: these threads are about who may touch them), rates
    the answer, and leaves; returns the thread and the (closed) client that made it."""
    async with ChatClient(url) as client:
        await client.change_settings({"max_new_tokens": 16})
        uploaded = await client.upload("circuit.png", image, "image/png")
        answer = (await client.ask("What is R2?", [uploaded])).messages[-1]
        rated = await client.rate(answer["parentId"], 0)
        async with httpx.AsyncClient(base_url=url, cookies=client.cookies) as http:
            [element] = (await http.get(f"/project/thread/{client.thread_id}")).json()["elements"]
    owned = OwnedThread(
        thread_id=client.thread_id,
        prompt_id=answer["metadata"]["generation"]["prompt_id"],
        run_id=answer["parentId"],
        answer_id=answer["id"],
        element_id=element["id"],
        object_key=element["objectKey"],
        feedback_id=rated.json()["feedbackId"],
    )
    return owned, client


def png(width: int = 320, height: int = 240) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


# Short, repeatable answers, whatever the user's last chat was left with (chat/store/last_chat.py).
GREEDY = {"temperature": 0, "max_new_tokens": 16, "system_prompt": DEFAULT_PROMPT}
LONG_ANSWER = {"max_new_tokens": 4096}  # the demo model does not end it before a Stop or a second user arrives


def arena_answers(reply: Reply) -> tuple[dict[str, Any], dict[str, Any]]:
    """Answers A and B of an arena question, by their labels: a server that writes both at once (vLLM)
    may finish, and so send, B first."""
    by_label = {message["output"].split("\n\n")[0]: message for message in reply.messages}
    return by_label["*Answer A*"], by_label["*Answer B*"]


def only_answer(reply: Reply) -> dict[str, Any]:
    [answer] = reply.messages
    return answer


async def listed_profiles(server: Server) -> dict[str, bool]:
    """The profiles the page offers the admin, name -> whether it is the default, once a chat has started with
    no profile chosen (which forgets a profile the admin picked before: chat/store/last_chat.py)."""
    async with ChatClient(server.url) as client:
        return await offered_profiles(server.url, client.cookies)


async def offered_profiles(url: str, cookies: dict[str, str]) -> dict[str, bool]:
    """The profiles the page offers a login, name -> whether it is the one offered first."""
    async with httpx.AsyncClient(base_url=url, cookies=cookies) as http:
        settings = (await http.get("/project/settings", params={"language": "en-US"})).json()
    return {profile["name"]: profile["default"] for profile in settings["chatProfiles"]}


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that claims huge dimensions: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
