"""`client.retention`: how long the namespace keeps its ended runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from aiki_core import PayloadValidationError
from aiki_core.wire import RetentionInfo, SetRetentionRequest

if TYPE_CHECKING:
    from datetime import timedelta

    from aiki_client._client import Client


class Retention:
    """The retention of the client's API key's namespace (`client.retention`).

    The server deletes an ended run, with everything it holds, once the retention has
    passed since it ended. The server's setting applies unless the namespace sets its
    own, which wins until cleared.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def get(self) -> RetentionInfo:
        """The retention in effect, and whether it is the namespace's own (`source`)."""
        return await self._client._call("GET", "/retention", RetentionInfo)

    async def set(self, retention: timedelta | None) -> RetentionInfo:
        """Keep ended runs `retention` from their end (`None`: forever), until cleared."""
        try:
            request = SetRetentionRequest.model_validate({"retention": retention})
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic("invalid retention", exc) from None
        return await self._client._call("PUT", "/retention", RetentionInfo, request)

    async def clear(self) -> RetentionInfo:
        """Drop the namespace's own retention: the server's applies again."""
        return await self._client._call("DELETE", "/retention", RetentionInfo)
