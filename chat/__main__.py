"""Loupe's command line.

    python -m chat serve                 start the web app (what `make run` does)
    python -m chat vllm                  start a vLLM server for LOUPE_BACKEND=vllm (what `make vllm` does)
    python -m chat migrate               bring the database schema up to date
    python -m chat users list            list accounts
    python -m chat users add NAME        create an account (asks for the password)
    python -m chat users passwd NAME     change an account's password
    python -m chat users link IDENTITY ACCOUNT
                                         let a sign-in provider's user (github:alice) sign in to ACCOUNT
    python -m chat users unlink IDENTITY give the provider's user their own account again
    python -m chat keys add USER [--name NAME] [--expires DAYS]
                                         make an API key for USER; the key alone is the last line printed
    python -m chat keys list USER        list USER's API keys (their names, never the keys)
    python -m chat keys revoke USER NAME end USER's API key NAME at once
    python -m chat export --format F --out DIR [--since DATE] [--until DATE] [--adapter NAME]
                          [--user-hash-salt SALT]
                                         write preference data for training (docs/preference-data.md)
    python -m chat stats                 count conversations, feedback and the preference data they give
    python -m chat leaderboard [--json]  rank the adapters by their blind A/B battles in the arena
    python -m chat promote NAME [--force]
                                         make adapter NAME (or "base") the profile new chats start with,
                                         if the arena's evidence says it beats the current default

Passwords are asked for twice on a terminal, or read as one line from standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from chat.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def serve() -> None:
    """Build Loupe's app from the settings (chat/server.py) and serve it on LOUPE_HOST:LOUPE_PORT. The model
    loads while the server starts. If any of it fails (a setting, the login secret, the migration, the model,
    the vLLM server), the process ends with the reason instead of serving broken."""
    import uvicorn
    from sqlalchemy.exc import ArgumentError

    from chat.server import create_app
    from chat.store.accounts import SecretUnavailable

    # Loupe's log, with its time and source, on standard output (as Chainlit's own command line set it up).
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s"
    )
    # What can stop the build: a setting out of range (pydantic's ValueError), a database URL SQLAlchemy cannot
    # read, the login secret, a folder this user may not write. Each message says which.
    try:
        settings = get_settings()
        app = create_app(settings)
    except (ValueError, ArgumentError, SecretUnavailable, OSError) as error:
        could_not_start(str(error))
    print(f"Loupe: starting on http://{settings.host}:{settings.port}", flush=True)
    # asyncio's own loop, as Chainlit runs it (uvloop would refuse its re-entrant calls); errors only in the log.
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, loop="asyncio", log_level="error")
    )
    try:
        server.run()
    finally:  # uvicorn stops before taking a request when start-up fails (chat/app.py, start_server)
        if (failure := app.state.runtime.failure) is not None:
            # uvicorn's own sys.exit(3) ends the event loop's task: asyncio would log it again after the reason.
            logging.getLogger("asyncio").disabled = True
            could_not_start(failure)


def could_not_start(reason: str) -> NoReturn:
    """End `serve` with status 1 and one line saying why, the last thing in its output."""
    raise SystemExit(f"Loupe could not start: {reason}")


def serve_vllm() -> None:
    """Replace this process with a vLLM server for LOUPE_BACKEND=vllm, with flags from Loupe's settings."""
    from models.checkpoint import load_processor, pick_device
    from models.images import ImageBudget
    from models.vllm_client import VLLM_PYTHON, server_command

    settings = get_settings()
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"Error: no vLLM environment at {VLLM_PYTHON.parent.parent}; `make vllm` installs it.")
    device = pick_device(settings.device).type
    budget = ImageBudget.of(load_processor(settings.model), device, settings.min_pixels, settings.max_pixels)
    command, environment = server_command(
        settings.model,
        settings.vllm_model,
        settings.vllm_url,
        max_model_len=settings.context_tokens,
        max_images=settings.images_per_prompt,
        budget=budget,
        api_key=settings.vllm_api_key,
        on_gpu=device == "cuda",
    )
    print(f"Loupe: starting vLLM for {settings.model} at {settings.vllm_url}:\n  {' '.join(command)}", flush=True)
    os.execve(command[0], command, {**os.environ, **environment})


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise SystemExit("The two passwords differ; nothing was changed.")
    return password


async def manage_users(action: str, name: str | None, account: str | None = None) -> None:
    from chat.store.accounts import AccountError, add_user, link, list_accounts, set_password, unlink
    from chat.store.database import session_factory

    async with database() as engine:
        sessions = session_factory(engine)
        try:
            if action == "list":
                for listed in await list_accounts(sessions):
                    login = "password" if listed.has_password else "external login"
                    login = f"signs in as {listed.linked_to}" if listed.linked_to else login
                    print(f"{listed.identifier}\t{listed.created_at:%Y-%m-%d}\t{login}")
            elif action == "add":
                await add_user(sessions, name, read_password())
                print(f"Created user '{name}'.")
            elif action == "passwd":
                await set_password(sessions, name, read_password())
                print(f"Changed the password of '{name}'.")
            elif action == "link":
                await link(sessions, name, account)
                print(f"'{name}' now signs in to '{account}'; its earlier logins have ended.")
            elif action == "unlink":
                account = await unlink(sessions, name)
                print(f"'{name}' signs in to its own account again; every login of '{account}' has ended.")
        except AccountError as error:
            raise SystemExit(f"Error: {error}.") from None


