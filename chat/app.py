"""Loupe's Chainlit app: thin handlers over chat.* (prompts, uploads, storage, texts) and models.*.

The model and the database engine are set up once, when Chainlit imports this module, and
shared by every chat. Migrations run and the first admin is created when the server starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import chainlit as cl
import torch
from chainlit.auth import get_token_from_cookies
from chainlit.config import config as chainlit_config
from chainlit.input_widget import Select, Slider
from chainlit.oauth_providers import get_configured_oauth_providers
from chainlit.server import app as server
from chainlit.types import Feedback, ThreadDict
from fastapi import Request, Response
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chat.arena import leaderboard
from chat.arena.profiles import Profile, Profiles
from chat.conversation import PromptBuilder, PromptTooLong, history_from_thread, user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompt, system_prompts
from chat.settings import SLIDERS, checked_chat_settings, get_settings
from chat.store.accounts import ADMIN, auth_secret, check_password, ensure_admin
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.files import ContentStore
from chat.store.logins import TOKEN_VERSION, claims, is_current, revoke, token_version
from chat.store.preferences import BASE, CHOICES, Answer, Preferences
from chat.ui.chainlit_fixes import (
    MessageRefused,
    accept_empty_uploads,
    browser_only_message,
    failure_reference,
    guard_client_messages,
    hide_other_users_threads,
    honour_config_flags,
    remember_issued_actions,
    uploads_in,
)
from chat.ui.datalayer import LoupeDataLayer, NotYours
from chat.ui.limits import LoginThrottle, RateLimit
from chat.ui.routes import UploadQuota, add_routes
from chat.ui.texts import answer_text, language_of, mark_stopped, reason_label, text, with_label
from chat.ui.uploads import ImageLimits, Upload, UploadsRejected, load_fitted_image, read_images
from chat.ui.web import secure
from models.adapters import Adapter, AdapterDirectory
from models.checkpoint import load_model, pick_device
from models.generation import Generator, SamplingSettings, Usage

log = logging.getLogger("loupe")
STREAM_INTERVAL_S = 0.05  # 20 updates a second reads as smooth; fewer emits leave the CPU to the model
CORRECTION_TIMEOUT_S = 30 * 60  # writing a good answer takes a while
PENDING_MESSAGES_OF_FILES = 5  # the pending-upload quota in files: five full messages' worth

settings = get_settings()
max_pixels = settings.image_max_pixels(pick_device(settings.device).type)
loaded = load_model(settings.model, settings.device, settings.dtype)
generator = Generator(loaded)
prompt_builder = PromptBuilder(loaded.processor, settings.min_pixels, max_pixels)
context_tokens = min(settings.context_tokens, loaded.context_length)
default_sampling = SamplingSettings.from_model(loaded.model)
image_limits = ImageLimits(
    max_files=settings.max_images_per_message,
    max_file_mb=settings.max_upload_mb,
    max_megapixels=settings.max_image_megapixels,
    min_pixels=settings.min_pixels,
    max_pixels=max_pixels,
)

# The browser enforces max_files; uploads over max_upload_mb are refused while they arrive (chat/ui/web.py).
uploads_config = chainlit_config.features.spontaneous_file_upload
uploads_config.max_files = settings.max_images_per_message
uploads_config.max_size_mb = math.ceil(settings.max_upload_mb)
chainlit_config.project.user_session_timeout = int(settings.login_lifetime_hours * 3600)
accept_empty_uploads()
# One folder per process, so that no other instance's shutdown deletes this one's pending uploads.
uploads_in(settings.data_dir / "uploads")


store = ContentStore(settings.files_dir)
sessions = session_factory(create_engine(settings.database_url))
data_layer = LoupeDataLayer(sessions, store)
preferences = Preferences(sessions)
profiles = Profiles(AdapterDirectory(settings.adapters_dir), settings.data_dir, settings.adapter)
arena_draw = random.Random()  # which two contenders answer an arena question, and in which order
# Chainlit signs login tokens with this; it must be set before Chainlit checks for it.
secret = os.environ["CHAINLIT_AUTH_SECRET"] = auth_secret(settings.data_dir)


async def login_is_current(token: str | None) -> bool:
    return await is_current(sessions, token, secret)


guard_client_messages(
    settings.max_message_chars, RateLimit(settings.messages_per_minute, 60), login_is_current, data_layer.step_exists
)
remember_issued_actions()
honour_config_flags()
hide_other_users_threads()
secure(server, settings.allowed_origins, int(settings.max_upload_mb * 1024 * 1024), login_is_current)
add_routes(
    server,
    sessions,
    store,
    status=lambda: {"name": loaded.name, "demo": loaded.is_demo},
    settle_step=data_layer.settle_step,
    throttle=LoginThrottle(),
    quota=UploadQuota(
        max_bytes=int(settings.pending_uploads_mb * 1024 * 1024),
        max_files=PENDING_MESSAGES_OF_FILES * settings.max_images_per_message,
    ),
)


@cl.data_layer
def use_loupe_data_layer() -> LoupeDataLayer:
    return data_layer


@cl.on_app_startup
async def prepare_database() -> None:
    await asyncio.to_thread(upgrade, settings.database_url)
    if password := await ensure_admin(sessions, settings.admin_password):
        print(f"\n  Loupe: first run, created user '{ADMIN}' with password: {password}\n", flush=True)


async def signed_in(identifier: str, metadata: dict[str, Any] | None = None) -> cl.User:
    """The user a login token is made for: with their current token version, so logout can end it."""
    return cl.User(
        identifier=identifier, metadata={**(metadata or {}), TOKEN_VERSION: await token_version(sessions, identifier)}
    )


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    return await signed_in(username) if await check_password(sessions, username, password) else None


@cl.on_logout
async def logout(request: Request, response: Response) -> dict[str, bool]:
    """End every login of this account, not only this browser's cookie (which Chainlit clears)."""
    token = get_token_from_cookies(request.cookies) or request.headers.get("authorization", "").removeprefix("Bearer ")
    if (content := claims(token, secret)) and content.get("identifier"):
        await revoke(sessions, content["identifier"])
    return {"success": True}


