"""The in-app Readme (Chainlit's "Readme" button) is shown in the browser's language.

Chainlit looks for `chainlit_<navigator.language>.md` by that exact name, with no fallback from `ko-KR` to `ko`
as its interface translations have, and reads only files that resolve inside the app root. So this asks
Chainlit's own lookup, in the repository and in an app root laid out as the test servers lay theirs out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chainlit.markdown import get_markdown_str

from tests.helpers.server import REPO, provide_app_files

ENGLISH = (REPO / "chainlit.md").read_text(encoding="utf-8")
KOREAN = (REPO / "chainlit_ko.md").read_text(encoding="utf-8")


@pytest.fixture(params=["repository", "test server"])
def app_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "repository":
        return REPO
    provide_app_files(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("language", "expected"), [("ko-KR", KOREAN), ("ko", KOREAN), ("en-US", ENGLISH)])
def test_the_readme_follows_the_browser_language(app_root: Path, language: str, expected: str) -> None:
    assert get_markdown_str(str(app_root), language) == expected
