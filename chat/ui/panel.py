"""The composer's controls: its commands, and the chat settings panel (assistant style and sampling,
checked before a chat answers with them).

Chainlit copies whatever the client sends into the session's chat settings; the chat answers with
the checked copy kept here (chat.settings.checked_chat_settings), and the thread stores that copy.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import chainlit as cl
from chainlit.input_widget import Select, Slider

from chat.prompts import DEFAULT_PROMPT, system_prompts
from chat.settings import SLIDERS, Settings, checked_chat_settings
from chat.ui.runtime import DASHBOARD_COMMAND, KEYS_COMMAND, LIBRARY_COMMAND, command_label, serving
from chat.ui.texts import text
from models.backend import SamplingSettings

CHECKED = "checked_settings"  # the user_session key of the chat's checked settings


async def show_panel(language: str, chosen: object = None) -> None:
    """Send the settings panel and make its values the chat's: the `chosen` ones that are valid (a
    resumed thread's stored settings), the model's defaults for the rest."""
    defaults = default_values(serving().backend.default_sampling)
    valid, _ = checked_chat_settings(chosen if isinstance(chosen, dict) else {}, system_prompts(), defaults)
    use_chat_settings(await settings_panel(language, {**defaults, **valid}).send())


async def offer_commands(language: str) -> None:
    """The composer's commands: Library (ask across all of one's documents, or list them), Dashboard and API keys."""
    commands = [
        {
            "id": command_label(LIBRARY_COMMAND, language),
            "icon": "library",
            "description": text("library_command", language),
        },
        {
            "id": command_label(DASHBOARD_COMMAND, language),
            "icon": "chart-bar",
            "description": text("dashboard_command", language),
        },
        {
            "id": command_label(KEYS_COMMAND, language),
            "icon": "key-round",
            "description": text("keys_command", language),
        },
    ]
    await cl.context.emitter.set_commands([command | {"button": True, "persistent": False} for command in commands])


def take_settings(values: dict[str, Any]) -> list[str]:
    """Take the valid `values` (sent by the client) as the chat's settings; returns the names of the others."""
    valid, refused = checked_chat_settings(values, system_prompts(), default_values(serving().backend.default_sampling))
    use_chat_settings({**chat_settings(), **valid})
    return refused


def use_chat_settings(values: dict[str, Any]) -> None:
    """Make `values` (checked) the chat's settings: what it answers with, and what its thread stores."""
    cl.user_session.set(CHECKED, values)
    cl.context.session.chat_settings = dict(values)  # Chainlit stores these in the thread's metadata


def chat_settings() -> dict[str, Any]:
    """The chat's checked settings (Chainlit's own copy holds whatever the client last sent)."""
    return cl.user_session.get(CHECKED) or {}


def default_values(model_defaults: SamplingSettings) -> dict[str, Any]:
    """The settings a chat starts with: the model's generation defaults and the default prompt."""
    return {**asdict(model_defaults), "system_prompt": DEFAULT_PROMPT}


def chosen_sampling(model_defaults: SamplingSettings) -> tuple[SamplingSettings, str]:
    """The sampling settings and system prompt name chosen in this chat's settings panel."""
    chosen = {**default_values(model_defaults), **chat_settings()}
    sampling = SamplingSettings(
        temperature=float(chosen["temperature"]),
        top_p=float(chosen["top_p"]),
        max_new_tokens=int(chosen["max_new_tokens"]),
        repetition_penalty=float(chosen["repetition_penalty"]),
    )
    return sampling, chosen["system_prompt"]


def arena_sampling(chosen: SamplingSettings, model_defaults: SamplingSettings, settings: Settings) -> SamplingSettings:
    """How the arena samples, whatever the chat chose: the server's temperature and top-p and the model's
    repetition penalty, for every battle alike (as LM Arena does). A chat's temperature 0 would make answer A
    reproducible under each profile, and so tell who wrote it. Only the answer's length stays the chat's.
    """
    return replace(
        model_defaults,
        temperature=settings.arena_temperature,
        top_p=settings.arena_top_p,
        max_new_tokens=chosen.max_new_tokens,
    )


def settings_panel(language: str, defaults: dict[str, Any]) -> cl.ChatSettings:
    """The settings panel, showing `defaults` (the chat's chosen values over the model's defaults)."""
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