if settings.trusted_user_header:

    @cl.header_auth_callback
    async def header_login(headers: Any) -> cl.User | None:
        """Behind a proxy that authenticates users and names them in a header."""
        identifier = headers.get(settings.trusted_user_header)
        return await signed_in(identifier) if identifier else None


if get_configured_oauth_providers():  # Chainlit's OAUTH_<PROVIDER>_* environment variables

    @cl.oauth_callback
    async def oauth_login(
        provider_id: str, token: str, raw_user_data: dict[str, str], default_user: cl.User, id_token: str | None
    ) -> cl.User | None:
        """Anyone the configured provider signs in gets an account, named as the provider names them."""
        return await signed_in(default_user.identifier, default_user.metadata)


def session_language() -> str:
    return language_of(cl.context.session.language)


@cl.set_chat_profiles
async def chat_profiles(user: cl.User | None, language: str | None) -> list[cl.ChatProfile]:
    """Read afresh on every page load, so a newly trained adapter shows up without a restart."""
    language, listed = language_of(language), profiles.all()
    default = profiles.default(listed)
    return [
        cl.ChatProfile(name=profile.name, markdown_description=describe(profile, language), default=profile == default)
        for profile in listed
    ]


def describe(profile: Profile, language: str) -> str:
    if profile.is_arena:
        return text("profile_arena", language)
    if profile.adapter is None:
        return text("profile_base", language)
    trained = profile.adapter.metadata()
    details = ""
    if {"method", "created_at"} <= trained.keys():
        details = f", {trained['method']}, {trained['created_at'][:10]}"
    return text("profile_adapter", language, name=profile.name, version=profile.adapter.version, details=details)


def current_profile() -> Profile:
    """The chat's profile; the default one if the chat has none or its adapter is gone."""
    return profiles.get(cl.user_session.get("chat_profile"))


@cl.on_chat_start
async def start() -> None:
    cl.user_session.set("history", [])
    language = session_language()
    use_chat_settings(await settings_panel(language, {}).send())
    if current_profile().is_arena:
        table = leaderboard.as_markdown(leaderboard.standings(await leaderboard.outcomes(sessions)))
        await cl.Message(content=text("arena_intro", language, leaderboard=table)).send()
    if loaded.is_demo:
        await cl.Message(content=text("demo_notice", language, reason=loaded.demo_reason)).send()


