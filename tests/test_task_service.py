"""A task service mounted in a FastAPI app, with the workers' encrypting codec.

The app runs in process behind httpx's ASGI transport: the same ASGI calls a server
makes, without a port. The pushes are signed here, as the server signs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest
from fastapi import FastAPI

from aiki_core import CodecContext, NonRetryableError
from aiki_core.push import PUSH_TIMESTAMP_HEADER, PushSecret, sign_push
from aiki_core.wire import PushedTask, PushedTaskAnswer, task_address
from aiki_crypto import AesGcmCodec, KeyRing
from aiki_task import asgi_app, task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, MutableMapping

    from pydantic import JsonValue

SECRET = PushSecret.generate()
CODEC = AesGcmCodec(KeyRing([("k1", KeyRing.generate_key())]))
RUN = "01JRUN0000000000000000000A"


@task("shout")
async def shout(text: str) -> str:
    return text.upper()


@task("refuse")
def refuse(text: str) -> str:
    raise NonRetryableError(f"will not {text}")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.mount(
        "/aiki",
        asgi_app([shout, refuse], secrets=[SECRET], codec=CODEC, max_body_bytes=4096),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
        yield client


def context(name: str, text: str, part: Literal["input", "result", "error"]) -> CodecContext:
    return CodecContext.task(RUN, task_address(name, text), 0, part)


def pushed(name: str, sealed_input: JsonValue) -> bytes:
    call = PushedTask(
        run_id=RUN,
        task_name=name,
        address=task_address(name, "hello"),
        occurrence=0,
        attempt=1,
        input=sealed_input,
    )
    return call.model_dump_json().encode()


async def push(http: httpx.AsyncClient, body: bytes, path: str = "/aiki/") -> httpx.Response:
    return await http.post(path, content=body, headers=sign_push(body, [SECRET]))


async def answer_to(http: httpx.AsyncClient, body: bytes) -> PushedTaskAnswer:
    answered = await push(http, body)
    assert answered.status_code == 200, answered.text
    return PushedTaskAnswer.model_validate_json(answered.content)


async def test_a_mounted_service_opens_the_input_and_seals_the_result(
    http: httpx.AsyncClient,
) -> None:
    sealed = CODEC.encode("hello", context("shout", "hello", "input"))
    answer = await answer_to(http, pushed("shout", sealed))
    assert answer.status == "completed" and answer.result != "HELLO"
    assert CODEC.decode(answer.result, context("shout", "hello", "result")) == "HELLO"
    # below its mount point, the app answers on its own path only
    assert (await push(http, pushed("shout", sealed), "/aiki/other")).status_code == 404


async def test_an_error_goes_back_sealed_with_its_retryability_in_clear(
    http: httpx.AsyncClient,
) -> None:
    sealed = CODEC.encode("hello", context("refuse", "hello", "input"))
    answer = await answer_to(http, pushed("refuse", sealed))
    assert answer.status == "failed" and answer.error is not None
    assert (answer.error.code, answer.error.retryable) == ("non_retryable", False)
    assert "will not" not in answer.error.message
    opened = answer.error.open(CODEC, context("refuse", "hello", "error"))
    assert opened.message == "will not hello"


async def test_an_input_sealed_for_another_call_fails_the_attempt_for_good(
    http: httpx.AsyncClient,
) -> None:
    elsewhere = CODEC.encode("hello", context("refuse", "hello", "input"))
    answer = await answer_to(http, pushed("shout", elsewhere))
    assert answer.status == "failed" and answer.error is not None
    assert (answer.error.code, answer.error.retryable) == ("decryption_failed", False)


async def test_a_body_over_the_limit_is_refused_unread(http: httpx.AsyncClient) -> None:
    body = pushed("shout", "x" * 5000)
    answered = await push(http, body)
    assert answered.status_code == 413
    assert answered.json()["error"]["code"] == "payload_too_large"


async def test_a_push_with_a_non_ascii_digit_timestamp_is_refused_401_not_a_crash(
    http: httpx.AsyncClient,
) -> None:
    # headers are read as latin-1: "\xb2" (superscript two) passed str.isdigit, and
    # int() raised a ValueError out of the app, before any signature was checked
    body = pushed("shout", CODEC.encode("hello", context("shout", "hello", "input")))
    signed = {**sign_push(body, [SECRET]), PUSH_TIMESTAMP_HEADER: "-"}
    headers = [(k.encode(), v.encode()) for k, v in signed.items()]
    headers[-1] = (PUSH_TIMESTAMP_HEADER.encode(), b"\xb2")
    answered = await http.post("/aiki/", content=body, headers=headers)
    assert answered.status_code == 401
    assert answered.json()["error"]["code"] == "push_signature_invalid"


async def test_a_content_length_of_non_ascii_digits_is_no_crash() -> None:
    # "\xb2" passes str.isdigit and int() refused it; an ASGI server that hands the
    # header on unchecked (a Lambda adapter, say) made the app raise before any check
    app = asgi_app([shout], secrets=[SECRET], codec=CODEC)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-length", b"\xb2")],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 401  # unsigned: refused, nothing run
