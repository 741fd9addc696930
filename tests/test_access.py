"""Who may touch a thread: every route and socket event, as the owner, another user, and logged out.

Only the owner succeeds; the others get a refusal and learn nothing.
"""

from __future__ import annotations

import httpx
import pytest
import socketio

from tests.helpers.client import ChatClient, OwnedThread, login, png, rated_thread_with_image
from tests.helpers.server import Server, add_account

OTHER, OTHER_PASSWORD = "bob", "bob-password-1"


@pytest.fixture(scope="module")
async def owned(server: Server) -> OwnedThread:
    """A thread of admin's with an image and a rated answer, and a second user, bob."""
    add_account(server, OTHER, OTHER_PASSWORD)
    return (await rated_thread_with_image(server.url, png()))[0]


def requests(owned: OwnedThread) -> dict[str, tuple[str, str, dict]]:
    feedback = {"feedback": {"forId": owned.run_id, "value": 1, "comment": "ok"}, "sessionId": "x"}
    return {
        "read thread": ("GET", f"/project/thread/{owned.thread_id}", {}),
        "read element": ("GET", f"/project/thread/{owned.thread_id}/element/{owned.element_id}", {}),
        "download image": ("GET", f"/loupe/files/{owned.object_key}", {}),
        "rename thread": ("PUT", "/project/thread", {"json": {"threadId": owned.thread_id, "name": "mine"}}),
        "rate": ("PUT", "/feedback", {"json": feedback}),
        "withdraw rating": ("DELETE", "/feedback", {"json": {"feedbackId": owned.feedback_id}}),
        # Last: it deletes the thread when allowed.
        "delete thread": ("DELETE", "/project/thread", {"json": {"threadId": owned.thread_id}}),
    }


ACTIONS = list(requests(OwnedThread("t", "p", "r", "a", "e", "0" * 64, "f")))


async def send(server: Server, cookies: dict[str, str], method: str, path: str, options: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, cookies=cookies) as http:
        return await http.request(method, path, **options)


@pytest.mark.parametrize("action", ACTIONS)
async def test_another_user_is_refused(server: Server, owned: OwnedThread, action: str) -> None:
    cookies = await login(server.url, OTHER, OTHER_PASSWORD)
    response = await send(server, cookies, *requests(owned)[action])
    assert response.status_code in (401, 403, 404), response.text


@pytest.mark.parametrize("action", ACTIONS)
async def test_logged_out_is_refused(server: Server, owned: OwnedThread, action: str) -> None:
    response = await send(server, {}, *requests(owned)[action])
    assert response.status_code in (401, 403, 404), response.text


async def test_another_user_cannot_list_or_resume_the_thread(server: Server, owned: OwnedThread) -> None:
    cookies = await login(server.url, OTHER, OTHER_PASSWORD)
    listed = await send(
        server, cookies, "POST", "/project/threads", {"json": {"pagination": {"first": 50}, "filter": {}}}
    )
    assert owned.thread_id not in {thread["id"] for thread in listed.json()["data"]}
    intruder = ChatClient(server.url, username=OTHER, password=OTHER_PASSWORD, thread_id=owned.thread_id)
    with pytest.raises(socketio.exceptions.ConnectionError):  # Chainlit refuses to resume another's thread
        await intruder.__aenter__()
    async with ChatClient(server.url, thread_id=owned.thread_id) as owner:
        resumed = await owner.wait_for("resume_thread")
    assert resumed["id"] == owned.thread_id


@pytest.mark.parametrize("action", ACTIONS)
async def test_the_owner_succeeds(server: Server, owned: OwnedThread, action: str) -> None:
    async with ChatClient(server.url) as client:
        cookies = client.cookies
    response = await send(server, cookies, *requests(owned)[action])
    assert response.status_code == 200, response.text
