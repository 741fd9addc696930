"""Loupe's command line: `python -m chat serve` starts the web app with the LOUPE_* settings."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from chat.settings import get_settings

APP = Path(__file__).resolve().parent / "app.py"
REPO = APP.parent.parent


def serve() -> None:
    """Replace this process with `chainlit run`, on LOUPE_HOST:LOUPE_PORT, without opening a browser."""
    settings = get_settings()
    chainlit = shutil.which("chainlit", path=os.path.dirname(sys.executable)) or "chainlit"
    # chat/app.py imports `chat.*` and `models.*` from the repository root. Chainlit's own files
    # (.chainlit/, public/, chainlit.md, uploads in .files/) are found in the working directory.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    print(f"Loupe: starting on http://{settings.host}:{settings.port}", flush=True)
    os.execv(
        chainlit,
        [chainlit, "run", str(APP), "--headless", "--host", settings.host, "--port", str(settings.port)],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="start the web app (what `make run` does)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve()


if __name__ == "__main__":
    main()
