"""Loupe's Chainlit app: the handlers Chainlit calls, each short, delegating to chat.ui.*.

Nothing is built here: `python -m chat serve` builds the server's runtime (chat/ui/runtime.py)
before Chainlit imports this module, and the handlers reach it through `serving()`. The model
loads and the database is migrated at app start-up, so importing this module does nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

import chainlit as cl
from chainlit.auth import get_token_from_cookies
from chainlit.session import ws_sessions_id
from chainlit.types import Feedback, ThreadDict
from fastapi import Request, Response
from langchain_core.messages import HumanMessage

from chat.arena import leaderboard
from chat.arena.profiles import Profile
from chat.conversation import user_turn
from chat.store.last_chat import last_chat, remember
from chat.store.logins import claims, revoke
from chat.store.outages import Unavailable
from chat.store.rows import NotYours
from chat.ui import answers, arena, dashboard, documents, feedback, keys, siblings
from chat.ui.answers import model_turn, respond, stored_history
from chat.ui.chainlit_fixes import failure_notice, failure_reference, without_thumbs
from chat.ui.choices import (
    ASK_WITHOUT_FILES,
    COMPARE,
    redrawn_comparison,
    refuse_click,
    restore_choices,
    show_choices,
    show_rating,
)
from chat.ui.datalayer import LoupeDataLayer
from chat.ui.limits import DATABASE_ERRORS
from chat.ui.panel import chat_settings, offer_commands, show_panel, take_settings
from chat.ui.runtime import DASHBOARD_COMMAND, KEYS_COMMAND, LIBRARY_COMMAND, StartFailed, serving
from chat.ui.side_by_side import reopen_stored
from chat.ui.signin import signed_in
from chat.ui.texts import demo_cause, describe_profile, language_of, leaderboard_words, profile_label, text

log = logging.getLogger("loupe")


@cl.data_layer
def use_loupe_data_layer() -> LoupeDataLayer:
    return serving().data_layer


@cl.on_app_startup
async def start_server() -> None:
    """Migrate, create the first admin, load the model; if that fails, stop the server (never serve broken)."""
    runtime = serving()
    try:
        await runtime.start()
    except Exception as error:
        runtime.failure = str(error) or type(error).__name__
        raise StartFailed(runtime.failure) from error


@cl.on_app_shutdown
async def stop_server() -> None:
    """End the idle document workers (a busy one ends with its job: its pipes close with this process), and
    uncount the uploads waiting in this process's chat sessions, whose files Chainlit deletes as it stops."""
    runtime = serving()
    await runtime.pdfs.close()
    try:
        await runtime.uploads.sessions_ended(list(ws_sessions_id))
    except DATABASE_ERRORS:
        log.exception("Could not uncount the uploads of this process's sessions: they count until they expire")


# Logging in and out ----------------------------------------------------------------------------


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    runtime = serving()
    if not await runtime.password_checks.check(username, password):
        return None
    return await signed_in(runtime.sessions, username)


@cl.on_logout
async def logout(request: Request, response: Response) -> dict[str, bool]:
    """End every login of this account, not only this browser's cookie (which Chainlit clears)."""
    runtime = serving()
    token = get_token_from_cookies(request.cookies) or request.headers.get("authorization", "").removeprefix("Bearer ")
    if (content := claims(token, runtime.secret)) and content.get("identifier"):
        await revoke(runtime.sessions, content["identifier"])
    return {"success": True}


# Chats: start, resume, settings ----------------------------------------------------------------


@cl.set_chat_profiles
async def chat_profiles(user: cl.User | None, language: str | None) -> list[cl.ChatProfile]:
    """Read afresh on every page load, so a newly trained adapter shows up without a restart. The one offered
    first is the user's last pick (chat/store/last_chat.py), else the team's default."""
    runtime, language = serving(), language_of(language)
    listed = runtime.profiles.all()
    try:
        picked = (await last_chat(runtime.sessions, user.identifier)).get("profile") if user else None
    except Unavailable:
        picked = None
    default = next((profile for profile in listed if profile.name == picked), runtime.profiles.default(listed))
    return [
        cl.ChatProfile(
            name=profile.name,
            display_name=profile_label(profile, language),
            markdown_description=describe_profile(profile, language),
            default=profile == default,
        )
        for profile in listed
    ]