@cl.on_chat_resume
async def resume(thread: ThreadDict) -> None:
    """Restore the model's history, with its images, and the chat settings the thread last used."""
    images: dict[str, list] = {}
    for element in thread.get("elements") or []:
        if element.get("objectKey") and element.get("forId"):
            images.setdefault(element["forId"], []).append(element["objectKey"])

    def images_of(step_id: str) -> list:
        return [load_fitted_image(store.path(key), image_limits) for key in images.get(step_id, [])]

    history = await asyncio.to_thread(history_from_thread, thread["steps"], images_of)
    cl.user_session.set("history", history)
    stored = (thread.get("metadata") or {}).get("chat_settings") or {}
    valid, _ = checked_chat_settings(stored if isinstance(stored, dict) else {}, system_prompts(), default_values())
    use_chat_settings(await settings_panel(session_language(), valid).send())
    await restore_actions(thread["id"])


async def restore_actions(thread_id: str) -> None:
    """Chainlit does not store actions: give every answer back its buttons, in their current state."""
    answers, comparisons = await preferences.in_thread(current_user(), thread_id)
    arena = current_profile().is_arena
    siblings: dict[str, list[Answer]] = {}
    for answer in answers:
        if answer.ended == "error":
            continue
        earlier = siblings.setdefault(answer.prompt_id, [])
        if not arena:
            await regenerate_action(answer.prompt_id, session_language()).send(for_id=answer.id)
        if answer.rating is not None:
            await show_choices(answer.id, "rating", rating_actions(answer))
        finished = [sibling for sibling in earlier if sibling.ended == "finished"]
        if answer.ended == "finished" and finished:
            a = finished[-1]
            chosen = comparisons.get((a.id, answer.id))
            if arena:
                await show_choices(answer.id, "vote", comparison_actions("vote", a.id, "A", answer.id, "B", chosen))
            else:
                labels = str(earlier.index(a) + 1), str(len(earlier) + 1)
                await show_choices(
                    answer.id, "compare", comparison_actions("compare", a.id, labels[0], answer.id, labels[1], chosen)
                )
        earlier.append(answer)


@cl.on_settings_update
async def update_settings(values: dict[str, Any]) -> None:
    """Take the valid values; refuse the others with a notice (Chainlit already copied them all in)."""
    valid, refused = checked_chat_settings(values, system_prompts(), default_values())
    use_chat_settings({**chat_settings(), **valid})
    if refused:
        log.warning("Refused chat settings from %s: %s", current_user(), refused)
        await cl.context.emitter.send_toast(
            text("settings_refused", session_language(), names=", ".join(refused)), "error"
        )


def use_chat_settings(values: dict[str, Any]) -> None:
    """Make `values` (checked) the chat's settings: what it answers with, and what its thread stores."""
    cl.user_session.set("checked_settings", values)
    cl.context.session.chat_settings = dict(values)  # Chainlit stores these in the thread's metadata


def chat_settings() -> dict[str, Any]:
    """The chat's checked settings (Chainlit's own copy holds whatever the client last sent)."""
    return cl.user_session.get("checked_settings") or {}


def default_values() -> dict[str, Any]:
    """The settings a chat starts with: the model's generation defaults and the default prompt."""
    return {**asdict(default_sampling), "system_prompt": DEFAULT_PROMPT}


def settings_panel(language: str, chosen: dict[str, Any]) -> cl.ChatSettings:
    """The settings panel, showing `chosen` values where there are some, else the model's defaults."""
    defaults = {**default_values(), **chosen}
    return cl.ChatSettings(
        [
            Select(
                id="system_prompt",
                label=text("setting_prompt", language),
                values=list(system_prompts()),
                initial_value=defaults["system_prompt"],
            ),
            *(
                Slider(
                    id=name,
                    label=text(f"setting_{name}", language),
                    initial=defaults[name],
                    min=low,
                    max=high,
                    step=step,
                )
                for name, (low, high, step) in SLIDERS.items()
            ),
        ]
    )


