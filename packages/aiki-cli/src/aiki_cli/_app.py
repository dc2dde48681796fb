"""The `aiki` command: its groups, commands, options and exit codes.

Each command opens an `aiki_client.Client` on `--url` / `AIKI_URL` with `--api-key` /
`AIKI_API_KEY`, makes its calls, and prints a table for people or, with `--json`,
the API's own models for scripts. Exit codes: 0 ok, 1 a run that did not complete
(`runs result`, `runs watch`) or a server error, 2 bad usage or input, 3 not found,
4 a refused key. An error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.tree import Tree

from aiki_cli import _render as render
from aiki_cli.__about__ import __version__
from aiki_client import Client
from aiki_core import (
    AikiError,
    AikiTimeoutError,
    AuthenticationError,
    CatchUpPolicy,
    ConcurrencyStrategy,
    ConsoleLogger,
    InvalidRequestError,
    LogLevel,
    NotFoundError,
    OverlapPolicy,
    PermissionDeniedError,
    RunId,
    RunStatus,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from aiki_core.wire import (
    DEFAULT_POOL,
    MAX_DRY_RUN_WAIT,
    MAX_DRY_RUNS_PER_CALL,
    MIGRATABLE_STATUSES,
    RUN_TERMINAL_STATUSES,
    EndpointPage,
    RateLimitPage,
    StartRunRequest,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import BaseModel

    from aiki_client import WorkflowRunHandle
    from aiki_core.wire import (
        CreateEndpointResponse,
        RotateEndpointSecretResponse,
        RunDetail,
        Schedule,
    )

T = TypeVar("T")
Command = TypeVar("Command", bound="Callable[..., Any]")

OK, FAILED, USAGE, NOT_FOUND, AUTH = 0, 1, 2, 3, 4

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

DEFAULT_URL = "http://127.0.0.1:9850"
"""The server's address when neither `--url` nor `AIKI_URL` gives one (the server's default)."""

_CHILD_DEPTH = 5
"""Generations of children `runs show` draws before it stops descending."""
_CHILD_READS = 50
"""Children whose detail `runs show` reads to draw their own children."""


class Exit(Exception):
    """End the command with `code`, its message already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Settings:
    """Where the commands reach the server, and with which key."""

    url: str
    api_key: str | None

    def call(self, work: Callable[[Client], Awaitable[T]]) -> T:
        """Run `work` with a client of this server, and return what it returns."""
        try:
            # its own words go to stderr as one line; the client's notes are not for it
            client = Client(self.url, api_key=self.api_key, logger=ConsoleLogger(LogLevel.WARN))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

        async def go() -> T:
            async with client:
                return await work(client)

        return anyio.run(go)


# -- parsing options --------------------------------------------------------------------


def _json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    """A JSON document given inline, or `@path` for a file's (`@-`: standard input)."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = sys.stdin.read() if value == "@-" else Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise click.BadParameter(f"{value[1:]} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})") from None
    except RecursionError:
        raise click.BadParameter("not JSON this CLI takes (nested too deeply)") from None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _to_duration(value: str) -> timedelta:
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration (such as 30s, 5m, 2h, 1d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """`30s`, `5m`, `2h`, `1d`, `250ms`; a bare number is seconds."""
    return None if value is None else _to_duration(value)


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A moment: ISO 8601 (UTC unless it says otherwise), or a duration ago (`2h`)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return datetime.now(UTC) - _to_duration(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def json_option(command: Command) -> Command:
    """`--json`: print the API's model as JSON instead of a table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
    )(command)


def _print_json(model: BaseModel) -> None:
    click.echo(model.model_dump_json(indent=2))


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"aiki: {message}", markup=False, soft_wrap=True)
    raise Exit(code)


# -- the command tree -------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="AIKI_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The server's address (env AIKI_URL).",
)
@click.option("--api-key", envvar="AIKI_API_KEY", help="An API key (env AIKI_API_KEY).")
@click.version_option(__version__, prog_name="aiki")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None) -> None:
    """See and steer an Aiki server's runs, schedules and workers."""
    ctx.obj = Settings(url, api_key or None)


pass_settings = click.make_pass_decorator(Settings)


@cli.group()
def runs() -> None:
    """List, inspect, watch, start and steer runs."""


