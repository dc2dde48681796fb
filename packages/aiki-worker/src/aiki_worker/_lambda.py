"""`lambda_handler`: a workflow endpoint on AWS Lambda, through mangum (`aiki-worker[lambda]`).

mangum turns a Lambda invocation (an API Gateway or function URL event) into an ASGI
request and the app's answer into the invocation's result. Each invocation may run on
an event loop of its own, so the app should be given a client factory: it makes one
client per loop (`asgi_app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiki_worker._asgi import PushedRunApp

__all__ = ["lambda_handler"]


def lambda_handler(app: PushedRunApp, **options: Any) -> Any:
    """The Lambda handler (`handler(event, context)`) that serves `app` through mangum.

    `options` go to `mangum.Mangum` (`api_gateway_base_path`, say); the ASGI lifespan
    is off, as the app needs none. Needs the `lambda` extra:
    `pip install "aiki-worker[lambda]"`.
    """
    try:
        from mangum import Mangum
    except ImportError as exc:  # the extra is not installed
        raise ImportError(
            'aiki_worker.lambda_handler needs mangum: pip install "aiki-worker[lambda]"'
        ) from exc
    return Mangum(app, lifespan="off", **options)