@cl.on_message
async def answer(message: cl.Message) -> None:
    language = session_language()
    uploads = [Upload(element.name, Path(element.path)) for element in message.elements if element.path]
    try:
        images = await asyncio.to_thread(read_images, uploads, image_limits, language)
    except UploadsRejected as rejected:
        await cl.Message(content=str(rejected)).send()
        return
    if not message.content.strip() and not images:
        await cl.Message(content=text("empty_message", language)).send()
        return
    # The thread remembers its settings, so a resumed chat continues with them.
    await data_layer.update_thread(cl.context.session.thread_id, metadata={"chat_settings": chat_settings()})
    history = cl.user_session.get("history")
    turn = user_turn(message.content, images, message.id)

    def keep(reply: cl.Message) -> None:
        history.extend([turn, model_turn(reply)])

    profile = current_profile()
    if profile.is_arena:
        await arena_battle(history.copy(), turn, language, keep)
    else:
        await respond(history.copy(), turn, language, keep, profile.adapter)


async def respond(
    earlier: list[BaseMessage],
    turn: HumanMessage,
    language: str,
    keep: Callable[[cl.Message], None],
    adapter: Adapter | None,
    label: str | None = None,
    regenerable: bool = True,
) -> cl.Message | None:
    """Answer `turn` after the `earlier` conversation, streaming, with the chat's current settings,
    from the base model or `adapter`.

    `keep(reply)` is called with an answer that belongs in the model's history (finished, or
    stopped with some text), also when Stop cancels this task. `label` goes on the answer's
    first line ("Answer 2 of 2", "Answer A"). Returns the answer sent, if one was.
    """
    sampling, prompt_name = chosen_sampling()
    try:  # tokenizing a long conversation takes long enough to stall every other chat: off the event loop
        prompt = await asyncio.to_thread(
            prompt_builder.build, system_prompt(prompt_name), [*earlier, turn], context_tokens - sampling.max_new_tokens
        )
    except PromptTooLong as too_long:
        await cl.Message(
            content=text("prompt_too_long", language, needed=too_long.needed, budget=too_long.budget)
        ).send()
        return None

    usage, queue_notice = Usage(), QueueNotice(language)
    reply = cl.Message(content="", actions=[regenerate_action(turn.id, language)] if regenerable else [])
    stream = BatchedStream(reply)

    def record() -> dict[str, Any]:
        """What the data layer stores in `generations` beside the answer's message."""
        return {
            "model": loaded.name,
            "adapter": adapter.name if adapter else None,
            "adapter_version": adapter.version if adapter else None,
            "prompt_id": turn.id,
            "context": [message.id for message in earlier if isinstance(message, AIMessage)],
            "settings": {**asdict(sampling), "system_prompt": prompt_name},
            **asdict(usage),
        }

    try:
        async with aclosing(generator.stream(prompt, sampling, usage, queue_notice.show, adapter)) as pieces:
            async for piece in pieces:
                await queue_notice.clear()
                await stream.add(piece)
    except Exception as error:
        reference = failure_reference()
        log.exception("Generation failed (%s)", reference)
        failure = cl.ErrorMessage(content=explain_failure(error, reference, language))
        failure.metadata = {"generation": record()}
        await failure.send()
    finally:  # also runs on Stop, which cancels this task; Chainlit then posts its own notice
        await queue_notice.clear()
        await stream.flush()
        if usage.ended == "finished" or (usage.ended == "stopped" and reply.content):
            keep(reply)
            if usage.ended == "stopped":
                reply.content = mark_stopped(reply.content, language)
            if label:
                reply.content = f"{label}\n\n{reply.content}"
            reply.metadata = {"ended": usage.ended, "generation": record()}
            await reply.send()
    return reply if usage.ended != "error" else None


def chosen_sampling() -> tuple[SamplingSettings, str]:
    """The sampling settings and system prompt name chosen in this chat's settings panel."""
    chosen = chat_settings()
    sampling = SamplingSettings(
        temperature=float(chosen.get("temperature", default_sampling.temperature)),
        top_p=float(chosen.get("top_p", default_sampling.top_p)),
        max_new_tokens=int(chosen.get("max_new_tokens", default_sampling.max_new_tokens)),
        repetition_penalty=float(chosen.get("repetition_penalty", default_sampling.repetition_penalty)),
    )
    return sampling, chosen.get("system_prompt", DEFAULT_PROMPT)


