"""A serializable picture of an exception and its causes.

`ErrorInfo` is what the server stores for a failed task attempt or run: the
exception's qualified type, message, formatted stack, whether it may be retried,
the structured details of an `AikiError`, and its cause chain (`__cause__`, or the
implicit `__context__` unless suppressed). `to_exception()` turns it back into a
`RemoteError` chain in the process that reads it.

Messages and stacks can hold user data, so an encrypting codec seals an error
whole (`seal`): what travels keeps only the type, code and retryability in clear,
for operators and retry decisions; `open` restores it where the codec's keys are.
"""

from __future__ import annotations

import traceback
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from aiki_core._codec import CodecContext, IdentityCodec, PayloadCodec
from aiki_core._exceptions import AikiError, RemoteError
from aiki_core._wire import Boolean

__all__ = ["ErrorInfo"]

SEALED_MESSAGE = "(sealed by the codec)"
"""The message a sealed error shows where the codec's keys are not."""

MAX_CAUSE_DEPTH = 16
"""Causes deeper than this are cut off: a chain that long is a bug, not a diagnosis."""


class ErrorInfo(BaseModel):
    """An exception, its stack and its cause chain, as JSON."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(description="Qualified name of the exception class.")
    message: str
    stack: str | None = Field(default=None, description="Formatted traceback, when known.")
    retryable: Boolean = True
    code: str | None = Field(default=None, description="The wire code of an AikiError.")
    details: dict[str, JsonValue] = Field(default_factory=dict)
    cause: ErrorInfo | None = None
    sealed: JsonValue = Field(
        default=None,
        description="The whole error as the codec sealed it; the other fields then hold "
        "only its type, code and retryability.",
    )

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
            message=_message_of(exc),
            stack=stack,
            retryable=bool(getattr(exc, "retryable", True)),
            code=code,
            details=details,
            cause=cause,
        )

    def seal(self, codec: PayloadCodec, context: CodecContext) -> ErrorInfo:
        """This error as it leaves the process: sealed whole, unless the codec is the identity."""
        if isinstance(codec, IdentityCodec) or self.sealed is not None:
            return self
        sealed = codec.encode(self.model_dump(mode="json"), context)
        return ErrorInfo(
            type=self.type,
            message=SEALED_MESSAGE,
            retryable=self.retryable,
            code=self.code,
            sealed=sealed,
        )

    def open(self, codec: PayloadCodec, context: CodecContext) -> ErrorInfo:
        """The error a `seal` sealed (raises `CodecError` if it cannot be opened)."""
        if self.sealed is None:
            return self
        return ErrorInfo.model_validate(codec.decode(self.sealed, context))

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


def _message_of(exc: BaseException) -> str:
    """`str(exc)`, or a stand-in when the exception cannot say what it is."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"
