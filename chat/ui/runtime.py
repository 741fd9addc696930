"""The composition root: everything one Loupe server is made of, built from its settings.

`create_app` (chat/server.py) builds the runtime (`build_runtime`: objects only, nothing loaded or
connected) and installs it into Loupe's app and Chainlit's (`install`: Chainlit's configuration,
Loupe's fixes, security and routes, which must be in place before the server starts), and then
mounts Chainlit, which imports chat/app.py, whose handlers reach the runtime through `serving()`. The model is
loaded and the database migrated when the server starts (`Runtime.start`, from on_app_startup),
so importing any module of Loupe has no side effects, and a test can build a runtime of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from chainlit.config import config as chainlit_config
from chainlit.server import app as chainlit_app
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chat.answering import Answering
from chat.arena.profiles import Profiles
from chat.conversation import PromptBuilder
from chat.documents.reading import pdf_workers
from chat.settings import Settings
from chat.store.accounts import ADMIN, PasswordChecks, auth_secret, ensure_admin
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.documents import Documents
from chat.store.files import ContentStore
from chat.store.limits import LimitStore
from chat.store.logins import is_current
from chat.store.outages import CLICKS
from chat.store.preferences import Preferences
from chat.ui.chainlit_fixes import (
    accept_empty_uploads,
    forget_uploads_with_their_session,
    guard_client_messages,
    hide_other_users_threads,
    honour_config_flags,
    keep_contenders_blind,
    remember_issued_actions,
    uploads_in,
)
from chat.ui.datalayer import LoupeDataLayer
from chat.ui.limits import LoginThrottle, RateLimit, UploadQuota
from chat.ui.routes import add_routes
from chat.ui.signin import enable_external_logins, expire_tokens_with_their_login
from chat.ui.texts import TEXTS, text
from chat.ui.uploads import ImageLimits
from chat.ui.web import MB, secure
from models.adapters import AdapterDirectory
from models.backend import Backend
from models.checkpoint import load_model, load_processor, pick_device
from models.generation import Generator
from models.images import ImageBudget
from models.pdf_pool import PdfPool
from models.vllm_client import VllmBackend

log = logging.getLogger(__name__)

# The composer's commands (Chainlit's), the only ones a client message may carry. Library: ask across all
# of one's documents, or, sent empty, list them (chat/ui/documents.py).
LIBRARY_COMMAND = "Library"
DASHBOARD_COMMAND = "Dashboard"  # the leaderboard, feedback, battles and dataset charts (chat/ui/dashboard.py)
KEYS_COMMAND = "Keys"  # the user's API keys: list, make, revoke (chat/ui/keys.py)
COMMANDS = (LIBRARY_COMMAND, DASHBOARD_COMMAND, KEYS_COMMAND)


def command_label(command: str, language: str) -> str:
    """A command as its button names it: Chainlit shows a command's id, so the id is the label in the chat's
    language, and a client message names its command by that label."""
    return text(f"command_{command.lower()}", language)


# Every label a client message may name a command by, in any language, and the command it means.
COMMAND_LABELS = {command_label(command, language): command for command in COMMANDS for language in TEXTS}
PENDING_MESSAGES_OF_FILES = 5  # the pending-upload quota in files: five full messages' worth
MESSAGE_WINDOW_S = 60  # LOUPE_MESSAGES_PER_MINUTE's minute


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    store: ContentStore
    data_layer: LoupeDataLayer
    preferences: Preferences
    documents: Documents
    pdfs: PdfPool  # every PDFium call goes to its worker processes
    profiles: Profiles
    password_checks: PasswordChecks
    # Limits counted in the database, by every process on it (chat/ui/limits.py).
    message_rate: RateLimit
    throttle: LoginThrottle
    uploads: UploadQuota
    secret: str  # Chainlit signs login tokens with it
    background: set[asyncio.Task] = field(default_factory=set)  # writes that outlive their request (chat/api/)
    arena_draw: random.Random = field(default_factory=random.Random)  # which two contenders answer, in which order
    # Set by start(): the model behind the chat, the limits of images for it, and the answering
    # (chat/answering.py) that prompts it.
    backend: Backend = field(init=False)
    image_limits: ImageLimits = field(init=False)
    answering: Answering = field(init=False)
    started: bool = False
    failure: str | None = None  # why start() failed: `python -m chat serve` exits with it

    async def start(self) -> None:
        """What the server does before it takes requests: migrate, create the first admin, load the model."""
        await asyncio.to_thread(upgrade, self.settings.database_url)
        if password := await ensure_admin(self.sessions, self.settings.admin_password):
            print(f"\n  Loupe: first run, created user '{ADMIN}' with password: {password}\n", flush=True)
        self.backend = await start_backend(self.settings)
        precision = f", in {self.backend.precision}" if self.backend.precision else ""
        print(f"Loupe: answering with {self.backend.name} ({self.backend.kind} backend{precision})", flush=True)
        settings = self.settings
        # Every image the model is shown: LOUPE_MIN_PIXELS and LOUPE_MAX_PIXELS, or the model's defaults.
        device = pick_device(settings.device).type
        budget = ImageBudget.of(self.backend.processor, device, settings.min_pixels, settings.max_pixels)
        self.image_limits = ImageLimits(
            max_files=settings.max_images_per_message,
            max_file_mb=settings.max_upload_mb,
            max_megapixels=settings.max_image_megapixels,
            budget=budget,
        )
        self.answering = Answering(
            backend=self.backend,
            prompts=PromptBuilder(self.backend, budget, settings.images_per_prompt),
            context_tokens=min(settings.context_tokens, self.backend.context_length),  # within the model's context
            documents=self.documents,
            store=self.store,
            pdfs=self.pdfs,
            document_pages=settings.document_pages,
            budget=budget,
        )
        self.started = True

    def status(self) -> dict[str, Any] | None:
        """Read by public/loupe.js to show the permanent demo-model banner, and by operators; None until started."""
        if not self.started:
            return None
        backend = self.backend
        return {
            "name": backend.name,
            "demo": backend.demo_reason is not None,
            "backend": backend.kind,
            "precision": backend.precision,
        }

    def add_routes_to(self, app: FastAPI) -> None:
        """Loupe's own HTTP routes (chat/ui/routes.py) on `app`, answered from this runtime."""
        add_routes(
            app,
            self.sessions,
            self.store,
            status=self.status,
            settle_step=self.data_layer.settle_step,
            settle_writes=self.data_layer.settle_writes,
            awaiting_vote=self.preferences.awaiting_vote,
            throttle=self.throttle,
            quota=self.uploads,
        )

    async def login_is_current(self, token: str | None) -> bool:
        """Checked on every socket event; waits out a short outage (Unavailable past it)."""
        lifetime_s = self.settings.login_lifetime_hours * 3600
        return await CLICKS.run(lambda: is_current(self.sessions, token, self.secret, lifetime_s), "a login check")


