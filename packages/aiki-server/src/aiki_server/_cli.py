"""The `aiki-server` command: `serve` (the default), `migrate` and `keys`.

Every option has an environment twin (`--db` / `AIKI_DB`, …); an option given on the
command line wins over the environment.

`serve` refuses (exit status 2) to listen beyond loopback while the database holds no
API key, unless `--require-api-key` is given: such a server answers anyone, in the
namespace `default`. `keys create --namespace NAME` prints a new key once, on stdout
alone, so `KEY=$(aiki-server keys create --namespace billing)` works.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import uvicorn

from aiki_core import AikiError, ConsoleLogger, JsonLogger, LogLevel
from aiki_server import _logs
from aiki_server.__about__ import __version__
from aiki_server._api_keys import (
    ApiKeyRecord,
    any_key,
    checked_namespace,
    create_key,
    list_keys,
    revoke_key,
)
from aiki_server._app import ServerSettings, create_app
from aiki_server._auth import KEY_CACHE_TTL, is_loopback
from aiki_server._clock import from_ms, system_clock
from aiki_server._notify import WakeHub
from aiki_server._storage._open import open_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from aiki_server._storage._database import Database

DEFAULT_DB = "aiki.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9850
REFUSED_TO_BIND = 2
"""Exit status of `serve` refusing a non-loopback address without API keys (as argparse's)."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiki-server", description="The Aiki orchestrator.")
    parser.add_argument("--version", action="version", version=f"aiki-server {__version__}")
    _db_option(parser, _env("AIKI_DB", DEFAULT_DB))
    _serve_options(parser, inherit=False)
    # a subcommand's copy of an option has no default of its own, so the top level's
    # stands: an option given before the subcommand (`--db X keys list`) is kept
    common = argparse.ArgumentParser(add_help=False)
    _db_option(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", parents=[common], help="serve the API (the default)")
    _serve_options(serve, inherit=True)
    commands.add_parser("migrate", parents=[common], help="apply migrations and exit")
    _add_key_commands(commands, common)
    return parser


def _db_option(target: argparse.ArgumentParser, default: str) -> None:
    target.add_argument(
        "--db",
        default=default,
        help="SQLite file path (default ./aiki.db) or postgresql://user@host/db [AIKI_DB]",
    )


_DURATION = re.compile(r"(\d+)(s|m|h|d)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`: a bare number is seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (such as 30d, 12h, 90m, 3600s)"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


def _retention(text: str) -> timedelta | None:
    """A `_duration`, or `forever` (`None`)."""
    return None if text.strip().lower() == "forever" else _duration(text)


def _serve_options(target: argparse.ArgumentParser, *, inherit: bool) -> None:
    """The options of `serve`; with `inherit`, their defaults are the top level's."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if inherit else value

    target.add_argument(
        "--host", default=default(_env("AIKI_HOST", DEFAULT_HOST)), help="[AIKI_HOST]"
    )
    target.add_argument(
        "--port",
        type=int,
        default=default(int(_env("AIKI_PORT", str(DEFAULT_PORT)))),
        help="[AIKI_PORT]",
    )
    target.add_argument(
        "--claim-idle-timeout",
        type=float,
        default=default(float(_env("AIKI_CLAIM_IDLE_TIMEOUT", "90"))),
        metavar="SECONDS",
        help="re-queue a run whose worker stopped heartbeating [AIKI_CLAIM_IDLE_TIMEOUT]",
    )
    target.add_argument(
        "--cleanup-timeout",
        type=float,
        default=default(float(_env("AIKI_CLEANUP_TIMEOUT", "60"))),
        metavar="SECONDS",
        help="how long a cancelled or timed-out run's cleanup may take [AIKI_CLEANUP_TIMEOUT]",
    )
    target.add_argument(
        "--max-body-bytes",
        type=int,
        default=default(int(_env("AIKI_MAX_BODY_BYTES", str(2 * 1024 * 1024)))),
        help="refuse larger request bodies with 413 [AIKI_MAX_BODY_BYTES]",
    )
    target.add_argument(
        "--max-tasks-per-run",
        type=int,
        default=default(int(_env("AIKI_MAX_TASKS_PER_RUN", "10000"))),
        metavar="COUNT",
        help="task calls one run may record; a run that needs more continues as new"
        " [AIKI_MAX_TASKS_PER_RUN]",
    )
    target.add_argument(
        "--max-payload-bytes",
        type=int,
        default=default(int(_env("AIKI_MAX_PAYLOAD_BYTES", str(2 * 1024 * 1024)))),
        metavar="BYTES",
        help="refuse a larger input, result or event data with 413 [AIKI_MAX_PAYLOAD_BYTES]",
    )
    target.add_argument(
        "--max-events-per-run",
        type=int,
        default=default(int(_env("AIKI_MAX_EVENTS_PER_RUN", "10000"))),
        metavar="COUNT",
        help="events one run may hold; more are refused with 409 [AIKI_MAX_EVENTS_PER_RUN]",
    )
    target.add_argument(
        "--max-history-per-run",
        type=int,
        default=default(int(_env("AIKI_MAX_HISTORY_PER_RUN", "100000"))),
        metavar="COUNT",
        help="history one run may write (status moves, new task calls); the run then fails"
        " [AIKI_MAX_HISTORY_PER_RUN]",
    )
    target.add_argument(
        "--webhook-rate-limit",
        type=int,
        default=default(int(_env("AIKI_WEBHOOK_RATE_LIMIT", "60"))),
        metavar="PER_MINUTE",
        help="deliveries one webhook URL may make a minute, per replica; more are refused"
        " with 429 [AIKI_WEBHOOK_RATE_LIMIT]",
    )
    target.add_argument(
        "--retention",
        type=_retention,
        default=default(_env("AIKI_RETENTION", "30d")),
        metavar="DURATION",
        help="delete an ended run this long after its end (30d, 12h, 90m, 3600s, or"
        " 'forever'); a namespace may set its own [AIKI_RETENTION]",
    )
    target.add_argument(
        "--worker-retention",
        type=_duration,
        default=default(_env("AIKI_WORKER_RETENTION", "1d")),
        metavar="DURATION",
        help="forget a worker not heard from for this long [AIKI_WORKER_RETENTION]",
    )
    target.add_argument(
        "--fair-share-quantum",
        type=float,
        default=default(float(_env("AIKI_FAIR_SHARE_QUANTUM", "1"))),
        metavar="SECONDS",
        help="how far apart one concurrency key's queued runs are spread in the claim order"
        " [AIKI_FAIR_SHARE_QUANTUM]",
    )
    target.add_argument(
        "--priority-step",
        type=float,
        default=default(float(_env("AIKI_PRIORITY_STEP", "60"))),
        metavar="SECONDS",
        help="how much earlier one level of priority claims a run; a run waiting 9 steps"
        " goes first whatever its priority [AIKI_PRIORITY_STEP]",
    )
    target.add_argument(
        "--webhook-secret",
        default=default(os.environ.get("AIKI_WEBHOOK_SECRET")),
        metavar="SECRET",
        help="signs webhook URLs, at least 32 characters (prefer the env var: arguments"
        " show in ps); default: generated once and kept in the database"
        " [AIKI_WEBHOOK_SECRET]",
    )
    target.add_argument(
        "--public-url",
        default=default(os.environ.get("AIKI_PUBLIC_URL")),
        metavar="URL",
        help="base URL of webhook URLs, e.g. https://aiki.example.com; default: the"
        " base URL of the request that mints one [AIKI_PUBLIC_URL]",
    )
    target.add_argument(
        "--require-api-key",
        action="store_const",
        const="1",
        default=default(_env("AIKI_REQUIRE_API_KEY", "0")),
        help="refuse requests without an API key even while the database holds none"
        " (default: keys are required once one exists) [AIKI_REQUIRE_API_KEY=1]",
    )
    target.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=default(_env("AIKI_LOG_FORMAT", "console")),
        help="one line per record for people, or one JSON object per line [AIKI_LOG_FORMAT]",
    )
    target.add_argument(
        "--log-level",
        choices=[level.name.lower() for level in LogLevel],
        default=default(_env("AIKI_LOG_LEVEL", "info")),
        help="drop records below this level [AIKI_LOG_LEVEL]",
    )
    target.add_argument(
        "--access-log",
        action="store_const",
        const="1",
        default=default(_env("AIKI_ACCESS_LOG", "0")),
        help="log one line per HTTP request, at info level [AIKI_ACCESS_LOG=1]",
    )
    target.add_argument(
        "--no-push-delivery",
        dest="push_delivery",
        action="store_const",
        const="0",
        default=default(_env("AIKI_PUSH_DELIVERY", "1")),
        help="push no runs to registered endpoints: their runs wait for pulling workers"
        " [AIKI_PUSH_DELIVERY=0]",
    )
    target.add_argument(
        "--push-cool-off",
        type=float,
        default=default(float(_env("AIKI_PUSH_COOL_OFF", "30"))),
        metavar="SECONDS",
        help="how long an endpoint that failed 5 pushes in a row is left alone before one"
        " trial push; doubles per further failure, up to ten times this [AIKI_PUSH_COOL_OFF]",
    )
    target.add_argument(
        "--remote-task-wait",
        type=float,
        default=default(float(_env("AIKI_REMOTE_TASK_WAIT", "20"))),
        metavar="SECONDS",
        help="how long a remote task attempt is waited for in the worker's request; a longer"
        " one goes on without it, its run suspended [AIKI_REMOTE_TASK_WAIT]",
    )
    target.add_argument(
        "--metrics-namespace-label",
        action="store_const",
        const="1",
        default=default(_env("AIKI_METRICS_NAMESPACE_LABEL", "0")),
        help="label run and queue metrics with their namespace (one series per"
        " namespace: keep it off with many namespaces) [AIKI_METRICS_NAMESPACE_LABEL=1]",
    )


def _add_key_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(
        dest="keys_command", metavar="{create,list,revoke}", required=True
    )
    create = key_commands.add_parser(
        "create",
        parents=[common],
        help="create a key for a namespace; prints the key, once (only its hash is kept)",
    )
    create.add_argument(
        "--namespace",
        required=True,
        help="the namespace the key opens: letters, digits and _.:/- (at most 200)",
    )
    key_commands.add_parser(
        "list", parents=[common], help="list every key: id, namespace, created, revoked"
    )
    revoke = key_commands.add_parser(
        "revoke",
        parents=[common],
        help=f"revoke a key; running servers refuse it within {KEY_CACHE_TTL:g} s",
    )
    revoke.add_argument("id", help="the key's id (the ULID after `aiki_`)")


def _db_kind(url: str) -> str:
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


@asynccontextmanager
async def _database(db_url: str) -> AsyncIterator[tuple[Database, list[int]]]:
    """The database, open and migrated, with the migration versions just applied."""
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        yield db, await db.migrate()
    finally:
        await db.close()


async def _migrate(db_url: str) -> list[int]:
    async with _database(db_url) as (_db, applied):
        return applied


async def _has_keys(db_url: str) -> bool:
    async with _database(db_url) as (db, _applied):
        return await any_key(db)


def _flag(parser: argparse.ArgumentParser, name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in _TRUE + _FALSE:
        parser.error(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {value!r}")
    return lowered in _TRUE


def _time(ms: int | None) -> str:
    return "-" if ms is None else from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run a `keys` command; its exit status."""
    if args.keys_command == "create":
        try:
            namespace = checked_namespace(args.namespace)
        except AikiError as exc:
            parser.error(exc.message)
        return anyio.run(_create_key, args.db, namespace)
    if args.keys_command == "list":
        return anyio.run(_list_keys, args.db)
    return anyio.run(_revoke_key, args.db, args.id)


async def _create_key(db_url: str, namespace: str) -> int:
    async with _database(db_url) as (db, _applied):
        created = await create_key(db, namespace, system_clock())
    sys.stdout.write(f"{created.key}\n")
    sys.stderr.write(
        f"created API key {created.id} for namespace {namespace!r}: it is shown only"
        " this once, and the server keeps only its hash\n"
    )
    return 0


async def _list_keys(db_url: str) -> int:
    async with _database(db_url) as (db, _applied):
        records = await list_keys(db)
    rows = [("ID", "NAMESPACE", "CREATED", "REVOKED")]
    rows += [(r.id, r.namespace, _time(r.created_at), _time(r.revoked_at)) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        sys.stdout.write("  ".join([*cells, row[3]]) + "\n")
    return 0


async def _revoke_key(db_url: str, key_id: str) -> int:
    now = system_clock()
    async with _database(db_url) as (db, _applied):
        record: ApiKeyRecord | None = await revoke_key(db, key_id, now)
    if record is None:
        sys.stderr.write(f"no API key has the id {key_id!r}\n")
        return 1
    if record.revoked_at != now:
        sys.stderr.write(
            f"API key {key_id} ({record.namespace!r}) was revoked before, at"
            f" {_time(record.revoked_at)}\n"
        )
        return 0
    sys.stderr.write(
        f"revoked API key {key_id} of namespace {record.namespace!r}; running servers"
        f" refuse it within {KEY_CACHE_TTL:g} s\n"
    )
    return 0


def _use_logger(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LogLevel:
    """Write the server's records as `--log-format` and `--log-level` say; the level."""
    if args.log_format not in ("console", "json"):
        parser.error(f"AIKI_LOG_FORMAT must be console or json, got {args.log_format!r}")
    names = [level.name.lower() for level in LogLevel]
    if args.log_level.lower() not in names:
        parser.error(f"AIKI_LOG_LEVEL must be one of {', '.join(names)}, got {args.log_level!r}")
    level = LogLevel[args.log_level.upper()]
    _logs.use((JsonLogger if args.log_format == "json" else ConsoleLogger)(level))
    return level


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `aiki-server` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = _use_logger(parser, args)
    log = _logs.component("aiki-server")
    if args.command == "migrate":
        applied = anyio.run(_migrate, args.db)
        log.info("migrations applied", {"db": _db_kind(args.db), "versions": applied})
        return
    if args.command == "keys":
        sys.exit(_keys(parser, args))
    require_api_key = _flag(parser, "AIKI_REQUIRE_API_KEY", args.require_api_key)
    access_log = _flag(parser, "AIKI_ACCESS_LOG", args.access_log)
    try:
        settings = ServerSettings(
            claim_idle_timeout=timedelta(seconds=args.claim_idle_timeout),
            cleanup_timeout=timedelta(seconds=args.cleanup_timeout),
            max_body_bytes=args.max_body_bytes,
            max_tasks_per_run=args.max_tasks_per_run,
            max_payload_bytes=args.max_payload_bytes,
            max_events_per_run=args.max_events_per_run,
            max_history_per_run=args.max_history_per_run,
            webhook_rate_limit=args.webhook_rate_limit,
            retention=args.retention,
            worker_retention=args.worker_retention,
            fair_share_quantum=timedelta(seconds=args.fair_share_quantum),
            priority_step=timedelta(seconds=args.priority_step),
            webhook_secret=args.webhook_secret,
            public_url=args.public_url,
            require_api_key=require_api_key,
            push_delivery=_flag(parser, "AIKI_PUSH_DELIVERY", args.push_delivery),
            push_cool_off=timedelta(seconds=args.push_cool_off),
            remote_task_wait=timedelta(seconds=args.remote_task_wait),
            metrics_namespace_label=_flag(
                parser, "AIKI_METRICS_NAMESPACE_LABEL", args.metrics_namespace_label
            ),
        )
    except ValueError as exc:
        parser.error(str(exc))
    keys = "required" if require_api_key or anyio.run(_has_keys, args.db) else "open"
    if keys == "open" and not is_loopback(args.host):
        log.error(
            f"refusing to serve on {args.host}: the database holds no API key, so anyone"
            " who reaches the server could use it. Create one with `aiki-server keys"
            " create --namespace NAME`, pass --require-api-key, or bind to 127.0.0.1",
            {"host": args.host, "db": _db_kind(args.db)},
        )
        sys.exit(REFUSED_TO_BIND)
    app = create_app(args.db, settings)
    log.info(
        f"aiki-server {__version__} serving on http://{args.host}:{args.port}",
        {
            "version": __version__,
            "db": _db_kind(args.db),
            "address": f"{args.host}:{args.port}",
            "api_keys": keys,
        },
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        ws="websockets-sansio",  # the client channel (`_channel`)
        ws_per_message_deflate=False,  # small frames: compressing them costs more than it saves
        # a channel frame is a request: its body, under the same limit, and a line
        ws_max_size=max(settings.max_body_bytes + 4096, 16 * 1024 * 1024),
        loop="auto",  # uvloop where it is installed (every platform but Windows)
        log_config=None,  # uvicorn's records go through the server's logger
        access_log=access_log,
        # in-flight requests finish; long-polls are cut after this many seconds
        timeout_graceful_shutdown=5,
    )
    _logs.route_stdlib(level, access_log=access_log)
    uvicorn.Server(config).run()
    sys.exit(0)