@cl.on_chat_start
async def start() -> None:
    """A new chat starts with the user's last settings, and remembers the profile it was started with."""
    runtime, language, user = serving(), session_language(), current_user()
    cl.user_session.set("history", [])
    try:
        remembered = await last_chat(runtime.sessions, user)
    except Unavailable:  # the chat starts with the defaults, and remembers nothing
        log.warning("Could not read the last chat settings of %s: database unreachable", user)
        remembered = None
    await show_panel(language, (remembered or {}).get("settings"))
    profile, team_default = current_profile(), runtime.profiles.default()
    picked = None if profile == team_default else profile.name
    if remembered is not None and picked != remembered.get("profile"):
        await remember(runtime.sessions, user, profile=picked)
    await offer_commands(language)
    if current_profile().is_arena:
        board = await leaderboard.current_board(runtime.sessions, runtime.profiles.adapters, runtime.settings)
        table = leaderboard.as_markdown(board, leaderboard_words(language))
        await cl.Message(content=text("arena_intro", language, leaderboard=table)).send()
    if runtime.backend.demo_reason is not None:
        reason = demo_cause(runtime.backend.demo_reason, language)
        await cl.Message(content=text("demo_notice", language, reason=reason)).send()


@cl.on_chat_resume
async def resume(thread: ThreadDict) -> None:
    """Restore the model's history, with its images, the chat settings the thread last used, the buttons,
    and the battles' views (a vote cast now marks itself there)."""
    runtime, language = serving(), session_language()
    cl.user_session.set("history", await stored_history(thread))
    documents.restore_documents(thread)
    await offer_commands(language)
    await show_panel(language, (thread.get("metadata") or {}).get("chat_settings"))
    stored = await runtime.preferences.in_thread(current_user(), thread["id"])
    await restore_choices(stored, current_profile().is_arena, runtime.settings, language)
    reopen_stored(thread, language)


@cl.on_settings_update
async def update_settings(values: dict[str, Any]) -> None:
    """Take the valid values; refuse the others with a notice (Chainlit already copied them all in)."""
    if refused := take_settings(values):
        log.warning("Refused chat settings from %s: %s", current_user(), refused)
        names = ", ".join(refused)
        await cl.context.emitter.send_toast(text("settings_refused", session_language(), names=names), "error")
    try:  # the user's next chats start with them too
        await remember(serving().sessions, current_user(), settings=chat_settings())
    except Unavailable:  # this chat has them; the next ones start with the ones remembered before
        log.warning("Could not remember the chat settings of %s: database unreachable", current_user())


# Messages and answers --------------------------------------------------------------------------


@cl.on_message
async def answer(message: cl.Message) -> None:
    """Chainlit's on_message wrapper only logs an exception (the user would see nothing): say so, with a reference."""
    try:
        await answer_message(message)
    except Exception as error:
        reference = failure_reference()
        log.exception("Failure %s while answering", reference)
        await without_thumbs(cl.ErrorMessage(content=failure_notice(error, reference, session_language()))).send()


async def answer_message(message: cl.Message) -> None:
    language = session_language()
    if message.command == DASHBOARD_COMMAND:
        await dashboard.show_dashboard(current_user(), language)
        return
    if message.command == KEYS_COMMAND:
        await keys.show_keys(current_user(), language)
        return
    across_library = message.command == LIBRARY_COMMAND
    if across_library and not message.content.strip() and not message.elements:
        await documents.show_library(current_user(), language)
        return
    if (turn := await answers.user_turn_of(message, current_user(), language, across_library)) is None:
        return
    await answer_turn(turn, across_library, language)


async def answer_turn(turn: HumanMessage, across_library: bool, language: str) -> None:
    """Answer the user's `turn` in the chat's profile, shown the document pages it asks about."""
    runtime = serving()
    # The thread remembers its settings, so a resumed chat continues with them.
    await runtime.data_layer.update_thread(cl.context.session.thread_id, metadata={"chat_settings": chat_settings()})
    history = cl.user_session.get("history")

    def keep(reply: cl.Message) -> None:
        history.extend([turn, model_turn(reply)])

    pages = await documents.pages_for_turn(history, turn, current_user(), across_library)
    profile = current_profile()
    if profile.is_arena:
        await arena.battle(history.copy(), turn, current_user(), language, keep, pages)
    else:
        await respond(history.copy(), turn, language, keep, profile.adapter, pages=pages)


