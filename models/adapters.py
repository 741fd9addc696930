"""LoRA adapters as folders in one directory, served from one copy of the base model.

Every sub-folder holding an `adapter_config.json` is an adapter, named by its folder. Adapters
are found afresh on every look (a newly trained one appears without a restart) and loaded
into the base model when first used, as named peft adapters beside each other. A folder whose
content changed (retrained in place) is reloaded; its version is a hash of the adapter files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
METADATA_FILE = "loupe.json"  # written by `python -m models train`: base model, method, metrics
EVALUATIONS = "evaluations"  # loupe.json's offline results (`python -m models evaluate`), one per data and base


class AdapterError(RuntimeError):
    """An adapter folder cannot be served on this base model; the message says why."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    version: str

    def metadata(self) -> dict[str, Any]:
        """What training wrote about the adapter (empty for adapters trained elsewhere)."""
        try:
            return json.loads((self.path / METADATA_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def latest_evaluation(self) -> dict[str, Any] | None:
        """The newest offline evaluation of this version of the adapter, if any (models/evaluate.py)."""
        mine = [entry for entry in self.metadata().get(EVALUATIONS, []) if entry.get("version") == self.version]
        return max(mine, key=lambda entry: entry["evaluated_at"], default=None)


def adapter_version(folder: Path) -> str:
    """sha256 over the adapter's own files (not checkpoints or reports), shortened to 16 hex digits."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        if (path := folder / name).is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class AdapterDirectory:
    """The adapters in a folder. Versions are cached per file size and mtime, so looking is cheap."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._versions: dict[Path, tuple[tuple, str]] = {}

    def list(self) -> list[Adapter]:
        if not self.folder.is_dir():
            return []
        return [self._adapter(path) for path in sorted(self.folder.iterdir()) if (path / ADAPTER_FILES[0]).is_file()]

    def get(self, name: str) -> Adapter | None:
        return next((adapter for adapter in self.list() if adapter.name == name), None)

    def _adapter(self, path: Path) -> Adapter:
        stamp = tuple(
            (name, (path / name).stat().st_size, (path / name).stat().st_mtime_ns)
            for name in ADAPTER_FILES
            if (path / name).is_file()
        )
        cached = self._versions.get(path)
        if cached is None or cached[0] != stamp:
            self._versions[path] = cached = (stamp, adapter_version(path))
        return Adapter(path.name, path, cached[1])


class AdapterSwitch:
    """Puts the right adapter (or none) in front of the base model for each generation.

    Not thread-safe by itself: use it from the one worker that generates (models.generation
    serves one request at a time), so an adapter never changes under a running generation.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model  # becomes a PeftModel when the first adapter is loaded
        # Adapter name -> its key in peft: one key per version, so a retrained adapter loads
        # beside the old one and the old one is dropped once it is no longer active.
        self.keys: dict[str, str] = {}

    @contextmanager
    def use(self, adapter: Adapter | None) -> Iterator[torch.nn.Module]:
        """The model to generate with: the base alone (peft's adapters off), or with `adapter` on."""
        if adapter is None:
            with self.model.disable_adapter() if self.keys else nullcontext():
                yield self.model
            return
        key = "a" + hashlib.sha256(f"{adapter.name}\0{adapter.version}".encode()).hexdigest()[:16]
        if self.keys.get(adapter.name) != key:
            self._load(adapter, key)
        self.model.set_adapter(key)
        yield self.model

    def _load(self, adapter: Adapter, key: str) -> None:
        from peft import PeftModel

        log.info("Loading LoRA adapter %s (version %s)", adapter.name, adapter.version)
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter.path, adapter_name=key)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=key)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            raise AdapterError(
                f"Could not load the LoRA adapter '{adapter.name}' from {adapter.path}: {error}. "
                "Was it trained for this base model?"
            ) from error
        self.model.eval()
        if (old := self.keys.get(adapter.name)) is not None:
            self.model.set_adapter(key)
            self.model.delete_adapter(old)
        self.keys[adapter.name] = key
