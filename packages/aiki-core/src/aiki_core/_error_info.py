"""A serializable picture of an exception and its causes.

`ErrorInfo` is what the server stores for a failed task attempt or run: the
exception's qualified type, message, formatted stack, whether it may be retried,
the structured details of an `AikiError`, and its cause chain (`__cause__`, or the
implicit `__context__` unless suppressed). `to_exception()` turns it back into a
`RemoteError` chain in the process that reads it.
"""

from __future__ import annotations

import traceback
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from aiki_core._exceptions import AikiError, RemoteError

__all__ = ["ErrorInfo"]

MAX_CAUSE_DEPTH = 16
"""Causes deeper than this are cut off: a chain that long is a bug, not a diagnosis."""


class ErrorInfo(BaseModel):
    """An exception, its stack and its cause chain, as JSON."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(description="Qualified name of the exception class.")
    message: str
    stack: str | None = Field(default=None, description="Formatted traceback, when known.")
    retryable: bool = True
    code: str | None = Field(default=None, description="The wire code of an AikiError.")
    details: dict[str, JsonValue] = Field(default_factory=dict)
    cause: ErrorInfo | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, *, include_stack: bool = True) -> Self:
        """Describe `exc` and its causes; cycles and chains past 16 links are cut."""
        chain: list[BaseException] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen and len(chain) < MAX_CAUSE_DEPTH:
            seen.add(id(current))
            chain.append(current)
            current = current.__cause__ or (
                None if current.__suppress_context__ else current.__context__
            )
        info: Self | None = None
        for link in reversed(chain):
            info = cls._describe(link, cause=info, include_stack=include_stack)
        assert info is not None  # the chain holds at least `exc`
        return info

    @classmethod
    def _describe(cls, exc: BaseException, *, cause: Self | None, include_stack: bool) -> Self:
        if isinstance(exc, RemoteError):
            # already a picture of a remote error: keep its original identity
            return cls.model_validate({**exc.info.model_dump(), "cause": cause or exc.info.cause})
        stack = None
        if include_stack and exc.__traceback__ is not None:
            stack = "".join(traceback.format_exception(exc, chain=False))
        code, details = (exc.code.value, exc.details) if isinstance(exc, AikiError) else (None, {})
        return cls(
            type=_qualified_name(type(exc)),
            message=str(exc),
            stack=stack,
            retryable=bool(getattr(exc, "retryable", True)),
            code=code,
            details=details,
            cause=cause,
        )

    def to_exception(self) -> RemoteError:
        """A `RemoteError` for this error, with its causes chained as `__cause__`."""
        error = RemoteError(self)
        if self.cause is not None:
            error.__cause__ = self.cause.to_exception()
        return error

    def causes(self) -> list[ErrorInfo]:
        """This error followed by its causes, outermost first."""
        out: list[ErrorInfo] = []
        node: ErrorInfo | None = self
        while node is not None:
            out.append(node)
            node = node.cause
        return out


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
