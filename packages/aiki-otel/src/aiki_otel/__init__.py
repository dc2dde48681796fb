"""OpenTelemetry traces of Aiki: starts, run executions and task attempts.

    from aiki_otel import TracingInterceptor

    tracing = TracingInterceptor()
    client = Client(url, interceptors=[tracing])
    worker = Worker(client, [orders_v1], interceptors=[tracing])

The spans go to the global tracer provider unless one is given; the trace context
travels with the global propagator (W3C `traceparent` by default).
"""

from __future__ import annotations

from aiki_otel.__about__ import __version__ as __version__
from aiki_otel._interceptor import TracingInterceptor as TracingInterceptor

__all__ = ("TracingInterceptor", "__version__")

# show the public path in reprs and docs (aiki_otel.TracingInterceptor)
TracingInterceptor.__module__ = __name__