def model_turn(reply: cl.Message) -> AIMessage:
    """An answer as the model's history holds it: what the model wrote, under the message's id."""
    return AIMessage(content=answer_text(reply.content), id=reply.id)


# Regenerate and compare ----------------------------------------------------------------------


@cl.action_callback("regenerate")
async def regenerate(action: cl.Action) -> None:
    """A new answer to the same user message, with the chat's current settings, beside the old ones.

    It goes under its own run step (so it has its own thumbs) below the user message. If that
    message is the last turn, the conversation continues from the new answer.
    """
    language, history = session_language(), cl.user_session.get("history")
    prompt_id = action.payload.get("prompt_id")
    at = next((i for i, turn in enumerate(history) if isinstance(turn, HumanMessage) and turn.id == prompt_id), None)
    if at is None:
        await cl.context.emitter.send_toast(text("not_yours", language), "error")
        return
    siblings = [answer for answer in await preferences.answers_to(current_user(), prompt_id) if answer.ended != "error"]

    def keep(reply: cl.Message) -> None:
        if at + 2 == len(history):  # the last turn: continue from the new answer
            history[at + 1] = model_turn(reply)

    async def generate() -> cl.Message | None:
        # Named like the run Chainlit wraps around on_message, which its page shows as just the answer.
        async with cl.Step(name="on_message", type="run", parent_id=prompt_id):
            number = len(siblings) + 1
            label = text("answer_label", language, number=number, count=number)
            return await respond(history[:at], history[at], language, keep, current_profile().adapter, label)

    reply = await as_stoppable_task(generate())
    if reply is None or not siblings:
        return
    count = len(siblings) + 1
    for number, sibling in enumerate(siblings, start=1):
        if shown := await data_layer.get_step(sibling.id):
            shown["output"] = with_label(shown["output"], number, count, language)
            await cl.context.emitter.update_step(shown)
            await data_layer.update_step(shown)
    finished = [sibling for sibling in siblings if sibling.ended == "finished"]
    if reply.metadata["ended"] == "finished" and finished:
        a = finished[-1]
        buttons = comparison_actions("compare", a.id, str(siblings.index(a) + 1), reply.id, str(count), None)
        await show_choices(reply.id, "compare", buttons)


async def as_stoppable_task(work: Coroutine[Any, Any, cl.Message | None]) -> cl.Message | None:
    """Run an action's work as the session's current task, so the Stop button shows and cancels it.

    Chainlit runs action callbacks inside the HTTP request, where Stop cannot reach them.
    """
    task = asyncio.create_task(work)
    cl.context.session.current_task = task
    await cl.context.emitter.task_start()
    try:
        await asyncio.wait([task])
    finally:
        await cl.context.emitter.task_end()
    if task.cancelled():
        return None
    if error := task.exception():
        reference = failure_reference()
        log.error("Action failed (%s)", reference, exc_info=error)
        await cl.ErrorMessage(content=explain_failure(error, reference, session_language())).send()
        return None
    return task.result()


@cl.action_callback("compare")
async def compare(action: cl.Action) -> None:
    """Store which of two answers is better (a, b, tie or both bad); choosing again replaces it."""
    payload = action.payload
    try:
        await preferences.compare(current_user(), payload["a"], payload["b"], payload["choice"])
    except (NotYours, KeyError, ValueError):
        await cl.context.emitter.send_toast(text("not_yours", session_language()), "error")
        return
    await show_choices(payload["b"], "compare", redrawn_comparison(action))


def comparison_actions(name: str, a: str, label_a: str, b: str, label_b: str, chosen: str | None) -> list[cl.Action]:
    """Which of answers `a` and `b` (labelled "1" and "2", or "A" and "B") is better: shown under `b`."""
    language = session_language()
    labels = {
        "a": text("compare_a", language, number=label_a),
        "b": text("compare_b", language, number=label_b),
        "tie": text("compare_tie", language),
        "both_bad": text("compare_both_bad", language),
    }
    payload = {"a": a, "label_a": label_a, "b": b, "label_b": label_b}
    return [
        choice_action(name, b, choice, label, choice == chosen, {**payload, "choice": choice})
        for choice, label in labels.items()
    ]