async def start_backend(settings: Settings) -> Backend:
    """LOUPE_BACKEND's backend: the model loaded into this process, or a client of a vLLM server
    (which counts tokens with the checkpoint's own processor files)."""
    if settings.backend == "vllm":
        processor = await asyncio.to_thread(load_processor, settings.model)
        url, key, served = settings.vllm_url, settings.vllm_api_key, settings.vllm_model
        return await VllmBackend.connect(url, key, served, settings.model, processor)
    generator = Generator(await asyncio.to_thread(load_model, settings.model, settings.device, settings.dtype))
    if generator.demo_reason is not None:
        log.warning(
            "Serving the DEMO model (random weights, answers are noise) because %s. "
            "Point LOUPE_MODEL at a Qwen-VL checkpoint folder or hub id for real answers.",
            generator.demo_reason,
        )
    return generator


def build_runtime(settings: Settings) -> Runtime:
    """Everything a server of these settings is made of; nothing is loaded or connected yet."""
    store = ContentStore(settings.files_dir)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    limits = LimitStore(sessions)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        data_layer=LoupeDataLayer(sessions, store, settings.write_retry_s),
        preferences=Preferences(sessions),
        documents=Documents(sessions),
        pdfs=pdf_workers(settings),
        profiles=Profiles(AdapterDirectory(settings.adapters_dir), settings.data_dir, settings.adapter),
        password_checks=PasswordChecks(sessions, settings.password_checks_at_once),
        message_rate=RateLimit(limits, settings.messages_per_minute, MESSAGE_WINDOW_S),
        throttle=LoginThrottle(limits),
        uploads=UploadQuota(
            store=limits,
            max_bytes=int(settings.pending_uploads_mb * MB),
            max_files=PENDING_MESSAGES_OF_FILES * settings.max_images_per_message,
            keep_s=chainlit_config.project.session_timeout,  # Chainlit deletes a session's files after it
        ),
        secret=auth_secret(settings.data_dir),
    )


class StartFailed(BaseException):
    """Runtime.start failed. A BaseException, so that Chainlit's guard around start-up hooks (which logs an
    Exception and serves on, broken) lets it through: uvicorn then reports "Application startup failed" and stops."""


_serving: Runtime | None = None


def serving() -> Runtime:
    """The runtime this server was installed with, for Chainlit's handlers in chat/app.py."""
    if _serving is None:
        raise RuntimeError("Loupe is not set up in this process: start it with `python -m chat serve` (`make run`).")
    return _serving


def install(runtime: Runtime, app: FastAPI) -> None:
    """Make Loupe's `app` and Chainlit's server serve `runtime`. Call it once, before the server starts:
    middleware cannot be added to a running server, and Chainlit checks for the login secret before starting."""
    global _serving
    settings = runtime.settings
    # The browser enforces max_files; uploads over max_upload_mb are refused while they arrive (chat/ui/web.py).
    uploads = chainlit_config.features.spontaneous_file_upload
    uploads.max_files = settings.max_images_per_message
    uploads.max_size_mb = math.ceil(settings.max_upload_mb)
    chainlit_config.project.user_session_timeout = int(settings.login_lifetime_hours * 3600)
    expire_tokens_with_their_login(settings.login_lifetime_hours)
    os.environ["CHAINLIT_AUTH_SECRET"] = runtime.secret
    # Chainlit starts uvicorn, whose proxy-headers middleware reads X-Forwarded-For from the peers in this
    # variable, 127.0.0.1 and ::1 when unset: then anyone on this host could claim any address and dodge the
    # login throttle. Only the proxies named in LOUPE_TRUSTED_PROXIES are trusted (none: an empty list).
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(settings.trusted_proxies)
    accept_empty_uploads()
    # One folder per process, so that no other instance's shutdown deletes this one's pending uploads.
    uploads_in(settings.data_dir / "uploads")
    guard_client_messages(
        settings.max_message_chars,
        runtime.message_rate,
        runtime.login_is_current,
        runtime.data_layer.step_exists,
        runtime.uploads.sent,
        COMMAND_LABELS,
    )
    forget_uploads_with_their_session(runtime.uploads.sessions_ended)
    remember_issued_actions()
    keep_contenders_blind()
    honour_config_flags()
    hide_other_users_threads()
    max_upload_bytes = int(settings.max_upload_mb * MB)
    secure(
        app,
        chainlit_app,
        settings.allowed_origins,
        max_upload_bytes,
        settings.max_images_per_message,
        runtime.login_is_current,
    )
    runtime.add_routes_to(app)
    enable_external_logins(runtime.sessions, settings.trusted_user_header)
    _serving = runtime
