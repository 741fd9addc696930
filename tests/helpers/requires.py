"""What a test needs from the machine (a PostgreSQL server, its tools, HAProxy): missing, the test is skipped with
the reason, or failed under CI, which must run every test."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, ci_must: str) -> NoReturn:
    """Skip the test for `reason`; with CI set, fail it, saying what CI must test (`ci_must`)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}. CI must test {ci_must}.")
    pytest.skip(reason)
