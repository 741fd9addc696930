"""Every setting of Loupe, read from LOUPE_* environment variables or a `.env` file.

Those the model side reads too are inherited from models/settings.py. docs/settings.md documents each
one; `.env.example` lists them with their defaults.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from models.settings import ModelSettings

ASYNC_DRIVERS = {
    "sqlite://": "sqlite+aiosqlite://",
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
}

# Counted battles before a contender is ranked. Against an even opponent, 50 battles still leave its win rate's 95%
# interval at 36% to 64% (1.96 x sqrt(0.25 / 50) = 0.14), about 100 Elo points either way; fewer leave it wider than
# any difference worth ranking on, and one battle resamples to itself in every round: an interval of no width.
ARENA_MIN_BATTLES = 50


class Settings(ModelSettings):
    adapter: str | None = Field(None, description="Adapter new chats use; `python -m chat promote` overrides.")
    max_pixels: int | None = Field(
        None, description="Per-image pixel budget; default 256 visual tokens' worth, 1280 on CUDA (models/images.py)."
    )
    min_pixels: int | None = Field(None, description="Small images are upscaled to at least this; default the model's.")
    context_tokens: int = Field(8192, description="Prompt plus answer budget; oldest turns are dropped first.")
    max_images_per_message: int = Field(4, ge=1)
    max_upload_mb: float = Field(20, gt=0, description="Largest accepted upload per file.")
    max_image_megapixels: float = Field(50, gt=0, description="Larger images are refused before decoding.")
    max_pdf_pages: int = Field(500, ge=1, description="Longest PDF accepted, in pages (a text file: in parts).")
    document_pages: int = Field(3, ge=1, description="Pages of the user's documents shown to the model per question.")
    # PDFs are read in worker processes, each within these limits (models/pdf_pool.py).
    pdf_workers: int = Field(2, ge=1, description="Processes reading PDFs; each user uses at most one at a time.")
    pdf_worker_memory_mb: int = Field(1024, ge=256, description="Memory (address space) of each PDF worker.")
    pdf_page_seconds: float = Field(5, gt=0, description="CPU seconds to read or render one PDF page.")
    pdf_document_seconds: float = Field(60, gt=0, description="CPU seconds to read a whole PDF into the library.")
    backend: Literal["local", "vllm"] = Field("local", description="local: the model in this process; vllm: a server.")
    vllm_url: str = Field("http://127.0.0.1:8100/v1", description="The vLLM server's OpenAI API, ending in /v1.")
    vllm_api_key: str | None = Field(None, description="The key the vLLM server was started with (--api-key).")
    vllm_model: str = Field("loupe", description="The name the vLLM server serves LOUPE_MODEL under.")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(Path(".data"), description="Database file, stored images and the auth secret.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    admin_password: str | None = Field(None, description="Password for the first user, 'admin'; else generated.")
    trusted_user_header: str | None = Field(None, description="Header naming the user, set by an auth proxy.")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Other web origins (scheme://host:port) whose pages may call Loupe; comma-separated."
    )
    login_lifetime_hours: float = Field(168, gt=0, description="How long a login lasts; logout ends it earlier.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        [], description="Proxies (addresses or CIDR networks) whose X-Forwarded-For is read; comma-separated."
    )
    password_checks_at_once: int = Field(1, ge=1, description="argon2 password checks run at once; more wait.")
    write_retry_s: float = Field(
        60, ge=0, description="How long a chat's writes wait out an unreachable database; then the user is told."
    )
    max_message_chars: int = Field(32_000, ge=1, description="Longest message accepted, in characters.")
    messages_per_minute: int = Field(20, ge=1, description="Messages one user may send per minute.")
    pending_uploads_mb: float = Field(100, gt=0, description="Uploads one user may have waiting to be sent.")
    arena_min_battles: int = Field(
        ARENA_MIN_BATTLES, ge=1, description="Counted battles before a contender's rank is more than provisional."
    )
    arena_daily_votes: int = Field(25, ge=1, description="Battles one user may have counted per UTC day.")
    arena_temperature: float = Field(0.7, gt=0, le=2, description="Sampling temperature of every arena answer.")
    arena_top_p: float = Field(1.0, gt=0, le=1, description="Top-p of every arena answer.")
    admins: Annotated[list[str], NoDecode] = Field(
        ["admin"], description="Users whose dashboard shows everyone's data, not only their own; comma-separated."
    )
    reasons_down: Annotated[list[str], NoDecode] = Field(
        ["wrong", "incomplete", "misread_image", "wrong_language", "unsafe", "other"],
        description="Reasons offered after a thumbs down, comma-separated codes.",
    )
    reasons_up: Annotated[list[str], NoDecode] = Field(
        ["correct", "helpful", "clear"], description="Reasons offered after a thumbs up, comma-separated codes."
    )

    @field_validator("reasons_down", "reasons_up", "allowed_origins", "admins", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """'wrong, too_long' -> ['wrong', 'too_long']; origins the same way."""
        if isinstance(value, str):
            return [code.strip() for code in value.split(",") if code.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, names: list[str]) -> list[str]:
        """'10.0.0.1, 10.1.0.0/16' -> ['10.0.0.1/32', '10.1.0.0/16'], checked here: uvicorn, which reads them,
        takes a mistyped entry (or a network with host bits set, '10.1.2.3/16') as a name that never matches."""
        try:
            return [str(ipaddress.ip_network(name, strict=False)) for name in names]
        except ValueError as error:
            raise ValueError(f"{error}: give IP addresses or CIDR networks such as 10.0.0.0/8") from None

    @model_validator(mode="after")
    def _async_database_url(self) -> Settings:
        """Default to SQLite in the data directory; accept plain URLs and use the async drivers."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'loupe.db').resolve()}"
        for plain, async_driver in ASYNC_DRIVERS.items():
            if url.startswith(plain):
                url = async_driver + url.removeprefix(plain)
        self.database_url = url
        return self

    @property
    def files_dir(self) -> Path:
        """Where uploaded images are kept, by content (chat/store/files.py)."""
        return self.data_dir / "files"

    @property
    def images_per_prompt(self) -> int:
        """The most images one prompt holds: a message's own and the document pages shown with it
        (older turns' images give way, chat/conversation.py); a vLLM server is started to accept them."""
        return self.max_images_per_message + self.document_pages


