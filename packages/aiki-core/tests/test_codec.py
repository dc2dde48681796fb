from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from aiki_core import CodecContext, IdentityCodec, PayloadCodec

if TYPE_CHECKING:
    from pydantic import JsonValue

CONTEXT = CodecContext(run_id="r-1", field="task:charge:" + "ab" * 32 + ":result")


class _KeyedCodec:
    """A codec of another shape, to show the protocol check is structural."""

    def address_key(self, run_input: JsonValue) -> bytes | None:
        return b"k"

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        return value

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        return value


class _EncodeOnly:
    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        return value


def test_identity_codec_is_a_payload_codec() -> None:
    assert isinstance(IdentityCodec(), PayloadCodec)
    assert isinstance(_KeyedCodec(), PayloadCodec)
    assert not isinstance(_EncodeOnly(), PayloadCodec)


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 2**80, 1.5, "", "Zoë", [], [1, "a", None], {"a": {"b": [1.5, None]}}],
)
def test_identity_codec_changes_nothing(value: Any) -> None:
    codec = IdentityCodec()
    encoded = codec.encode(value, CONTEXT)
    assert encoded is value
    assert codec.decode(encoded, CONTEXT) is value


def test_identity_codec_has_no_address_key() -> None:
    assert IdentityCodec().address_key({"any": "input"}) is None


def test_codec_context_is_frozen() -> None:
    assert CONTEXT == CodecContext(run_id="r-1", field=CONTEXT.field)
    with pytest.raises(AttributeError):
        CONTEXT.run_id = "r-2"  # type: ignore[misc]
