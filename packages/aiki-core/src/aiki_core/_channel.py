r"""The client channel's frames: API requests and their answers on one WebSocket.

A worker's calls (claims, task records, transitions, heartbeats, directives polls)
ride one long-lived WebSocket to `CHANNEL_PATH` instead of one HTTP request each.
Each call is one binary message; the server answers each with one binary message,
in any order, so long-polls and writes share the connection. A message is a line of
ASCII, then the body:

    request:  b"<id> <METHOD> <target>\n" + JSON body (none for a body-less call)
    answer:   b"<id> <status>[ <retry-after seconds>]\n" + body
    cancel:   b"<id> CANCEL\n"  (the caller no longer waits: the call is stopped,
              unanswered, as an HTTP request is when its connection closes)

`id` names the call on its connection (the client's choice, unique among calls in
flight); `target` is the path under the API's prefix with its query string, as an
HTTP request would carry it. The server passes every request through the same stack
as HTTP (key, namespace, limits, fencing), so a call answers alike on both paths.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "CANCEL",
    "CHANNEL_PATH",
    "MAX_CALLS_IN_FLIGHT",
    "ChannelAnswer",
    "ChannelRequest",
    "FrameError",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_cancel",
    "encode_request",
]

CHANNEL_PATH = "/channel"
"""Where the channel is opened, under the API's prefix (`/api/v1/channel`)."""
MAX_CALLS_IN_FLIGHT = 10_240
"""Calls one channel carries at once (each until its answer is sent); the server reads no
more frames until one ends."""
MAX_CALL_ID = 2**53 - 1

CANCEL = "CANCEL"
"""The method of a frame that cancels the call of its id."""
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_TARGET = re.compile(r"/[\x21-\x7e]*")
"""A path and query of visible ASCII (the client percent-encodes ids)."""
_MAX_HEAD = 4096


class FrameError(ValueError):
    """A frame that does not follow the format; `call_id` when its id could be read."""

    def __init__(self, message: str, call_id: int | None = None) -> None:
        super().__init__(message)
        self.call_id = call_id


class ChannelRequest(NamedTuple):
    """One API call on the channel."""

    call_id: int
    method: str
    target: str
    body: bytes | None


class ChannelAnswer(NamedTuple):
    """The answer to one call: its HTTP status, body and `Retry-After` seconds, if any."""

    call_id: int
    status: int
    body: bytes
    retry_after: str | None = None


def encode_request(request: ChannelRequest) -> bytes:
    """The frame of `request` (its target must be visible ASCII starting with `/`).

    `ValueError` for a call no frame carries, a line over 4 KB among them: a decoder
    would close the channel on it.
    """
    if request.method not in _METHODS or not _TARGET.fullmatch(request.target):
        raise ValueError(f"not a channel call: {request.method} {request.target!r}")
    head = f"{request.call_id} {request.method} {request.target}\n".encode()
    if len(head) > _MAX_HEAD:
        raise ValueError(f"a channel call's line is at most {_MAX_HEAD} bytes, not {len(head)}")
    return head if request.body is None else head + request.body


def encode_cancel(call_id: int) -> bytes:
    """The frame that cancels the call of `call_id`."""
    return f"{call_id} {CANCEL}\n".encode()


def decode_request(frame: bytes) -> ChannelRequest:
    """The call (or cancel: method `CANCEL`) a frame carries; `FrameError` for anything else."""
    head, body = _split(frame)
    parts = head.split(" ")
    call_id = _call_id(parts[0])
    if parts[1:] == [CANCEL] and not body:
        return ChannelRequest(call_id, CANCEL, "", None)
    if len(parts) != 3 or parts[1] not in _METHODS or not _TARGET.fullmatch(parts[2]):
        raise FrameError("a request is `<id> <METHOD> <target>` then the body", call_id)
    return ChannelRequest(call_id, parts[1], parts[2], body or None)


def encode_answer(answer: ChannelAnswer) -> bytes:
    """The frame of `answer` (a `Retry-After` that is not whole seconds is left out)."""
    head = f"{answer.call_id} {answer.status}"
    if answer.retry_after is not None and answer.retry_after.isdigit():
        head += f" {answer.retry_after}"
    return head.encode() + b"\n" + answer.body


def decode_answer(frame: bytes) -> ChannelAnswer:
    """The answer a frame carries; `FrameError` for anything else."""
    head, body = _split(frame)
    parts = head.split(" ")
    call_id = _call_id(parts[0])
    if not 2 <= len(parts) <= 3 or not _is_status(parts[1]):
        raise FrameError("an answer is `<id> <status> [<retry-after>]` then the body", call_id)
    if len(parts) == 3 and not parts[2].isdigit():
        raise FrameError("Retry-After is whole seconds", call_id)
    return ChannelAnswer(call_id, int(parts[1]), body, parts[2] if len(parts) == 3 else None)


def _split(frame: bytes) -> tuple[str, bytes]:
    end = frame.find(b"\n", 0, _MAX_HEAD)
    if end < 0:
        raise FrameError(f"a frame starts with a line of at most {_MAX_HEAD} bytes")
    try:
        head = frame[:end].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("a frame's first line is ASCII") from None
    return head, frame[end + 1 :]


def _call_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) > MAX_CALL_ID:
        raise FrameError(f"a call id is a whole number up to {MAX_CALL_ID}")
    return int(text)


def _is_status(text: str) -> bool:
    return len(text) == 3 and text.isascii() and text.isdigit() and 100 <= int(text) <= 599
