"""Canonical JSON and content hashes, the addresses of content-addressed replay.

A task call's address is its name plus a hash of its input. The hash must not
depend on anything but the input's value, so the input is first turned into JSON
values (pydantic models, dataclasses, dates and so on, the way pydantic would
serialize them) and then written canonically:

- object keys sorted by code point, no insignificant whitespace, UTF-8;
- a float with an integral value is written as that integer (`1.0` and `1` are the
  same number, as in JSON itself), any other float in its shortest round-trip
  form, so `1.50`, `1.5` and `15e-1` in a JSON text all hash alike;
- integers keep every digit; NaN and infinities are refused (JSON has none).

This follows RFC 8785 (JCS) in spirit, with one deliberate difference: integers
beyond 2**53 keep their exact value instead of being rounded to a double. It is
written here rather than taken from a library because the whole rule is these
few lines and `aiki-core` stays on its single dependency, pydantic.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from aiki_core._exceptions import InvalidRequestError
from aiki_core._ids import TaskAddress

if TYPE_CHECKING:
    from pydantic import JsonValue

__all__ = ["canonical_json", "content_hash", "task_address"]


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 JSON text of `value` (see the module docs for the rules)."""
    try:
        plain: JsonValue = to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise InvalidRequestError(f"value is not JSON-serializable: {exc}") from exc
    return json.dumps(
        _normalize(plain),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def content_hash(value: Any, *, key: bytes | None = None) -> str:
    """Hex SHA-256 of `value`'s canonical JSON, or its HMAC-SHA-256 under `key`.

    With a key (taken from the codec's key ring when payloads are encrypted) the
    server cannot confirm a guessed input by hashing it.
    """
    data = canonical_json(value)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def task_address(task_name: str, value: Any, *, key: bytes | None = None) -> TaskAddress:
    """The content address of a call of `task_name` with input `value`."""
    return TaskAddress(f"{task_name}:{content_hash(value, key=key)}")


def _normalize(value: JsonValue) -> JsonValue:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"{value!r} has no JSON representation")
        # json.dumps writes floats with repr(): the shortest text that round-trips
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value