async def manage_keys(args: argparse.Namespace) -> None:
    from chat.store.database import session_factory
    from chat.store.keys import KeyRefused, add_key, list_keys, revoke_key
    from chat.store.rows import utcnow

    async with database() as engine:
        sessions = session_factory(engine)
        try:
            if args.action == "add":
                name, key = await add_key(sessions, args.user, args.name, args.expires)
                ends = f", expiring in {args.expires:g} days" if args.expires else ""
                print(f"API key '{name}' of '{args.user}'{ends}. It is shown this once; keep it secret:")
                print(key)
            elif args.action == "list":
                now = utcnow()
                for key in await list_keys(sessions, args.user):
                    expires = f"expires {key.expires_at:%Y-%m-%d %H:%M}" if key.expires_at else "never expires"
                    expires = "EXPIRED" if key.expired(now) else expires
                    used = f"last used {key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never used"
                    print(f"{key.name}\tmade {key.created_at:%Y-%m-%d %H:%M}\t{expires}\t{used}")
            elif not await revoke_key(sessions, args.user, args.name):
                raise SystemExit(f"Error: '{args.user}' has no API key named '{args.name}'.")
            else:
                print(f"Revoked the API key '{args.name}' of '{args.user}': it is refused from now on.")
        except KeyRefused as error:
            raise SystemExit(f"Error: {error}.") from None


def migrate() -> str:
    """Bring LOUPE_DATABASE_URL's schema up to date (waiting for another process's migration, if one runs),
    or end the command saying why; returns the URL."""
    from chat.store.database import MigrationFailed, upgrade

    url = get_settings().database_url
    try:
        upgrade(url)
    except MigrationFailed as error:
        raise SystemExit(f"Error: {error}.") from None
    return url


@asynccontextmanager
async def database() -> AsyncIterator[AsyncEngine]:
    """An engine on LOUPE_DATABASE_URL, with the schema brought up to date first; disposed of afterwards."""
    from chat.store.database import create_engine

    engine = create_engine(migrate())
    try:
        yield engine
    finally:
        await engine.dispose()


async def export_preferences(args: argparse.Namespace) -> None:
    from chat.dataset.export import ExportError, ExportRequest, export, installation_salt, why_nothing
    from chat.store.files import ContentStore

    settings = get_settings()
    salt = args.user_hash_salt
    try:
        if not salt:  # not given, or given empty (`--user-hash-salt "$LOUPE_EXPORT_SALT"` with the variable unset)
            salt, kept_in = installation_salt(settings.data_dir)
            if args.user_hash_salt is not None:
                print(f"--user-hash-salt is empty: the pseudonyms use this installation's salt ({kept_in}) instead.")
    except ExportError as error:
        raise SystemExit(f"Error: {error}") from None
    request = ExportRequest(
        format=args.format,
        out=args.out,
        since=args.since,
        until=args.until,
        adapter=args.adapter,
        user_hash_salt=salt,
    )
    images = ContentStore(settings.files_dir)
    async with database() as engine:
        try:
            summary = await export(engine, images.path, request)
        except ExportError as error:
            raise SystemExit(f"Error: {error}") from None
    by_rule = ", ".join(f"{rule}: {count}" for rule, count in sorted(summary.by_rule.items()))
    print(f"Wrote {summary.rows} rows ({by_rule or 'none'}) and {summary.images} images to {args.out}.")
    for reason, count in sorted(summary.unselected.items()):
        print(f"Not selected: {count} rows, {reason}.")
    for reason, count in sorted(summary.left_out.items()):
        print(f"Left out {count} rows: {reason}.")
    if nothing := why_nothing(summary):
        print(nothing)


async def print_stats() -> None:
    from chat.dataset.stats import collect, table

    async with database() as engine:
        print(table(await collect(engine)))


async def print_leaderboard(as_json: bool) -> None:
    from chat.arena import leaderboard
    from chat.store.database import session_factory
    from models.adapters import AdapterDirectory

    settings = get_settings()
    async with database() as engine:
        board = await leaderboard.current_board(
            session_factory(engine), AdapterDirectory(settings.adapters_dir), settings
        )
    print(leaderboard.as_json(board) if as_json else leaderboard.as_markdown(board))