@runs.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Only runs in this status (repeat for several).",
)
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--version", help="Only runs of this version.")
@click.option("--reference-id", help="Only the run started under this reference id.")
@click.option("--concurrency-key", help="Only runs under this concurrency key.")
@click.option("--since", callback=_since, help="Created since: ISO 8601, or a duration ago (2h).")
@click.option(
    "--unserved", is_flag=True, help="Only runs not ended whose version no live worker serves."
)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", help="The next page: the cursor the previous page printed.")
@json_option
@pass_settings
def runs_list(
    settings: Settings,
    statuses: tuple[str, ...],
    workflow: str | None,
    version: str | None,
    reference_id: str | None,
    concurrency_key: str | None,
    since: datetime | None,
    unserved: bool,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Runs, newest first."""
    page = settings.call(
        lambda client: client.list_runs(
            workflow=workflow,
            version=version,
            status=list(statuses) or None,
            reference_id=reference_id,
            concurrency_key=concurrency_key,
            created_after=since,
            unserved=unserved,
            limit=limit,
            cursor=cursor,
        )
    )
    if as_json:
        _print_json(page)
        return
    out.print(render.runs_table(page.runs))
    if page.next_cursor is not None:
        out.print(f"\nmore: aiki runs list --cursor {page.next_cursor}", style="dim")


async def _children(
    client: Client, detail: RunDetail, depth: int, budget: list[int]
) -> Tree | None:
    """The run's children, theirs under them, down `depth` generations.

    Each child is drawn from its parent's record; a child's own detail (for its
    children) is read while `budget` lasts, so a run with thousands of children
    stays one screen's worth of requests.
    """
    if not detail.children:
        return None
    tree = Tree(f"{len(detail.children)} child run(s)")
    for record in detail.children:
        node = tree.add(render.child_label(record))
        if depth <= 1 or budget[0] <= 0:
            continue
        budget[0] -= 1
        child = await client.run_handle(record.run_id).detail()
        grandchildren = await _children(client, child, depth - 1, budget)
        if grandchildren is not None:
            node.children.extend(grandchildren.children)
    return tree


@runs.command("show")
@click.argument("run_id")
@json_option
@pass_settings
def runs_show(settings: Settings, run_id: str, as_json: bool) -> None:
    """A run: its tasks and attempts, waits, events, children and history."""

    async def show(client: Client) -> tuple[RunDetail, Tree | None]:
        detail = await client.run_handle(RunId(run_id)).detail()
        children = (
            None if as_json else await _children(client, detail, _CHILD_DEPTH, [_CHILD_READS])
        )
        return detail, children

    detail, children = settings.call(show)
    if as_json:
        _print_json(detail)
    else:
        out.print(render.run_detail(detail, children))


def _ended(detail: RunDetail) -> None:
    """Exit 1, with a line saying how, when the run ended other than completed."""
    if detail.status != RunStatus.COMPLETED:
        reason = f": {detail.error.type}: {detail.error.message}" if detail.error else ""
        _fail(f"run {detail.id} ended {detail.status.value}{reason}", FAILED)


@runs.command("watch")
@click.argument("run_id")
@click.option(
    "--interval", callback=_duration, default="1s", show_default=True, help="Between refreshes."
)
@json_option
@pass_settings
def runs_watch(settings: Settings, run_id: str, interval: timedelta, as_json: bool) -> None:
    """Follow a run live until it ends; exit 1 when it ends other than completed.

    With `--json`, print the run once it ends, as `runs show --json` does.
    """

    async def watch(client: Client) -> RunDetail:
        handle = client.run_handle(RunId(run_id))
        detail = await handle.detail()
        if as_json:
            await handle.wait_for_status(RUN_TERMINAL_STATUSES)
            return await handle.detail()
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            console=out,
        )
        with progress:
            bar = progress.add_task("", total=None)
            shown: set[tuple[str, int, str]] = set()
            while True:
                _report_attempts(progress, detail, shown)
                done = sum(task.status.value == "completed" for task in detail.tasks)
                description = f"{detail.workflow} {detail.version}  {detail.status.value}"
                progress.update(
                    bar, description=description, completed=done, total=len(detail.tasks) or None
                )
                if detail.status in RUN_TERMINAL_STATUSES:
                    return detail
                await _wait_a_while(handle, interval)
                detail = await handle.detail()

    detail = settings.call(watch)
    if as_json:
        _print_json(detail)
    _ended(detail)


async def _wait_a_while(handle: WorkflowRunHandle[Any], interval: timedelta) -> None:
    """Until the run ends, or `interval` passes."""
    try:
        await handle.wait_for_status(RUN_TERMINAL_STATUSES, timeout=interval)
    except AikiTimeoutError:
        pass


def _report_attempts(
    progress: Progress, detail: RunDetail, shown: set[tuple[str, int, str]]
) -> None:
    """A line above the progress bar for each task attempt that ended since the last look."""
    for task in detail.tasks:
        for attempt in task.attempts:
            key = (task.id, attempt.attempt, attempt.status.value)
            if attempt.finished_at is None or key in shown:
                continue
            shown.add(key)
            took = render.duration(attempt.started_at, attempt.finished_at)
            line = render.status(attempt.status.value)
            line.append(f"  {task.name} (attempt {attempt.attempt}, {took})", style="")
            if attempt.error is not None:
                line.append(f"  {attempt.error.type}: {attempt.error.message}", style="red")
            progress.console.print(line)


@runs.command("result")
@click.argument("run_id")
@click.option("--timeout", callback=_duration, help="Give up after this long (exit 1).")
@json_option
@pass_settings
def runs_result(settings: Settings, run_id: str, timeout: timedelta | None, as_json: bool) -> None:
    """Wait for a run to end and print its result; exit 1 when it did not complete."""

    async def result(client: Client) -> object:
        return await client.run_handle(RunId(run_id)).result(timeout=timeout)

    try:
        value = settings.call(result)
    except (WorkflowFailedError, WorkflowCancelledError, AikiTimeoutError) as exc:
        if as_json:
            click.echo(json.dumps({"run_id": run_id, "completed": False, "error": str(exc)}))
        _fail(str(exc), FAILED)
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "completed": True, "result": value}, indent=2))
    else:
        out.print(render.payload(value))


@runs.command("start")
@click.argument("workflow")
@click.argument("version")
@click.option(
    "--input", "input_", callback=_json_value, help="The input as JSON, or @file (@- for stdin)."
)
@click.option("--reference-id", help="Start at most one run under this id (idempotent).")
@click.option("--delay", callback=_duration, help="Start after this long (30s, 5m, 2h).")
@click.option("--pool", default=DEFAULT_POOL, show_default=True)
@click.option(
    "--priority", type=click.IntRange(0, 9), help="0 (lowest) to 9; claimed higher first."
)
@json_option
@pass_settings
def runs_start(
    settings: Settings,
    workflow: str,
    version: str,
    input_: object,
    reference_id: str | None,
    delay: timedelta | None,
    pool: str,
    priority: int | None,
    as_json: bool,
) -> None:
    """Start a run of WORKFLOW at VERSION; print its id."""
    try:
        request = StartRunRequest.model_validate(
            {
                "workflow": workflow,
                "version": version,
                "input": input_,
                "reference_id": reference_id,
                "delay": delay,
                "pool": pool,
                "priority": priority,
            }
        )
    except ValueError as exc:
        raise click.UsageError(f"invalid start: {_first_line(exc)}") from None

    async def start(client: Client) -> RunId:
        return (await client.start_run(request, lambda value: value)).id

    run_id = settings.call(start)
    if as_json:
        click.echo(json.dumps({"run_id": run_id}))
    else:
        out.print(run_id)


@runs.command("migrate")
@click.argument("workflow")
@click.argument("from_version")
@click.argument("to_version")
@click.option("--run", "run_ids", multiple=True, help="Only this run (repeat for several).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(s.value for s in MIGRATABLE_STATUSES)),
    help="Only runs in this status (repeat for several).",
)
@click.option("--reference-id", help="Only the run started under this reference id.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Move nothing: a live worker of TO_VERSION replays each run and reports what it"
    f" would reuse (at most {MAX_DRY_RUNS_PER_CALL} runs).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0, max=MAX_DRY_RUN_WAIT.total_seconds()),
    default=30.0,
    show_default=True,
    help="With --dry-run: seconds to wait for the worker's reports.",
)
@json_option
@pass_settings
def runs_migrate(
    settings: Settings,
    workflow: str,
    from_version: str,
    to_version: str,
    run_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    reference_id: str | None,
    dry_run: bool,
    wait: float,
    as_json: bool,
) -> None:
    """Move in-flight runs of WORKFLOW from FROM_VERSION to TO_VERSION.

    Each keeps what it recorded: on TO_VERSION, every recorded task call the new code
    still makes with the same input is reused; what changed runs. With --dry-run, a
    live worker serving TO_VERSION replays each run without side effects, and the
    command prints per run what would be reused, what not, and the first call that
    would run.
    """
    moved = settings.call(
        lambda client: client.migrate_runs(
            workflow,
            from_version,
            to_version,
            run_ids=[RunId(r) for r in run_ids] or None,
            status=[RunStatus(s) for s in statuses] or None,
            reference_id=reference_id,
            dry_run=dry_run,
            wait=timedelta(seconds=wait),
        )
    )
    if as_json:
        _print_json(moved)
        return
    if dry_run:
        out.print(f"dry run on {to_version}: {len(moved.dry_runs)} run(s) replayed, none moved")
        for report in moved.dry_runs:
            out.print(render.dry_run_report(report))
        for missing in moved.not_replayed:
            out.print(f"not replayed {missing.run_id}: {missing.reason}", style="yellow")
    else:
        out.print(f"migrated {len(moved.migrated)} run(s) to {to_version}")
    for skipped in moved.skipped:
        out.print(f"skipped {skipped.run_id} ({skipped.status.value}): {skipped.reason}")
    if moved.warning is not None:
        out.print(f"warning: {moved.warning}", style="yellow")
    if moved.has_more:
        out.print("more runs match: run the same command again", style="dim")


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split("\n")[:3])


def _control(name: str, summary: str) -> None:
    """`runs NAME ID`: one call on the run's handle; prints its status after."""

    @runs.command(name, help=summary)
    @click.argument("run_id")
    @json_option
    @pass_settings
    def command(settings: Settings, run_id: str, as_json: bool) -> None:
        async def steer(client: Client) -> RunDetail:
            handle = client.run_handle(RunId(run_id))
            await getattr(handle, name)()
            return await handle.detail()

        detail = settings.call(steer)
        if as_json:
            click.echo(json.dumps({"run_id": detail.id, "status": detail.status.value}))
        else:
            out.print(f"run {detail.id}: ", render.status(detail.status.value), sep="")


_control("cancel", "Cancel a run and its children.")
_control("pause", "Hold a run where it is; a running one stops at its next task boundary.")
_control("resume", "Let a paused run go on.")
_control("wake", "End a run's pending sleeps now.")


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawEvent:
    """An event by name whose data is JSON as given (what the run decodes it into is its own)."""

    name: str

    def encode_data(self, data: Any) -> Any:
        return data


@cli.group()
def events() -> None:
    """Send events to runs."""


@events.command("send")
@click.argument("run_id")
@click.argument("event")
@click.option("--data", callback=_json_value, help="The event's data as JSON, or @file.")
@click.option("--reference-id", help="Deliver at most once under this id.")
@json_option
@pass_settings
def events_send(
    settings: Settings,
    run_id: str,
    event: str,
    data: object,
    reference_id: str | None,
    as_json: bool,
) -> None:
    """Deliver EVENT with its data to the run RUN_ID."""
    sent = settings.call(
        lambda client: client.run_handle(RunId(run_id)).send_event(
            _RawEvent(event), data, reference_id=reference_id
        )
    )
    if as_json:
        _print_json(sent)
    elif sent.duplicate:
        out.print(f"event {sent.event_id} was already delivered (duplicate reference id)")
    else:
        out.print(f"event {sent.event_id} delivered to run {run_id}")


# -- schedules --------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawVersion:
    """A workflow version by name whose payload is JSON as given."""

    workflow: str
    version: str
    timeout: timedelta | None = None

    def encode_payload(self, payload: Any) -> Any:
        return payload


def _catch_up_options(command: Command) -> Command:
    """`--catch-up` and `--catch-up-window`: which missed occurrences start after downtime."""
    command = click.option(
        "--catch-up-window", callback=_duration, help="How far back --catch-up all looks (1d)."
    )(command)
    return click.option(
        "--catch-up",
        type=click.Choice([p.value for p in CatchUpPolicy]),
        help="Missed occurrences after downtime: latest (default), all or none.",
    )(command)


@cli.group()
def schedules() -> None:
    """List, create, update, pause, resume, backfill and delete schedules."""


@schedules.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", help="The next page: the cursor the previous page printed.")
@json_option
@pass_settings
def schedules_list(settings: Settings, limit: int, cursor: str | None, as_json: bool) -> None:
    """Schedules, newest first."""
    page = settings.call(lambda client: client.schedules.list(limit=limit, cursor=cursor))
    if as_json:
        _print_json(page)
        return
    out.print(render.schedules_table(page.schedules))
    if page.next_cursor is not None:
        out.print(f"\nmore: aiki schedules list --cursor {page.next_cursor}", style="dim")


@schedules.command("create")
@click.argument("name")
@click.argument("workflow")
@click.argument("version")
@click.option("--input", "input_", callback=_json_value, help="Each run's input: JSON or @file.")
@click.option("--cron", help="Five cron fields, read in --timezone.")
@click.option("--every", callback=_duration, help="An interval (30s, 5m, 1h).")
@click.option("--timezone", default="UTC", show_default=True)
@click.option(
    "--overlap",
    type=click.Choice([p.value for p in OverlapPolicy]),
    default=OverlapPolicy.SKIP.value,
    show_default=True,
    help="While the previous run still goes.",
)
@click.option("--pool", default=DEFAULT_POOL, show_default=True)
@click.option("--timeout", callback=_duration, help="Each run's deadline from its start.")
@_catch_up_options
@json_option
@pass_settings
def schedules_create(
    settings: Settings,
    name: str,
    workflow: str,
    version: str,
    input_: object,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    overlap: str,
    pool: str,
    timeout: timedelta | None,
    catch_up: str | None,
    catch_up_window: timedelta | None,
    as_json: bool,
) -> None:
    """Start a run of WORKFLOW at VERSION at each occurrence of --cron or --every."""
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    schedule = settings.call(
        lambda client: client.schedules.create(
            name,
            _RawVersion(workflow, version),
            input_,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap=OverlapPolicy(overlap),
            pool=pool,
            timeout=timeout,
            catch_up=CatchUpPolicy(catch_up or CatchUpPolicy.LATEST),
            catch_up_window=catch_up_window,
        )
    )
    _print_schedule(schedule, as_json=as_json)


@schedules.command("update")
@click.argument("schedule_id")
@click.option("--input", "input_", callback=_json_value, help="Each run's input: JSON or @file.")
@click.option("--cron", help="A new cadence: five cron fields (clears --every).")
@click.option("--every", callback=_duration, help="A new cadence: an interval (clears --cron).")
@click.option("--timezone")
@click.option("--overlap", type=click.Choice([p.value for p in OverlapPolicy]))
@click.option("--timeout", callback=_duration, help="Each run's deadline from its start.")
@click.option("--no-timeout", is_flag=True, help="Runs from now on have no deadline.")
@click.option("--pause/--resume", "paused", default=None, help="Pause or resume it.")
@_catch_up_options
@json_option
@pass_settings
def schedules_update(
    settings: Settings,
    schedule_id: str,
    input_: object,
    cron: str | None,
    every: timedelta | None,
    timezone: str | None,
    overlap: str | None,
    timeout: timedelta | None,
    no_timeout: bool,
    paused: bool | None,
    catch_up: str | None,
    catch_up_window: timedelta | None,
    as_json: bool,
) -> None:
    """Change a schedule in place (its runs stay linked); what is not given stays."""
    if cron is not None and every is not None:
        raise click.UsageError("give at most one of --cron and --every")
    if timeout is not None and no_timeout:
        raise click.UsageError("give at most one of --timeout and --no-timeout")
    changes: dict[str, Any] = {}
    if input_ is not None:
        changes["payload"] = input_
    if timeout is not None or no_timeout:
        changes["timeout"] = timeout
    if catch_up_window is not None:
        changes["catch_up_window"] = catch_up_window
    schedule = settings.call(
        lambda client: client.schedules.update(
            schedule_id,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap=None if overlap is None else OverlapPolicy(overlap),
            paused=paused,
            catch_up=None if catch_up is None else CatchUpPolicy(catch_up),
            **changes,
        )
    )
    _print_schedule(schedule, as_json=as_json)


@schedules.command("backfill")
@click.argument("schedule_id")
@click.argument("start", callback=_since)
@click.argument("end", callback=_since)
@json_option
@pass_settings
def schedules_backfill(
    settings: Settings, schedule_id: str, start: datetime, end: datetime, as_json: bool
) -> None:
    """Start the run of each past occurrence in [START, END) (ISO 8601, or 2h ago), once."""
    answer = settings.call(lambda client: client.schedules.backfill(schedule_id, start, end))
    if as_json:
        _print_json(answer)
        return
    out.print(f"{len(answer.run_ids)} occurrences, {answer.started} runs started")
    for run_id in answer.run_ids:
        out.print(run_id)


def _print_schedule(schedule: Schedule, *, as_json: bool) -> None:
    if as_json:
        _print_json(schedule)
    else:
        out.print(render.schedule_detail(schedule))


def _schedule_command(name: str, summary: str) -> None:
    """`schedules NAME ID`: one call on `client.schedules`; prints the schedule."""

    @schedules.command(name, help=summary)
    @click.argument("schedule_id")
    @json_option
    @pass_settings
    def command(settings: Settings, schedule_id: str, as_json: bool) -> None:
        schedule = settings.call(
            lambda client: getattr(client.schedules, "get" if name == "show" else name)(schedule_id)
        )
        _print_schedule(schedule, as_json=as_json)


_schedule_command("show", "One schedule: its definition, next occurrence and last run.")
_schedule_command("pause", "Stop firing until resumed.")
_schedule_command("resume", "Fire again, from the first occurrence after now.")
_schedule_command("delete", "Delete a schedule (the runs it started stay).")


# -- rate limits ------------------------------------------------------------------------


@cli.group("rate-limits")
def rate_limits() -> None:
    """List, set and delete rate limits."""


@rate_limits.command("list")
@json_option
@pass_settings
def rate_limits_list(settings: Settings, as_json: bool) -> None:
    """Rate limits, by name."""
    limits = settings.call(lambda client: client.rate_limits.list())
    if as_json:
        _print_json(RateLimitPage(rate_limits=limits))
    else:
        out.print(render.rate_limits_table(limits))


@rate_limits.command("set")
@click.argument("name")
@click.option("--limit", type=int, required=True, help="Units allowed in any window of --per.")
@click.option("--per", callback=_duration, required=True, help="The window (1s, 1m, 1h).")
@json_option
@pass_settings
def rate_limits_set(
    settings: Settings, name: str, limit: int, per: timedelta, as_json: bool
) -> None:
    """Define the rate limit NAME, or change it: at most --limit units per --per, per key."""
    info = settings.call(lambda client: client.rate_limits.set(name, limit=limit, per=per))
    if as_json:
        _print_json(info)
    else:
        out.print(render.rate_limits_table([info]))


@rate_limits.command("delete")
@click.argument("name")
@json_option
@pass_settings
def rate_limits_delete(settings: Settings, name: str, as_json: bool) -> None:
    """Delete the rate limit NAME and the budgets of its keys."""
    info = settings.call(lambda client: client.rate_limits.delete(name))
    if as_json:
        _print_json(info)
    else:
        out.print(f"rate limit {info.name} deleted")


# -- concurrency limits -----------------------------------------------------------------


@cli.group("concurrency-limits")
def concurrency_limits() -> None:
    """List, set and clear workflows' concurrency limits."""


@concurrency_limits.command("list")
@json_option
@pass_settings
def concurrency_limits_list(settings: Settings, as_json: bool) -> None:
    """The limit in effect for each workflow that has one."""
    page = settings.call(lambda client: client.concurrency_limits.list())
    if as_json:
        _print_json(page)
    else:
        out.print(render.concurrency_limits_table(page.limits))


@concurrency_limits.command("set")
@click.argument("workflow")
@click.option("--limit", type=int, required=True, help="Runs executing at once.")
@click.option(
    "--strategy",
    type=click.Choice([s.value for s in ConcurrencyStrategy]),
    default=ConcurrencyStrategy.QUEUE.value,
    show_default=True,
    help="What a start does when the limit is reached.",
)
@click.option(
    "--per-key/--whole-workflow",
    default=True,
    show_default=True,
    help="Count each concurrency key apart, or all the workflow's runs together.",
)
@json_option
@pass_settings
def concurrency_limits_set(
    settings: Settings, workflow: str, limit: int, strategy: str, per_key: bool, as_json: bool
) -> None:
    """Set WORKFLOW's limit as its operator: it wins over the code's until cleared."""
    info = settings.call(
        lambda client: client.concurrency_limits.set(
            workflow, limit=limit, strategy=ConcurrencyStrategy(strategy), per_key=per_key
        )
    )
    if as_json:
        _print_json(info)
    else:
        out.print(render.concurrency_limits_table([info]))


@concurrency_limits.command("clear")
@click.argument("workflow")
@json_option
@pass_settings
def concurrency_limits_clear(settings: Settings, workflow: str, as_json: bool) -> None:
    """Remove WORKFLOW's limit (the code's declaration comes back with its next start)."""
    info = settings.call(lambda client: client.concurrency_limits.clear(workflow))
    if as_json:
        _print_json(info)
    else:
        out.print(f"concurrency limit of {info.workflow} cleared")


# -- retention --------------------------------------------------------------------------


@cli.group("retention")
def retention() -> None:
    """Read, set and clear how long the namespace keeps its ended runs."""


@retention.command("get")
@json_option
@pass_settings
def retention_get(settings: Settings, as_json: bool) -> None:
    """The retention in effect for the namespace, and where it comes from."""
    info = settings.call(lambda client: client.retention.get())
    if as_json:
        _print_json(info)
    else:
        out.print(render.retention_line(info))


@retention.command("set")
@click.argument("period")
@json_option
@pass_settings
def retention_set(settings: Settings, period: str, as_json: bool) -> None:
    """Keep ended runs PERIOD from their end (30d, 12h, ...; `forever`), until cleared."""
    kept = None if period.strip().lower() == "forever" else _to_duration(period)
    info = settings.call(lambda client: client.retention.set(kept))
    if as_json:
        _print_json(info)
    else:
        out.print(render.retention_line(info))


@retention.command("clear")
@json_option
@pass_settings
def retention_clear(settings: Settings, as_json: bool) -> None:
    """Drop the namespace's own retention: the server's applies again."""
    info = settings.call(lambda client: client.retention.clear())
    if as_json:
        _print_json(info)
    else:
        out.print(render.retention_line(info))


# -- push endpoints ---------------------------------------------------------------------


@cli.group()
def endpoints() -> None:
    """List, show, create and delete push endpoints; rotate their secrets."""


def _shown_with_secret(
    answer: CreateEndpointResponse | RotateEndpointSecretResponse, as_json: bool
) -> None:
    """Print an endpoint and its new secret, which the server shows this once."""
    if as_json:
        _print_json(answer)
        return
    out.print(render.endpoint_detail(answer.endpoint))
    out.print(f"\nsecret: {answer.secret}")
    out.print("shown this once: give it to the endpoint's app", style="dim")


@endpoints.command("list")
@json_option
@pass_settings
def endpoints_list(settings: Settings, as_json: bool) -> None:
    """Push endpoints, oldest first, with how their pushes fare."""
    found = settings.call(lambda client: client.endpoints.list())
    if as_json:
        _print_json(EndpointPage(endpoints=found))
    else:
        out.print(render.endpoints_table(found))


@endpoints.command("show")
@click.argument("endpoint_id")
@json_option
@pass_settings
def endpoints_show(settings: Settings, endpoint_id: str, as_json: bool) -> None:
    """One push endpoint: what it serves, its secrets' key ids, its failures."""
    endpoint = settings.call(lambda client: client.endpoints.get(endpoint_id))
    if as_json:
        _print_json(endpoint)
    else:
        out.print(render.endpoint_detail(endpoint))


@endpoints.command("create")
@click.argument("url")
@click.option(
    "--workflow",
    "workflows",
    nargs=2,
    multiple=True,
    metavar="WORKFLOW VERSION",
    help="A version whose runs are pushed to URL (repeat for several).",
)
@click.option(
    "--task", "tasks", multiple=True, help="A task whose attempts are pushed (repeat for several)."
)
@click.option("--pool", default=DEFAULT_POOL, show_default=True, help="The versions' pool.")
@click.option(
    "--max-in-flight",
    type=int,
    default=10,
    show_default=True,
    help="Pushes awaiting their answer at once, per server replica.",
)
@click.option(
    "--timeout",
    callback=_duration,
    default="60s",
    show_default=True,
    help="How long one push may take.",
)
@json_option
@pass_settings
def endpoints_create(
    settings: Settings,
    url: str,
    workflows: tuple[tuple[str, str], ...],
    tasks: tuple[str, ...],
    pool: str,
    max_in_flight: int,
    timeout: timedelta,
    as_json: bool,
) -> None:
    """Push the runs of --workflow versions, or the attempts of --task tasks, to URL."""
    if bool(workflows) == bool(tasks):
        raise click.UsageError("give --workflow or --task (either repeated), not both")
    created = settings.call(
        lambda client: client.endpoints.create(
            url,
            workflows=list(workflows) or None,
            tasks=list(tasks) or None,
            pool=pool,
            max_in_flight=max_in_flight,
            timeout=timeout,
        )
    )
    _shown_with_secret(created, as_json)


@endpoints.command("delete")
@click.argument("endpoint_id")
@json_option
@pass_settings
def endpoints_delete(settings: Settings, endpoint_id: str, as_json: bool) -> None:
    """Delete a push endpoint: nothing more is pushed to it."""
    endpoint = settings.call(lambda client: client.endpoints.delete(endpoint_id))
    if as_json:
        _print_json(endpoint)
    else:
        out.print(f"endpoint {endpoint.id} ({endpoint.url}) deleted", markup=False)


@endpoints.command("rotate-secret")
@click.argument("endpoint_id")
@click.option(
    "--previous-expires-in",
    callback=_duration,
    default="24h",
    show_default=True,
    help="How long the previous secret still signs (0: stop now).",
)
@json_option
@pass_settings
def endpoints_rotate_secret(
    settings: Settings, endpoint_id: str, previous_expires_in: timedelta, as_json: bool
) -> None:
    """Sign the endpoint's pushes with a new secret, shown this once."""
    rotated = settings.call(
        lambda client: client.endpoints.rotate_secret(
            endpoint_id, previous_expires_in=previous_expires_in
        )
    )
    _shown_with_secret(rotated, as_json)


# -- workers ----------------------------------------------------------------------------


@cli.group()
def workers() -> None:
    """See the workers the server has heard from."""


@workers.command("list")
@json_option
@pass_settings
def workers_list(settings: Settings, as_json: bool) -> None:
    """Workers, the most recently seen first: what they serve and the runs they hold."""
    page = settings.call(lambda client: client.list_workers())
    if as_json:
        _print_json(page)
    else:
        out.print(render.workers_table(page.workers))


# -- the entry point --------------------------------------------------------------------


def exit_code(error: AikiError) -> int:
    """The exit code of an error the server (or the client) raised."""
    if isinstance(error, NotFoundError):
        return NOT_FOUND
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return AUTH
    if isinstance(error, InvalidRequestError):
        return USAGE
    return FAILED


def main() -> None:
    """Run the `aiki` command; shell completion through `_AIKI_COMPLETE` (docs: the CLI guide)."""
    try:
        code = cli.main(prog_name="aiki", complete_var="_AIKI_COMPLETE", standalone_mode=False)
    except Exit as exc:
        code = exc.code
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        err.print(f"aiki: {exc.format_message()}{where}", markup=False, soft_wrap=True)
        code = USAGE
    except click.ClickException as exc:
        err.print(f"aiki: {exc.format_message()}", markup=False, soft_wrap=True)
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        code = 130
    except AikiError as exc:
        # one line: a garbled answer's message goes on with the validation's details
        err.print(f"aiki: {str(exc).splitlines()[0]}", markup=False, soft_wrap=True)
        code = exit_code(exc)
    sys.exit(code if isinstance(code, int) else OK)
