"""Push delivery's signatures: how the server signs what it pushes, how an endpoint checks it.

The server pushes a claimed run to a workflow endpoint and a task attempt to a task
endpoint (`aiki_core.wire.PushedRun`, `PushedTask`) with a signed HTTP `POST`
(`sign_push`). The endpoint checks the request with a `PushVerifier` built from the
endpoint's secrets (`PushSecret`) before anything runs. `aiki_worker.asgi_app` and
`aiki_task.asgi_app` do this for you; the names are public for other endpoints.

`SignedPushApp` is the base of both, and of any endpoint that takes Aiki pushes: a
plain ASGI app that serves `POST` on its path, bounds and verifies the body, and
answers errors as the server's API does; a subclass implements `handle` and raises
`PushRefused` to refuse a push.
"""

from __future__ import annotations

from aiki_core._public import show_public_path as _show_public_path
from aiki_core._push_endpoint import PushRefused, SignedPushApp
from aiki_core._push_signing import (
    PUSH_ID_HEADER,
    PUSH_SIGNATURE_HEADER,
    PUSH_TIMESTAMP_HEADER,
    PushSecret,
    PushVerifier,
    sign_push,
)

__all__ = (
    "PUSH_ID_HEADER",
    "PUSH_SIGNATURE_HEADER",
    "PUSH_TIMESTAMP_HEADER",
    "PushRefused",
    "PushSecret",
    "PushVerifier",
    "SignedPushApp",
    "sign_push",
)

_show_public_path(__name__, __all__, globals())
