"""Changes to Chainlit 2.12 where its behaviour would break a promise Loupe makes to its users.

Most are about trust: Chainlit stores what a client sends over socket.io much as it arrives
(a message's type, metadata and parent included), runs features the config turns off, answers
401 where 404 reveals less, and keeps every instance's uploads in one folder that any of them
deletes at shutdown. Each function here changes one such thing and says why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import chainlit.config
import chainlit.server
import chainlit.socket
from chainlit.action import Action
from chainlit.config import config as chainlit_config
from chainlit.context import context, init_ws_context
from chainlit.emitter import ChainlitEmitter
from chainlit.message import Message
from chainlit.session import WebsocketSession
from chainlit.step import StepDict
from chainlit.utils import utc_now
from fastapi import HTTPException

from chat.documents.reading import Kind, file_kind
from chat.store.generations import as_the_browser_sees_it
from chat.store.outages import Unavailable, unreachable
from chat.ui.limits import RateLimit
from chat.ui.texts import language_of, text

log = logging.getLogger("loupe")
M = TypeVar("M", bound=Message)


def accept_empty_uploads() -> None:
    """Let a zero-byte upload through, so the chat can say "the file is empty".

    Chainlit's `persist_file` treats empty content as missing content and the upload fails with
    a 500, which the user sees only as a failed attachment. An empty file on disk is accepted.
    """
    persist_file = WebsocketSession.persist_file

    async def persist_file_allowing_empty(
        self: WebsocketSession, name: str, mime: str, path: str | None = None, content: bytes | str | None = None
    ) -> dict:
        if path is None and content is not None and len(content) == 0:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            empty = Path(self.files_dir, f"empty-{uuid.uuid4()}")
            empty.touch()
            path = str(empty)
        return await persist_file(self, name, mime, path=path, content=content)

    WebsocketSession.persist_file = persist_file_allowing_empty


def uploads_in(root: Path) -> Path:
    """Keep this process's uploads in a folder of its own under `root`, which only it deletes (at
    shutdown), and delete the folders of this host's processes that ended without doing so (killed).

    Chainlit keeps every instance's uploads in `<app root>/.files` and deletes that whole folder
    when any instance stops, so a second instance's pending uploads vanished and its uploads
    failed until restart.
    """
    host = os.uname().nodename
    folder = root / f"{host}-{os.getpid()}"
    for other in root.glob(f"{host}-*"):
        pid = other.name.removeprefix(f"{host}-")
        if other != folder and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(other, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    chainlit.config.FILES_DIRECTORY = folder  # read by each session when it stores a file
    chainlit.server.FILES_DIRECTORY = folder  # deleted by the server when it stops
    return folder


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 delivers nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def forget_uploads_with_their_session(sessions_ended: Callable[[list[str]], Awaitable[None]]) -> None:
    """When Chainlit deletes a chat session (an hour after its socket closed, or when the page asked), and
    the files uploaded into it with it, tell `sessions_ended` (chat/ui/limits.py's UploadQuota): files
    that are gone no longer wait to be sent. Chainlit deletes sessions in tasks nobody awaits, so a
    failure here is logged, and the uploads count until they expire."""
    delete = WebsocketSession.delete

    async def delete_and_uncount(self: WebsocketSession) -> None:
        await delete(self)
        try:
            await sessions_ended([self.id])
        except Exception:
            log.exception("Could not uncount the uploads of the ended session %s", self.id)

    WebsocketSession.delete = delete_and_uncount


def browser_only_message(content: str) -> StepDict:
    """A message for the page that is never stored: notices that are stale once read."""
    notice = Message(content=content)
    notice.created_at = utc_now()
    return notice.to_dict()


def without_thumbs(message: M) -> M:
    """`message`, sent outside the run it is part of: Chainlit's page offers thumbs (and a copy button) on every
    message of a run, and a thumb on a notice (a list, a chart, a refusal, a progress line) rates no answer."""
    message.parent_id = None
    return message


def failure_notice(error: BaseException, reference: str, language: str) -> str:
    """What a user is told of an unexpected failure: that the database is away, or the log's reference."""
    if unreachable(error):
        return text("database_unreachable", language)
    return text("server_error", language, reference=reference)


class MessageRefused(ValueError):
    """A client message Loupe will not take; `reason` and `details` make the sentence the user sees."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(reason)
        self.reason, self.details = reason, details


def client_message_step(sent: Any, author: str, max_chars: int, commands: Mapping[str, str] | None = None) -> StepDict:
    """What Loupe keeps of a message a client sent: a new user message with its id and text, and the
    command it was sent with if its label is one of Loupe's `commands` (label: command); nothing else.

    Chainlit's `Message.from_dict` takes the client's type, metadata, parent and author, so a client
    could store a "model answer" with a generation record (and the export trained on it), or hang
    its message under another step. Here the type is always user_message, the author the logged-in
    user, and metadata, parent and the rest are dropped; the id (which the page needs to show its
    attachments) must be a fresh UUID4, and the data layer refuses one that already names a step.
    """
    if not isinstance(sent, dict) or not isinstance(sent.get("output"), str) or not isinstance(sent.get("id"), str):
        raise MessageRefused("message_malformed")
    try:
        if uuid.UUID(sent["id"]).version != 4:
            raise ValueError
    except ValueError:
        raise MessageRefused("message_malformed") from None
    if len(sent["output"]) > max_chars:
        raise MessageRefused("message_too_long", length=len(sent["output"]), limit=max_chars)
    step: StepDict = {
        "id": sent["id"],
        "output": sent["output"],
        "name": author,
        "type": "user_message",
        "createdAt": utc_now(),
    }
    if (command := (commands or {}).get(sent.get("command"))) is not None:
        step["command"] = command
    return step


def first_title(label: str | None, files: list[dict[str, Any]], language: str) -> str:
    """The name of a chat whose first message has no text: its command's `label` as the user clicked it, or the
    files sent. Chainlit names a chat by its first message's text, and its page shows the Stop button and
    enables the thumbs only once that name is not empty: a chat begun by the Library list, the Dashboard or a
    dropped PDF would otherwise stay "Untitled Conversation" with no Stop for any answer after."""
    return label or ", ".join(file["name"] for file in files) or text("untitled_chat", language)


# The type a PDF or text attachment is given, whatever the browser declared: Chainlit then shows it as a
# file (a download), as Loupe serves it (routes.served_as), not in an inline viewer of its declared type.
DOCUMENT_MIME = "application/octet-stream"


# The chats being named in the background: the event loop keeps only a weak reference to a task.
NAMING: set[asyncio.Task] = set()


def guard_client_messages(
    max_chars: int,
    rate: RateLimit,
    login_is_current: Callable[[str | None], Awaitable[bool]],
    step_exists: Callable[[str], Awaitable[bool]],
    uploads_sent: Callable[[list[str]], Awaitable[None]],
    commands: Mapping[str, str] | None = None,
) -> None:
    """Check every message a client sends before Chainlit stores it or Loupe answers it.

    Every socket event first checks that the socket's login has not ended (`check_login_on_every_event`).
    Typed messages and answers to AskUserMessage both pass through the emitter's `process_message`,
    which checks the login again (an answer is no event: it comes back as the reply to Chainlit's
    "ask", however long after) and keeps only `client_message_step`. The socket's handler also
    refuses, with a notice that is not stored: messages over the per-user rate, malformed or
    over-long ones, and ones whose id already names a step (anyone's: answered, it would hang an
    answer under another user's message). Any other failure is shown as a short message with a
    reference id; the details go to the log under that id.
    """
    process_message = ChainlitEmitter.process_message

    async def process_checked_message(self: ChainlitEmitter, payload: Any) -> Message:
        if not await login_is_current(self.session.token):
            log.warning(
                "Refused a message from %s: its login has ended", self.session.user and self.session.user.identifier
            )
            raise MessageRefused("login_ended")
        if not isinstance(payload, dict):
            raise MessageRefused("message_malformed")
        author = self.session.user.identifier if self.session.user else "User"
        step = client_message_step(payload.get("message"), author, max_chars, commands)
        if await step_exists(step["id"]):
            log.warning("Refused a message from %s reusing the id of step %s", author, step["id"])
            raise MessageRefused("message_malformed")
        references = payload.get("fileReferences")
        files = [ref for ref in references if isinstance(ref, dict)] if isinstance(references, list) else []
        sent = [file for reference in files if (file := self.session.files.get(reference.get("id"))) is not None]
        for pending in sent:
            # A document is shown as a file to download, never in an inline viewer.
            if file_kind(Path(pending["path"])) != Kind.IMAGE:
                pending["type"] = DOCUMENT_MIME
        await uploads_sent([pending["id"] for pending in sent])  # no longer pending (limits.UploadQuota)
        if not self.session.has_first_interaction and not step["output"].strip():
            self.session.has_first_interaction = True  # named here, not by Chainlit with the empty text
            label = payload["message"]["command"] if "command" in step else None  # one of `commands`
            title = first_title(label, sent, language_of(self.session.language))
            naming = asyncio.create_task(self.init_thread(title))  # in the background, as Chainlit names it
            NAMING.add(naming)
            naming.add_done_callback(NAMING.discard)
        return await process_message(self, {"message": step, "fileReferences": files})

    async def checked_message(session: WebsocketSession, payload: Any) -> None:
        context = init_ws_context(session)
        language = language_of(session.language)
        await context.emitter.task_start()
        try:
            user = session.user.identifier if session.user else session.id
            if (wait := await rate.admit(user)) is not None:
                raise MessageRefused("too_many_messages", seconds=max(1, round(wait)))
            message = await context.emitter.process_message(payload)
            if chainlit_config.code.on_message:
                await asyncio.sleep(0.001)  # as Chainlit does: let the message's own writes start first
                await chainlit_config.code.on_message(message)
        except asyncio.CancelledError:
            pass
        except MessageRefused as refused:
            log.warning("Refused a message from %s: %s", session.user and session.user.identifier, refused.reason)
            await context.emitter.send_step(browser_only_message(text(refused.reason, language, **refused.details)))
        except Exception as error:
            reference = failure_reference()
            log.exception("Failure %s while taking a message", reference)
            await context.emitter.send_step(browser_only_message(failure_notice(error, reference, language)))
        finally:
            await context.emitter.task_end()

    ChainlitEmitter.process_message = process_checked_message
    chainlit.socket.process_message = checked_message  # the client_message handler looks it up by name
    stop_without_a_second_notice()
    check_login_on_every_event(login_is_current)


def stop_without_a_second_notice() -> None:
    """Stop the chat's run without Chainlit's "Task manually stopped.": the stopped answer already ends with
    Loupe's own marker, in the user's language, and Chainlit's message would be stored as another answer."""

    async def stop(sid: str) -> None:
        if session := WebsocketSession.get(sid):
            init_ws_context(session)
            if session.current_task:
                session.current_task.cancel()
            if chainlit_config.code.on_stop:
                await chainlit_config.code.on_stop()

    chainlit.socket.sio.handlers["/"]["stop"] = stop


def check_login_on_every_event(login_is_current: Callable[[str | None], Awaitable[bool]]) -> None:
    """Take no socket event from a login that has ended: say so, and close the socket.

    Chainlit checks the login when a socket connects, and never again; a socket left open after a
    logout could still stop a run, change settings, or
    send messages. Every event handler but connect's and disconnect's now checks it first.
    """
    handlers = chainlit.socket.sio.handlers["/"]

    def checked(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handle_if_logged_in(sid: str, *data: Any) -> Any:
            session = WebsocketSession.get(sid)
            try:
                if session is None or await login_is_current(session.token):
                    return await handler(sid, *data)
            except Unavailable:  # the login cannot be checked: the event is not taken, and the user told so
                log.warning("Refused a socket event of %s: database unreachable", session.user)
                notice = text("database_unreachable", language_of(session.language))
                await init_ws_context(session).emitter.send_step(browser_only_message(notice))
                return None
            log.warning("Closed a socket of %s: its login has ended", session.user and session.user.identifier)
            emitter = init_ws_context(session).emitter
            await emitter.send_step(browser_only_message(text("login_ended", language_of(session.language))))
            await chainlit.socket.sio.disconnect(session.socket_id)
            return None

        return handle_if_logged_in

    for event, handler in list(handlers.items()):
        if event not in ("connect", "disconnect"):
            handlers[event] = checked(handler)


def failure_reference() -> str:
    """An id to show the user with a short failure message and to log with the details: users
    never see exception text (it can name files, hosts and internals), support can still find it."""
    return secrets.token_hex(4)


def honour_config_flags() -> None:
    """Features the config turns off stay off, also for a client that asks for them directly.

    Chainlit's page hides message editing and thread sharing when they are off, but its socket
    event and share routes still work; editing deletes later steps (our answers and their
    preferences), and a shared thread is readable without login.
    """
    if not chainlit_config.features.edit_message:

        async def edit_refused(sid: str, payload: Any) -> None:
            log.warning("Refused a message edit: editing is off (session %s)", sid)

        chainlit.socket.sio.handlers["/"]["edit_message"] = edit_refused


async def thread_author_or_404(username: str, thread_id: str) -> bool:
    """Chainlit's check on its thread routes, answering 404 for another user's thread as for a
    missing one: the answer must not tell which ids exist."""
    data_layer = chainlit.server.get_data_layer()
    if data_layer is None or await data_layer.get_thread_author(thread_id) != username:
        raise HTTPException(status_code=404, detail="Thread not found")
    return True


def hide_other_users_threads() -> None:
    chainlit.server.is_thread_author = thread_author_or_404  # looked up by name when a route runs


def keep_contenders_blind() -> None:
    """Send arena answers to the browser without the record of who wrote them.

    Chainlit sends a message's whole metadata with it, and an answer's generation record names its
    adapter: anyone reading the socket would know who wrote A and B before voting. The data layer
    stores the step as sent to the emitter; only the copy that goes over the socket is blinded
    (threads read back for the browser are blinded by the data layer).
    """
    send_step, update_step = ChainlitEmitter.send_step, ChainlitEmitter.update_step

    async def send_blinded(self: ChainlitEmitter, step_dict: StepDict) -> None:
        await send_step(self, as_the_browser_sees_it(step_dict))

    async def update_blinded(self: ChainlitEmitter, step_dict: StepDict) -> None:
        await update_step(self, as_the_browser_sees_it(step_dict))

    ChainlitEmitter.send_step, ChainlitEmitter.update_step = send_blinded, update_blinded


# The buttons each session was sent and not yet told to remove, by id: the server's own copies.
_issued_actions: WeakKeyDictionary[WebsocketSession, dict[str, dict[str, Any]]] = WeakKeyDictionary()


def remember_issued_actions() -> None:
    """Keep the server's copy of every button sent, so a click is answered with that copy.

    Chainlit runs an action callback with whatever name and payload the client posts, so a
    client could "vote" on any two of its answers (a battle the arena never held) or compare
    answers no button offered. chat/ui/routes.py answers a click only for a button this session
    was shown, and passes the server's payload on, never the client's.
    """

    async def send(self: Action, for_id: str) -> None:
        self.forId = for_id
        _issued_actions.setdefault(context.session, {})[self.id] = self.to_dict()
        await context.emitter.emit("action", self.to_dict())

    async def remove(self: Action) -> None:
        _issued_actions.get(context.session, {}).pop(self.id, None)
        await context.emitter.emit("remove_action", self.to_dict())

    Action.send = send
    Action.remove = remove


def issued_action(session: WebsocketSession, clicked: Any) -> dict[str, Any] | None:
    """The server's copy of the button a client says it clicked; None if this session was never shown it."""
    if not isinstance(clicked, dict) or not isinstance(clicked.get("id"), str):
        return None
    return _issued_actions.get(session, {}).get(clicked["id"])
