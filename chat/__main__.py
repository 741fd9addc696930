"""Loupe's command line.

    python -m chat serve                 start the web app (what `make run` does)
    python -m chat migrate               bring the database schema up to date
    python -m chat users list            list accounts
    python -m chat users add NAME        create an account (asks for the password)
    python -m chat users passwd NAME     change an account's password

Passwords are asked for twice on a terminal, or read as one line from standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
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


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise SystemExit("The two passwords differ; nothing was changed.")
    return password


async def manage_users(action: str, name: str | None) -> None:
    from chat.accounts import AccountError, add_user, list_accounts, set_password
    from chat.database import create_engine, session_factory, upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    try:
        if action == "list":
            for account in await list_accounts(sessions):
                login = "password" if account.has_password else "external login"
                print(f"{account.identifier}\t{account.created_at:%Y-%m-%d}\t{login}")
        elif action == "add":
            await add_user(sessions, name, read_password())
            print(f"Created user '{name}'.")
        elif action == "passwd":
            await set_password(sessions, name, read_password())
            print(f"Changed the password of '{name}'.")
    except AccountError as error:
        raise SystemExit(f"Error: {error}.") from None
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="start the web app")
    commands.add_parser("migrate", help="bring the database schema up to date")
    users = commands.add_parser("users", help="manage accounts").add_subparsers(dest="action", required=True)
    users.add_parser("list", help="list accounts")
    users.add_parser("add", help="create an account").add_argument("name")
    users.add_parser("passwd", help="change a password").add_argument("name")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve()
    elif args.command == "migrate":
        from chat.database import upgrade

        upgrade(get_settings().database_url)
        print("The database schema is up to date.")
    else:
        asyncio.run(manage_users(args.action, getattr(args, "name", None)))


if __name__ == "__main__":
    main()
