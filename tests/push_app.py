"""A workflow endpoint of the push tests: `aiki_worker.asgi_app` under uvicorn.

    python tests/push_app.py --url http://127.0.0.1:PORT --secret aiki_push_... \\
        --counters DIR --port N [--pushes FILE] [--fail-first N] [--then keep|garble]

Its workflow runs `size` steps in a row. Every execution of a step's body appends a
line to its counter file in DIR (`<key>-<index>.count`), so the tests count how often
each body ran across pushes and kills. The step at `block_at` blocks on its first
execution (until the process is killed, or the run is given back), and returns on the
next.

In front of the app sits `Front`, a small ASGI app of its own: it counts every push
(a POST to `/`) with a line in the `--pushes` file, answers 503 to the first
`--fail-first` of them instead of passing them on, then mishandles the next one if
asked (`--then keep`: answers `released` without running it, so the run stays held;
`--then garble`: answers 200 with a body that is no `PushedRunAnswer`), and answers
badly whatever is posted to its own routes (`/answer/<status>`, `/big`, `/slow`),
for the server's push client.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import anyio
import httpx
import uvicorn
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_core.wire import PushedRun, PushedRunAnswer
from aiki_server.testing import free_port
from aiki_task import task
from aiki_worker import PushedRunApp, asgi_app
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from live_processes import LiveProcesses


@dataclass
class Settings:
    """What the process was started with."""

    counters: Path | None = None
    pushes: Path | None = None


SETTINGS = Settings()


def count(name: str) -> int:
    """Append a line to the counter file of `name`, durably; how many lines it now has."""
    if SETTINGS.counters is None:
        raise RuntimeError("no counter directory: run tasks through `main()`")
    return _append(SETTINGS.counters / f"{name}.count")


def _append(path: Path) -> int:
    """Append a line (this process, the time) to `path`, durably; its lines now."""
    with path.open("a") as file:
        file.write(f"{os.getpid()} {time.time():.6f}\n")
        file.flush()
        os.fsync(file.fileno())
    return len(path.read_text().splitlines())


class Steps(BaseModel):
    """`size` steps of the run `key`; the one at `block_at` blocks on its first execution."""

    key: str
    size: int = 3
    block_at: int | None = None


class Step(BaseModel):
    """Step `index` of the run `key`."""

    key: str
    index: int
    block: bool = False


@task("push-step")
async def push_step(item: Step) -> int:
    """Count this execution; block on the first one if asked; the square of the index."""
    executions = count(f"{item.key}-{item.index}")
    if item.block and executions == 1:
        await anyio.sleep(3600)
    return item.index * item.index


steps = workflow("push-steps")


@steps.v("1.0.0")
async def steps_v1(run: WorkflowRun, job: Steps) -> int:
    """Run the steps one after the other; the sum of their results."""
    total = 0
    for index in range(job.size):
        total += await push_step.start(
            run, Step(key=job.key, index=index, block=index == job.block_at)
        )
    return total


def app(url: str, secret: str) -> PushedRunApp:
    """The endpoint: a client made per event loop, the one workflow version, its secret."""
    return asgi_app(
        lambda: Client(url, logger=ConsoleLogger(LogLevel.INFO)),
        [steps_v1],
        [secret],
        heartbeat_interval=timedelta(seconds=1),
    )


async def start(
    processes: LiveProcesses,
    server: str,
    secret: str,
    counters: Path,
    *args: str,
    port: int | None = None,
) -> str:
    """An endpoint process writing to `server`; its URL, once it answers.

    `args` go to its command line (`--pushes`, `--fail-first`); `port` defaults to a
    free one (pass a killed endpoint's to restart it where the server pushes).
    """
    await anyio.Path(counters).mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    command = [sys.executable, __file__, "--url", server, "--secret", secret]
    command += ["--counters", str(counters), "--port", str(port), *args]
    await processes.spawn("endpoint", command)
    url = f"http://127.0.0.1:{port}/"
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(30):
            while True:
                try:
                    answer = await http.get(url)
                except httpx.TransportError:
                    await anyio.sleep(0.05)
                    continue
                if answer.status_code != 405:  # the app serves POST only
                    raise RuntimeError(f"the endpoint answered {answer.status_code}")
                return url


class Front:
    """Counts the pushes to `app`, refuses or mishandles the first ones, serves the bad routes.

    The first `fail_first` pushes are answered 503; the next one is answered as `then`
    says (`keep` or `garble`), if given; the others go to `app`.
    """

    def __init__(self, app: ASGIApp, fail_first: int, then: str | None = None) -> None:
        self.app = app
        self.fail_first = fail_first
        self.then = then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path != "/":
            await _misbehave(path, scope["query_string"].decode(), send)
            return
        if SETTINGS.pushes is None:  # nothing counted: nothing refused
            await self.app(scope, receive, send)
            return
        pushes = _append(SETTINGS.pushes)
        if pushes <= self.fail_first:
            await _answer(send, 503, b"{}", [(b"retry-after", b"0")])
        elif pushes == self.fail_first + 1 and self.then == "keep":
            run = PushedRun.model_validate_json(await _body(receive)).claim.run
            kept = PushedRunAnswer(run_id=run.id, outcome="released")
            await _answer(send, 200, kept.model_dump_json().encode(), [])
        elif pushes == self.fail_first + 1 and self.then == "garble":
            await _answer(send, 200, b"ok", [])
        else:
            await self.app(scope, receive, send)


async def _misbehave(path: str, query: str, send: Send) -> None:
    """`/answer/<status>[?retry_after=...]` (with `Location: /`), `/big` (2 MiB), `/slow`."""
    if path.startswith("/answer/"):
        headers = [(b"location", b"/")]
        if query.startswith("retry_after="):
            headers.append((b"retry-after", unquote(query.removeprefix("retry_after=")).encode()))
        await _answer(send, int(path.removeprefix("/answer/")), b"{}", headers)
    elif path == "/big":
        await _answer(send, 200, b" " * (2 * 1024 * 1024), [])
    elif path == "/slow":
        await anyio.sleep(60)
        await _answer(send, 200, b"{}", [])
    else:
        await _answer(send, 404, b"{}", [])


async def _body(receive: Receive) -> bytes:
    """The request's body, read whole."""
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body", False):
            return body


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    content = [(b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": content})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Parse the command line and serve the endpoint."""
    parser = argparse.ArgumentParser(description="A workflow endpoint of the push tests.")
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--secret", required=True, help="the endpoint's push secret")
    parser.add_argument("--counters", required=True, type=Path, help="counter files go here")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--pushes", type=Path, help="a line per push goes here")
    parser.add_argument("--fail-first", type=int, default=0, help="answer 503 to N pushes")
    parser.add_argument("--then", choices=("keep", "garble"), help="mishandle the next push")
    args = parser.parse_args()
    if (args.fail_first or args.then) and args.pushes is None:
        parser.error("--fail-first and --then count pushes in the --pushes file")
    SETTINGS.counters = args.counters
    SETTINGS.pushes = args.pushes
    front = Front(app(args.url, args.secret), args.fail_first, args.then)
    uvicorn.run(front, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
