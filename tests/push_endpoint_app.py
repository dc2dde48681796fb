"""A minimal workflow endpoint for the push dispatcher's tests, served by uvicorn.

    python push_endpoint_app.py --port 8123 --server http://127.0.0.1:9850 \\
        --secret aiki_push_... --ledger ledger.txt [--fail-first N] [--first hang|keep|garble]

It checks each push's signature (`PushVerifier`: 401 and nothing else on a bad one),
then "executes" the pushed run the way a worker does, through `aiki_client`: it
records one task (`echo`) and completes the run with the input as its result, both
fenced by the claim's revision, and answers `PushedRunAnswer`. `--fail-first N`
answers 503 (with `Retry-After: 0`) to the first N pushes. `--first` mishandles the
first push: `hang` never answers it (a test SIGKILLs the process meanwhile), `keep`
answers without letting the run go, `garble` answers 200 with a body that is no
`PushedRunAnswer`. Other routes answer
badly whatever is pushed (`/answer/<status>`, `/big`, `/slow`), for the push client.

Every push and what came of it is appended to the ledger, one line each:
`push <run id>`, `completed <run id>`, `lost <run id>` (the server refused the
completion: the run had moved on), `refused <run id>` (answered 503), and
`hang`, `keep` or `garble <run id>` for the first push's fault.
The real endpoint app is `aiki_worker.asgi_app`; this stands in for it until the
dispatcher's tests move to it.
"""

from __future__ import annotations

import argparse
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aiki_client import Client
from aiki_core import ConflictError, ConsoleLogger, LogLevel, PushSignatureError, TaskStatus
from aiki_core.push import PushVerifier
from aiki_core.wire import (
    CompleteRun,
    PushedRun,
    PushedRunAnswer,
    RecordTaskRequest,
    TransitionRunRequest,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request


def endpoint_app(
    server_url: str, secret: str, ledger: Path, *, fail_first: int = 0, first: str | None = None
) -> Starlette:
    """The endpoint as an ASGI app (its client to the server opens in its lifespan)."""
    verifier = PushVerifier([secret])
    pushes = 0
    clients: list[Client] = []

    def note(what: str, run_id: str) -> None:
        with ledger.open("a") as out:
            out.write(f"{what} {run_id} {os.getpid()}\n")

    async def push(request: Request) -> Response:
        nonlocal pushes
        body = await request.body()
        try:
            verifier.verify(request.headers, body)
        except PushSignatureError as exc:
            return JSONResponse(exc.to_wire(), status_code=401)
        pushed = PushedRun.model_validate_json(body)
        run = pushed.claim.run
        pushes += 1
        note("push", run.id)
        if pushes <= fail_first:
            note("refused", run.id)
            return JSONResponse({"error": "not now"}, status_code=503, headers={"retry-after": "0"})
        if first is not None and pushes == 1:
            note(first, run.id)
            if first == "hang":
                await anyio.sleep_forever()
            if first == "keep":
                kept = PushedRunAnswer(run_id=run.id, outcome="released")
                return Response(kept.model_dump_json(), media_type="application/json")
            return Response(b"ok", media_type="text/plain")  # garbled
        client = clients[0]
        record = RecordTaskRequest(
            revision=run.revision,
            name="echo",
            address=f"echo:{run.id}",
            occurrence=0,
            attempt=1,
            status=TaskStatus.COMPLETED,
            input=pushed.claim.input,
            result=pushed.claim.input,
            worker_id=pushed.worker_id,
        )
        try:
            await client.record_task(run.id, record)
            done = TransitionRunRequest(
                revision=run.revision, action=CompleteRun(result={"echo": pushed.claim.input})
            )
            await client.transition(run.id, done)
        except ConflictError:  # a stale revision or an illegal move: the run moved on
            note("lost", run.id)
            answer = PushedRunAnswer(run_id=run.id, outcome="lost")
        else:
            note("completed", run.id)
            answer = PushedRunAnswer(run_id=run.id, outcome="completed")
        return Response(answer.model_dump_json(), media_type="application/json")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with Client(server_url, logger=ConsoleLogger(LogLevel.WARN)) as client:
            clients.append(client)
            yield

    routes = [Route("/push", push, methods=["POST"]), *_misbehaving]
    return Starlette(routes=routes, lifespan=lifespan)


async def _answer(request: Request) -> Response:
    """Answers the status in the path, with `?retry_after=` and `Location: /push`."""
    headers = {"location": "/push"}
    if "retry_after" in request.query_params:
        headers["retry-after"] = request.query_params["retry_after"]
    return Response(b"{}", status_code=int(request.path_params["status"]), headers=headers)


async def _big(_request: Request) -> Response:
    """A 2xx answer of 2 MiB."""
    return Response(b" " * (2 * 1024 * 1024), media_type="application/json")


async def _slow(_request: Request) -> Response:
    """No answer for a minute."""
    await anyio.sleep(60)
    return Response(b"{}")


_misbehaving = [
    Route("/answer/{status:int}", _answer, methods=["POST"]),
    Route("/big", _big, methods=["POST"]),
    Route("/slow", _slow, methods=["POST"]),
]
"""Routes that answer any push badly, for the push client's tests (no signature check)."""


def main() -> None:
    """Serve the endpoint on 127.0.0.1 until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--first", choices=("hang", "keep", "garble"))
    args = parser.parse_args()
    app = endpoint_app(
        args.server,
        args.secret,
        args.ledger,
        fail_first=args.fail_first,
        first=args.first,
    )
    # asyncio's loop, not uvloop: aiki_client's socket transport asserts an
    # `asyncio.Transport`, which uvloop's transports are not
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", loop="asyncio")


if __name__ == "__main__":
    main()
