"""What a user adds after a thumb: the reasons for it, and the answer they wanted instead (a correction)."""

from __future__ import annotations

import chainlit as cl

from chat.store.preferences import AnswerFeedback
from chat.store.rows import NotYours
from chat.ui.chainlit_fixes import MessageRefused, without_thumbs
from chat.ui.choices import reasons_for, refuse_click, show_rating
from chat.ui.runtime import serving
from chat.ui.texts import text

CORRECTION_TIMEOUT_S = 30 * 60  # writing a good answer takes a while


async def clicked_answer(action: cl.Action, user: str, language: str) -> AnswerFeedback | None:
    """The user's answer a button is about; None, with a notice, when it is not theirs."""
    try:
        return await serving().preferences.answer(user, action.payload["answer"])
    except (NotYours, KeyError):
        await refuse_click(language)
        return None


async def toggle_reason(answer: AnswerFeedback, reason: object, user: str, language: str) -> None:
    """Tick or untick one reason for the answer's thumb; only the reasons offered for that thumb count."""
    runtime = serving()
    if answer.rating is None or reason not in reasons_for(answer.rating, runtime.settings):
        await cl.context.emitter.send_toast(text("rate_first", language), "warning")
        return
    ticked = reason in answer.reasons
    answer.reasons = [code for code in answer.reasons if code != reason] + ([] if ticked else [reason])
    await runtime.preferences.set_reasons(user, answer.id, answer.reasons)
    await show_rating(answer, runtime.settings, language)


async def ask_for_correction(answer: AnswerFeedback, user: str, language: str) -> None:
    """Ask for the answer the user wanted and keep it as the preferred answer to that prompt."""
    try:
        written = await cl.AskUserMessage(content=text("correction_ask", language), timeout=CORRECTION_TIMEOUT_S).send()
    except MessageRefused as refused:  # the reply too was checked (chainlit_fixes): too long, malformed, logged out
        await cl.context.emitter.send_toast(text(refused.reason, language, **refused.details), "error")
        return
    finally:
        await cl.context.emitter.task_end()  # Chainlit's ask ends with task_start, meant for a running task
    if written and written["output"].strip():
        await serving().preferences.correct(user, answer.id, written["output"].strip())
        await without_thumbs(cl.Message(content=text("correction_saved", language))).send()
