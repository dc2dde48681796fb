"""`client.concurrency_limits`: read, set, list and clear workflows' concurrency limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from aiki_client._http import api_path
from aiki_core import ConcurrencyStrategy, PayloadValidationError
from aiki_core.wire import ConcurrencyLimit, ConcurrencyLimitPage, SetConcurrencyLimitRequest

if TYPE_CHECKING:
    from typing import Literal

    from aiki_client._client import Client


class ConcurrencyLimits:
    """The concurrency limits of the client's API key's namespace (`client.concurrency_limits`).

    A workflow's limit is declared by its code (`Concurrency` on a version, sent with
    each start); one set here wins over the code's until it is cleared, after which
    the next start's declaration applies again. Changes apply at the next claim.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def get(self, workflow: str) -> ConcurrencyLimit:
        """The limit in effect for `workflow`; `NotFoundError` when it has none."""
        return await self._client._call(
            "GET", api_path("concurrency-limits", workflow), ConcurrencyLimit
        )

    async def set(
        self,
        workflow: str,
        *,
        limit: int,
        strategy: ConcurrencyStrategy
        | Literal["queue", "cancel_newest", "cancel_in_progress"] = ConcurrencyStrategy.QUEUE,
        per_key: bool = True,
    ) -> ConcurrencyLimit:
        """Set the operator's limit of `workflow` (per concurrency key, unless `per_key=False`)."""
        try:
            request = SetConcurrencyLimitRequest.model_validate(
                {"limit": limit, "strategy": strategy, "per_key": per_key}
            )
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"invalid concurrency limit for {workflow!r}", exc
            ) from None
        return await self._client._call(
            "PUT", api_path("concurrency-limits", workflow), ConcurrencyLimit, request
        )

    async def list(self) -> ConcurrencyLimitPage:
        """Every limit of the namespace, by workflow name."""
        return await self._client._call("GET", "/concurrency-limits", ConcurrencyLimitPage)

    async def clear(self, workflow: str) -> ConcurrencyLimit:
        """Remove `workflow`'s limit (the code's declaration comes back with its next start)."""
        return await self._client._call(
            "DELETE", api_path("concurrency-limits", workflow), ConcurrencyLimit
        )
