"""Settings are documented where people look: .env.example and docs/settings.md list every one, with its default."""

from __future__ import annotations

import re

from chat.settings import Settings
from tests.helpers.server import REPO

SETTINGS = {f"LOUPE_{name.upper()}": field for name, field in Settings.model_fields.items()}


def test_env_example_lists_every_setting_and_loads_to_the_defaults() -> None:
    example = REPO / ".env.example"
    assert set(re.findall(r"^(LOUPE_\w+)=", example.read_text(), re.M)) == set(SETTINGS)
    assert Settings(_env_file=example) == Settings(_env_file=None)


def test_the_docs_document_every_setting_with_its_default() -> None:
    table = (REPO / "docs" / "settings.md").read_text()
    for name, field in SETTINGS.items():
        row = re.search(rf"^\| `{name}` \| (.+?) \|", table, re.M)
        assert row, f"docs/settings.md has no row for {name}"
        if field.default is not None:
            default = ",".join(field.default) if isinstance(field.default, list) else str(field.default)
            assert default in row.group(1), f"docs/settings.md's default for {name} is not {default}"