@cache
def get_settings() -> Settings:
    return Settings()


# The chat's settings panel -----------------------------------------------------------------
# Its sliders, as (min, max, step). The page keeps a slider in range, but a client can send any
# value: one outside these is refused, so a chat never stores settings it cannot answer with.
SLIDERS: dict[str, tuple[float, float, float]] = {
    "temperature": (0, 2, 0.05),
    "top_p": (0.05, 1, 0.05),
    "max_new_tokens": (16, 4096, 16),
    "repetition_penalty": (1, 2, 0.05),
}


def checked_chat_settings(
    values: dict[str, Any], prompts: Collection[str], defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The panel values that are valid, and the names of the rest.

    Valid: a known system prompt; a slider's value in its range, or the server's own default for it
    (a model's generation_config may set one outside: Qwen2-VL-Instruct's top_p is 0.001).
    """
    valid: dict[str, Any] = {}
    refused: list[str] = []
    for name, value in values.items():
        if name == "system_prompt" and isinstance(value, str) and value in prompts:
            valid[name] = value
        elif name in SLIDERS and (_in_range(value, *SLIDERS[name][:2]) or value == (defaults or {}).get(name)):
            valid[name] = int(value) if name == "max_new_tokens" else float(value)
        else:
            refused.append(str(name)[:40])
    return valid, refused


def _in_range(value: object, low: float, high: float) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and low <= value <= high
