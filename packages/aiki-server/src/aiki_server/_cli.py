"""The `aiki-server` command: `serve` (the default) and `migrate`.

Every option has an environment twin (`--db` / `AIKI_DB`, …); an option given on the
command line wins over the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import uvicorn

from aiki_core import ConsoleLogger
from aiki_server.__about__ import __version__
from aiki_server._app import ServerSettings, create_app
from aiki_server._notify import WakeHub
from aiki_server._storage._open import open_database

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_DB = "aiki.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9850


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=_env("AIKI_DB", DEFAULT_DB),
        help="SQLite file path (default ./aiki.db) or postgresql://user@host/db [AIKI_DB]",
    )
    parser = argparse.ArgumentParser(
        prog="aiki-server", description="The Aiki orchestrator.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"aiki-server {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", parents=[common], help="serve the API (the default)")
    commands.add_parser("migrate", parents=[common], help="apply migrations and exit")
    for target in (parser, serve):
        target.add_argument("--host", default=_env("AIKI_HOST", DEFAULT_HOST), help="[AIKI_HOST]")
        target.add_argument(
            "--port",
            type=int,
            default=int(_env("AIKI_PORT", str(DEFAULT_PORT))),
            help="[AIKI_PORT]",
        )
        target.add_argument(
            "--claim-idle-timeout",
            type=float,
            default=float(_env("AIKI_CLAIM_IDLE_TIMEOUT", "90")),
            metavar="SECONDS",
            help="re-queue a run whose worker stopped heartbeating [AIKI_CLAIM_IDLE_TIMEOUT]",
        )
        target.add_argument(
            "--max-body-bytes",
            type=int,
            default=int(_env("AIKI_MAX_BODY_BYTES", str(2 * 1024 * 1024))),
            help="refuse larger request bodies with 413 [AIKI_MAX_BODY_BYTES]",
        )
        target.add_argument(
            "--webhook-secret",
            default=os.environ.get("AIKI_WEBHOOK_SECRET"),
            metavar="SECRET",
            help="signs webhook URLs, at least 32 characters (prefer the env var: arguments"
            " show in ps); default: generated once and kept in the database"
            " [AIKI_WEBHOOK_SECRET]",
        )
        target.add_argument(
            "--public-url",
            default=os.environ.get("AIKI_PUBLIC_URL"),
            metavar="URL",
            help="base URL of webhook URLs, e.g. https://aiki.example.com; default: the"
            " base URL of the request that mints one [AIKI_PUBLIC_URL]",
        )
    return parser


def _db_kind(url: str) -> str:
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


async def _migrate(db_url: str) -> list[int]:
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        return await db.migrate()
    finally:
        await db.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `aiki-server` console script."""
    args = _parser().parse_args(argv)
    log = ConsoleLogger().child({"component": "aiki-server"})
    if args.command == "migrate":
        applied = anyio.run(_migrate, args.db)
        log.info("migrations applied", {"db": _db_kind(args.db), "versions": applied})
        return
    try:
        settings = ServerSettings(
            claim_idle_timeout=timedelta(seconds=args.claim_idle_timeout),
            max_body_bytes=args.max_body_bytes,
            webhook_secret=args.webhook_secret,
            public_url=args.public_url,
        )
    except ValueError as exc:
        _parser().error(str(exc))
    app = create_app(args.db, settings)
    log.info(
        f"aiki-server {__version__} serving on http://{args.host}:{args.port}",
        {"version": __version__, "db": _db_kind(args.db), "address": f"{args.host}:{args.port}"},
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="auto",  # uvloop where it is installed (every platform but Windows)
        log_level="warning",
        access_log=False,
        # in-flight requests finish; long-polls are cut after this many seconds
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    sys.exit(0)
