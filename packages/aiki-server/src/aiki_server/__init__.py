"""The Aiki orchestrator: HTTP API, storage on SQLite or PostgreSQL, timers and claims.

Run it with `aiki-server` (an embedded SQLite file `./aiki.db` on 127.0.0.1:9850),
or embed it: `create_app(db_url)` returns the ASGI app with its daemons tied to the
app's lifespan.
"""

from __future__ import annotations

from aiki_server.__about__ import __version__ as __version__
from aiki_server._app import ServerSettings as ServerSettings
from aiki_server._app import create_app as create_app

__all__ = ("ServerSettings", "__version__", "create_app")

for _obj in (ServerSettings, create_app):
    _obj.__module__ = __name__