def redrawn_comparison(clicked: cl.Action) -> list[cl.Action]:
    """The comparison buttons again, with the one just clicked marked."""
    payload = clicked.payload
    return comparison_actions(
        clicked.name, payload["a"], payload["label_a"], payload["b"], payload["label_b"], payload["choice"]
    )


# The arena -------------------------------------------------------------------------------------


async def arena_battle(earlier: list[BaseMessage], turn: HumanMessage, language: str, keep: Callable) -> None:
    """Answer with two contenders drawn at random, as Answer A and Answer B, then ask which is better.

    Each answer has its own run (so its own thumbs). The conversation goes on from answer A.
    """
    answers = []
    for side, adapter in zip("AB", profiles.pick_pair(arena_draw), strict=True):
        async with cl.Step(name="on_message", type="run", parent_id=turn.id):
            label = text("arena_label", language, side=side)
            reply = await respond(
                earlier, turn, language, keep if side == "A" else lambda reply: None, adapter, label, regenerable=False
            )
        if reply is None or reply.metadata["ended"] != "finished":
            return
        answers.append(reply)
    a, b = answers
    await show_choices(b.id, "vote", comparison_actions("vote", a.id, "A", b.id, "B", None))


@cl.action_callback("vote")
async def vote(action: cl.Action) -> None:
    """Store the blind vote as a battle (and a comparison), then reveal who wrote which answer."""
    language, payload = session_language(), action.payload
    try:
        contenders = await preferences.battle(current_user(), payload["a"], payload["b"], payload["choice"])
    except (NotYours, KeyError, ValueError):
        await cl.context.emitter.send_toast(text("not_yours", language), "error")
        return
    await show_choices(payload["b"], "vote", redrawn_comparison(action))
    a, b = (text("base_model", language) if name == BASE else name for name in contenders)
    await cl.Message(content=text("arena_reveal", language, a=a, b=b)).send()


# Reasons and corrections ---------------------------------------------------------------------


@cl.on_feedback
async def offer_reasons(feedback: Feedback) -> None:
    """After a thumb, offer reasons for it; after a thumbs down, also to write the answer wanted."""
    answer = await preferences.answer_for_run(current_user(), feedback.forId)
    if answer is not None:
        await show_choices(answer.id, "rating", rating_actions(answer))


async def clicked_answer(action: cl.Action) -> Answer | None:
    """The user's answer a button is about; None, with a notice, when it is not theirs."""
    try:
        return await preferences.answer(current_user(), action.payload["answer"])
    except (NotYours, KeyError):
        await cl.context.emitter.send_toast(text("not_yours", session_language()), "error")
        return None


@cl.action_callback("reason")
async def toggle_reason(action: cl.Action) -> None:
    language = session_language()
    if (answer := await clicked_answer(action)) is None:
        return
    reason = action.payload.get("reason")
    if answer.rating is None or reason not in reasons_for(answer.rating):
        await cl.context.emitter.send_toast(text("rate_first", language), "warning")
        return
    ticked = reason in answer.reasons
    answer.reasons = [code for code in answer.reasons if code != reason] + ([] if ticked else [reason])
    await preferences.set_reasons(current_user(), answer.id, answer.reasons)
    await show_choices(answer.id, "rating", rating_actions(answer))


@cl.action_callback("correct")
async def correct(action: cl.Action) -> None:
    """Ask for the answer the user wanted and keep it as the preferred answer to that prompt."""
    language = session_language()
    if (answer := await clicked_answer(action)) is None:
        return
    try:
        written = await cl.AskUserMessage(content=text("correction_ask", language), timeout=CORRECTION_TIMEOUT_S).send()
    except MessageRefused as refused:  # the reply too was checked (chainlit_fixes), and was too long or malformed
        await cl.context.emitter.send_toast(text(refused.reason, language, **refused.details), "error")
        return
    finally:
        await cl.context.emitter.task_end()  # Chainlit's ask ends with task_start, meant for a running task
    if written and written["output"].strip():
        await preferences.correct(current_user(), answer.id, written["output"].strip())
        await cl.Message(content=text("correction_saved", language)).send()