@cl.action_callback(ASK_WITHOUT_FILES)
async def ask_without_files(action: cl.Action) -> None:
    """The question of a message whose attachments were refused, answered without them (as the button issued
    it: chainlit_fixes.remember_issued_actions), so what the user typed is not lost."""
    payload, language = action.payload, session_language()
    await action.remove()
    turn = user_turn(payload["question"], [], payload["prompt_id"])
    await answers.as_stoppable_task(answer_turn(turn, payload["library"], language), language)


@cl.action_callback("regenerate")
async def regenerate(action: cl.Action) -> None:
    """Another answer to the same user message, beside the old ones (chat/ui/siblings.py)."""
    history, language = cl.user_session.get("history"), session_language()
    prompt_id, adapter = action.payload.get("prompt_id"), current_profile().adapter
    if not await siblings.regenerate(history, prompt_id, adapter, current_user(), language):
        await refuse_click(language)


@cl.action_callback("compare")
async def compare(action: cl.Action) -> None:
    """Store which of two answers is better (a, b, tie or both bad); choosing again replaces it."""
    payload, language = action.payload, session_language()
    try:
        await serving().preferences.compare(current_user(), payload["a"], payload["b"], payload["choice"])
    except (NotYours, KeyError, ValueError):
        await refuse_click(language)
        return
    await show_choices(payload["b"], COMPARE, redrawn_comparison(action, language))
    await siblings.chosen(payload["b"])


@cl.action_callback("vote")
async def vote(action: cl.Action) -> None:
    """Settle the battle with the blind vote, then reveal who wrote which answer."""
    await arena.vote(action, current_user(), session_language())


@cl.action_callback(documents.REMOVE_DOCUMENT)
async def remove_document(action: cl.Action) -> None:
    """A Library list's button: that document out of the user's library (as the button issued it)."""
    await documents.remove_from_library(action, current_user(), session_language())


@cl.action_callback(keys.NEW_KEY)
async def new_api_key(action: cl.Action) -> None:
    """The API keys list's button: a new key, shown once."""
    await keys.make_key(current_user(), session_language())


@cl.action_callback(keys.REVOKE_KEY)
async def revoke_api_key(action: cl.Action) -> None:
    """An API keys list's button: that key ended (as the button issued it)."""
    await keys.revoke(action, current_user(), session_language())


@cl.action_callback(dashboard.FILTER)
async def filter_dashboard(action: cl.Action) -> None:
    """The dashboard again, narrowed to one contender (or to none: all of them)."""
    contender = action.payload.get("contender")
    await dashboard.show_dashboard(
        current_user(), session_language(), contender if isinstance(contender, str) and contender else None
    )


# Reasons and corrections -----------------------------------------------------------------------


@cl.on_feedback
async def offer_reasons(rating: Feedback) -> None:
    """After a thumb, offer reasons for it; after a thumbs down, also to write the answer wanted."""
    runtime = serving()
    rated = await runtime.preferences.answer_for_run(current_user(), rating.forId)
    if rated is not None:
        await show_rating(rated, runtime.settings, session_language())


@cl.action_callback("reason")
async def reason(action: cl.Action) -> None:
    language = session_language()
    if answer := await feedback.clicked_answer(action, current_user(), language):
        await feedback.toggle_reason(answer, action.payload.get("reason"), current_user(), language)


@cl.action_callback("correct")
async def correct(action: cl.Action) -> None:
    language = session_language()
    if answer := await feedback.clicked_answer(action, current_user(), language):
        await feedback.ask_for_correction(answer, current_user(), language)


# The session -----------------------------------------------------------------------------------


def current_user() -> str:
    return cl.context.session.user.identifier


def session_language() -> str:
    return language_of(cl.context.session.language)


def current_profile() -> Profile:
    """The chat's profile; the default one if the chat has none or its adapter is gone."""
    return serving().profiles.get(cl.user_session.get("chat_profile"))
