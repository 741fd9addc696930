"""Chat profiles: the base model, each LoRA adapter in the adapters folder, and the blind A/B arena.

A profile's name is what Chainlit stores for the chat and sends back on resume; the contender
it stands for is the adapter's folder name, or "base" for the model alone. Promotion (which
profile new chats start with) is a small file in the data directory, so that it outlives
restarts and needs none: the profile list is read afresh on every page load.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from chat.store.atomic import replace_atomically
from chat.store.generations import BASE
from models.adapters import Adapter, AdapterDirectory

BASE_PROFILE = "Base model"
ARENA_PROFILE = "Arena"
PROMOTED_FILE = "promoted.json"


class UnknownAdapter(LookupError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    adapter: Adapter | None  # None: the base model, or the arena
    is_arena: bool = False


class Profiles:
    def __init__(self, adapters: AdapterDirectory, data_dir: Path, configured_default: str | None) -> None:
        self.adapters = adapters
        self.promoted_file = data_dir / PROMOTED_FILE
        self.configured_default = configured_default

    def all(self) -> list[Profile]:
        """Base model, then the adapters by name, then the arena (when there is something to compare)."""
        profiles = [Profile(BASE_PROFILE, None)]
        profiles += [Profile(adapter.name, adapter) for adapter in self.adapters.list()]
        if len(profiles) > 1:
            profiles.append(Profile(ARENA_PROFILE, None, is_arena=True))
        return profiles

    def get(self, name: str | None) -> Profile:
        """The profile of that name; the default one for no name or one that is gone (a deleted adapter)."""
        profiles = self.all()
        return next((profile for profile in profiles if profile.name == name), None) or self.default(profiles)

    def default(self, profiles: list[Profile] | None = None) -> Profile:
        profiles = profiles if profiles is not None else self.all()
        wanted = self.promoted() or self.configured_default or BASE
        promoted = (profile for profile in profiles if profile.adapter and profile.adapter.name == wanted)
        return next(promoted, profiles[0])

    def promoted(self) -> str | None:
        try:
            return json.loads(self.promoted_file.read_text())["adapter"]
        except (OSError, ValueError, KeyError):
            return None

    def named(self, contender: str) -> Adapter | None:
        """The adapter of that folder name, None for BASE; UnknownAdapter for any other name."""
        if contender == BASE:
            return None
        if (adapter := self.adapters.get(contender)) is None:
            names = ", ".join(adapter.name for adapter in self.adapters.list()) or "none"
            raise UnknownAdapter(f"no adapter '{contender}' in {self.adapters.folder} (adapters: {names})")
        return adapter

    def promote(self, contender: str) -> None:
        """Make an adapter (or BASE) the profile new chats start with."""
        self.named(contender)
        # Atomically: every running server reads it on each page load, and must never find it half-written.
        replace_atomically(self.promoted_file, (json.dumps({"adapter": contender}) + "\n").encode())

    def contenders(self) -> list[Adapter | None]:
        """Who can be compared in the arena: the base model (None) and every adapter."""
        return [None, *self.adapters.list()]

    def pick_pair(self, rng: random.Random) -> tuple[Adapter | None, Adapter | None]:
        """Two different contenders, drawn uniformly, in random order."""
        first, second = rng.sample(self.contenders(), 2)
        return first, second