async def promote(name: str, force: bool) -> None:
    """Promote NAME when the arena says it beats the current default (or when forced), showing both standings."""
    from chat.arena import leaderboard
    from chat.arena.profiles import Profiles, UnknownAdapter
    from chat.store.database import session_factory
    from models.adapters import AdapterDirectory

    settings = get_settings()
    adapters = AdapterDirectory(settings.adapters_dir)
    profiles = Profiles(adapters, settings.data_dir, settings.adapter)
    try:
        candidate = leaderboard.contender_of(profiles.named(name))
    except UnknownAdapter as error:
        raise SystemExit(f"Error: {error}.") from None
    default = leaderboard.contender_of(profiles.default().adapter)
    if candidate == default:
        print(f"'{name}' is already the default.")
        return
    async with database() as engine:
        board = await leaderboard.current_board(session_factory(engine), adapters, settings)
    shown = {standing.contender: standing for standing in board.standings}
    for contender, role in ((candidate, "candidate"), (default, "current default")):
        standing = shown.get(contender)
        print(f"{role}: " + (leaderboard.standing_line(standing) if standing else f"{contender}: no counted battles"))
    if (objections := leaderboard.objections_to_promoting(board, candidate, default)) and not force:
        raise SystemExit(f"Not promoted: {'; '.join(objections)}. Promote anyway with --force.")
    profiles.promote(name)
    forced = " despite: " + "; ".join(objections) if objections else ""
    print(f"New chats now start with '{name}' (open chats keep their profile){forced}.")


def iso_time(text: str) -> datetime:
    from chat.store.rows import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an ISO date or time such as 2026-11-01") from None


def main(argv: list[str] | None = None) -> None:
    from chat.dataset.export import FORMATS
    from chat.store.generations import BASE

    parser = argparse.ArgumentParser(
        prog="python -m chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="start the web app")
    commands.add_parser("vllm", help="start a vLLM server for LOUPE_BACKEND=vllm (what `make vllm` does)")
    commands.add_parser("migrate", help="bring the database schema up to date")
    users = commands.add_parser("users", help="manage accounts").add_subparsers(dest="action", required=True)
    users.add_parser("list", help="list accounts")
    users.add_parser("add", help="create an account").add_argument("name")
    users.add_parser("passwd", help="change a password").add_argument("name")
    linking = users.add_parser("link", help="let a sign-in provider's user sign in to an account")
    linking.add_argument("name", metavar="identity", help="provider:name, as `users list` shows it (github:alice)")
    linking.add_argument("account", help="the account it signs in to from now on")
    users.add_parser("unlink", help="give a provider's user their own account again").add_argument(
        "name", metavar="identity"
    )
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    adding = keys.add_parser("add", help="make an API key; the key is shown once")
    adding.add_argument("user")
    adding.add_argument("--name", help="what the key is listed and revoked by (default: key-1, key-2, ...)")
    adding.add_argument("--expires", type=float, metavar="DAYS", help="refused this many days from now")
    keys.add_parser("list", help="list a user's API keys").add_argument("user")
    revoking = keys.add_parser("revoke", help="end an API key at once")
    revoking.add_argument("user")
    revoking.add_argument("name")
    export = commands.add_parser("export", help="write preference data for training")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, type=Path, help="a new or empty folder")
    export.add_argument("--since", type=iso_time, help="first answer at or after this UTC date or time")
    export.add_argument("--until", type=iso_time, help="first answer before this UTC date or time")
    export.add_argument("--adapter", help=f"only answers written with this adapter ('{BASE}': without one)")
    export.add_argument(
        "--user-hash-salt",
        help="secret mixed into the user and thread pseudonyms; default (and when empty): this installation's own, "
        "made on first use and kept in LOUPE_DATA_DIR",
    )
    commands.add_parser("stats", help="count conversations, feedback and the preference data they give")
    commands.add_parser("leaderboard", help="rank the adapters by their blind A/B battles").add_argument(
        "--json", action="store_true", help="the standings and counts as JSON, for scripts"
    )
    promotion = commands.add_parser("promote", help="make an adapter the default profile, given the evidence")
    promotion.add_argument("name", help='an adapter folder name in LOUPE_ADAPTERS_DIR, or "base"')
    promotion.add_argument(
        "--force", action="store_true", help="promote even if it is provisional or does not clear the default"
    )
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve()
    elif args.command == "vllm":
        serve_vllm()
    elif args.command == "migrate":
        migrate()
        print("The database schema is up to date.")
    elif args.command == "keys":
        asyncio.run(manage_keys(args))
    elif args.command == "export":
        asyncio.run(export_preferences(args))
    elif args.command == "stats":
        asyncio.run(print_stats())
    elif args.command == "leaderboard":
        asyncio.run(print_leaderboard(args.json))
    elif args.command == "promote":
        asyncio.run(promote(args.name, args.force))
    else:
        asyncio.run(manage_users(args.action, getattr(args, "name", None), getattr(args, "account", None)))


if __name__ == "__main__":
    main()