def rating_actions(answer: Answer) -> list[cl.Action]:
    """Reasons for the answer's thumb (ticked ones marked), and for a thumbs down, Correct."""
    language = session_language()
    actions = [
        choice_action(
            "reason",
            answer.id,
            code,
            reason_label(code, language),
            code in answer.reasons,
            {"answer": answer.id, "reason": code},
        )
        for code in reasons_for(answer.rating)
    ]
    if answer.rating == 0:
        actions.append(
            cl.Action(
                id=f"correct:{answer.id}",
                name="correct",
                payload={"answer": answer.id},
                label=text("correct", language),
                icon="pencil",
            )
        )
    return actions


def reasons_for(rating: int | None) -> list[str]:
    return {1: settings.reasons_up, 0: settings.reasons_down}.get(rating, [])


# Actions under answers -----------------------------------------------------------------------


def regenerate_action(prompt_id: str, language: str) -> cl.Action:
    return cl.Action(
        name="regenerate", payload={"prompt_id": prompt_id}, label=text("regenerate", language), icon="refresh-cw"
    )


def choice_action(name: str, answer_id: str, value: str, label: str, chosen: bool, payload: dict) -> cl.Action:
    """One button of a group under an answer; its id is stable, so the group can be redrawn in place."""
    return cl.Action(
        id=f"{name}:{answer_id}:{value}",
        name=name,
        payload=payload,
        label=f"✓ {label}" if chosen else label,
    )


async def show_choices(answer_id: str, group: str, actions: list[cl.Action]) -> None:
    """Redraw a group of choices under an answer ("rating": reasons and Correct; "compare").

    Buttons cannot change in Chainlit's UI: every button the group may have is removed (by its
    stable id; unknown ids are ignored), then the current ones are sent.
    """
    if group == "rating":
        ids = [f"reason:{answer_id}:{code}" for code in {*settings.reasons_up, *settings.reasons_down}]
        ids.append(f"correct:{answer_id}")
    else:  # compare, vote
        ids = [f"{group}:{answer_id}:{choice}" for choice in CHOICES]
    for action_id in ids:
        await cl.Action(id=action_id, name=group, payload={}).remove()
    for action in actions:
        await action.send(for_id=answer_id)


def current_user() -> str:
    return cl.context.session.user.identifier


class BatchedStream:
    """Streams text to the browser at most once per STREAM_INTERVAL_S, the first piece at once.

    One socket.io emit per token costs the server about as much CPU as a small model spends
    generating it, so emitting each token would slow the answer down (bench/RESULTS.md).
    """

    def __init__(self, message: cl.Message) -> None:
        self.message = message
        self.pending = ""
        self.sent_at = 0.0

    async def add(self, piece: str) -> None:
        self.pending += piece
        if time.monotonic() - self.sent_at >= STREAM_INTERVAL_S:
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            await self.message.stream_token(self.pending)
            self.pending = ""
            self.sent_at = time.monotonic()


class QueueNotice:
    """A message telling a waiting user their place in the model's queue, removed when served.

    Sent to the browser only, never stored: it is stale once the answer starts. Stored, it cost a
    database write for every waiting user each time the queue moved (50 waiting users: ~40 writes
    per answer), and those fire-and-forget writes could re-insert it after its deletion.
    """

    def __init__(self, language: str) -> None:
        self.language = language
        self.step: dict[str, Any] | None = None

    async def show(self, ahead: int) -> None:
        content = text("queued", self.language, ahead=ahead)
        if self.step is None:
            self.step = dict(browser_only_message(content))
            await cl.context.emitter.send_step(self.step)
        else:
            self.step["output"] = content
            await cl.context.emitter.update_step(self.step)

    async def clear(self) -> None:
        if self.step is not None:
            await cl.context.emitter.delete_step(self.step)
            self.step = None


def explain_failure(error: BaseException, reference: str, language: str) -> str:
    """What the user is told of a failure: what to do, and the reference its details are logged under."""
    if isinstance(error, torch.OutOfMemoryError):
        return text("out_of_memory", language)
    return text("model_error", language, reference=reference)
