from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from aiki_core import InvalidRequestError
from aiki_core.wire import canonical_json, content_hash, task_address

if TYPE_CHECKING:
    import random

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=25,
)


def _int_normalized(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _int_normalized(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_int_normalized(item) for item in value]
    return value


def _shuffled(value: Any, rng: random.Random) -> Any:
    """Rebuild every dict, at every depth, with its items in a random insertion order."""
    if isinstance(value, dict):
        items = [(key, _shuffled(item, rng)) for key, item in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_shuffled(item, rng) for item in value]
    return value


def test_canonical_form_is_sorted_and_compact() -> None:
    value = {"b": [1, {"d": None, "c": True}], "a": "x"}
    assert canonical_json(value) == b'{"a":"x","b":[1,{"c":true,"d":null}]}'


def test_key_order_does_not_matter() -> None:
    first = {"amount": 12, "currency": "EUR", "meta": {"z": 1, "a": 2}}
    second = {"meta": {"a": 2, "z": 1}, "currency": "EUR", "amount": 12}
    assert list(first) != list(second)
    assert canonical_json(first) == canonical_json(second)
    assert content_hash(first) == content_hash(second)


def test_keys_sort_by_code_point() -> None:
    assert canonical_json({"b": 1, "B": 2, "é": 3, "a": 4}) == '{"B":2,"a":4,"b":1,"é":3}'.encode()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"x": 1.50}', {"x": 1.5}),
        ('{"x": 15e-1}', {"x": 1.5}),
        ("1e2", 100.0),
        ("1e2", 100),
        ("100.0", 100),
        ("0.1", 0.1),
        ("1.0E-7", 1e-7),
        ("[-0.0]", [0]),
    ],
)
def test_float_spelling_does_not_change_the_hash(text: str, value: Any) -> None:
    parsed = json.loads(text)
    assert canonical_json(parsed) == canonical_json(value)
    assert content_hash(parsed) == content_hash(value)


def test_integral_floats_are_written_as_integers() -> None:
    assert canonical_json(100.0) == b"100"
    assert canonical_json(1.5) == b"1.5"
    assert canonical_json(0.1) == b"0.1"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (1, 2),
        ("1", 1),
        (True, 1),
        (None, 0),
        ("", None),
        ([1, 2], [2, 1]),
        ([1], 1),
        ({"a": 1}, {"a": 1, "b": None}),
        ({"a": 1}, {"b": 1}),
        ({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 3}]}}),
        (0.1, 0.10000000000000002),
        (2**80, 2**80 + 1),
    ],
)
def test_different_values_hash_differently(first: Any, second: Any) -> None:
    assert canonical_json(first) != canonical_json(second)
    assert content_hash(first) != content_hash(second)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), {"a": [1, float("nan")]}]
)
def test_non_finite_floats_are_refused(value: Any) -> None:
    with pytest.raises(InvalidRequestError):
        canonical_json(value)
    with pytest.raises(InvalidRequestError):
        content_hash(value)


def test_unserializable_values_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="not JSON-serializable"):
        canonical_json({"f": object()})


class Order(BaseModel):
    order_id: int
    price: float
    tags: list[str]


@dataclass
class Line:
    sku: str
    qty: int


def test_models_and_dataclasses_hash_like_their_dict_form() -> None:
    order = Order(order_id=42, price=9.5, tags=["gift"])
    as_dict = {"tags": ["gift"], "price": 9.5, "order_id": 42}
    assert canonical_json(order) == canonical_json(as_dict)
    assert content_hash(order) == content_hash(as_dict)

    lines = [Line(sku="A-1", qty=2), Line(sku="B-7", qty=1)]
    lines_dicts = [{"qty": 2, "sku": "A-1"}, {"qty": 1, "sku": "B-7"}]
    assert content_hash(lines) == content_hash(lines_dicts)
    assert content_hash({"order": order, "lines": lines}) == content_hash(
        {"order": as_dict, "lines": lines_dicts}
    )


def test_unkeyed_hash_is_sha256_of_canonical_json() -> None:
    value = {"b": 1, "a": [1.5, "x"]}
    assert content_hash(value) == hashlib.sha256(canonical_json(value)).hexdigest()


def test_keyed_hash_is_an_hmac() -> None:
    value = {"card": "4242", "amount": 10}
    first_key, second_key = b"k" * 32, b"q" * 32
    keyed = content_hash(value, key=first_key)
    assert keyed == hmac.new(first_key, canonical_json(value), hashlib.sha256).hexdigest()
    assert keyed != content_hash(value)
    assert keyed != content_hash(value, key=second_key)
    assert keyed == content_hash({"amount": 10, "card": "4242"}, key=first_key)


def test_task_address_format() -> None:
    address = task_address("charge", {"amount": 10})
    assert re.fullmatch(r"charge:[0-9a-f]{64}", address)
    assert address == f"charge:{content_hash({'amount': 10})}"
    assert task_address("charge", {"amount": 10}) == address
    assert task_address("refund", {"amount": 10}) != address
    assert task_address("charge", {"amount": 11}) != address


def test_keyed_task_address() -> None:
    keyed = task_address("charge", [1], key=b"secret")
    assert keyed == f"charge:{content_hash([1], key=b'secret')}"
    assert keyed != task_address("charge", [1])


def test_non_ascii_is_utf8_not_escaped() -> None:
    text = canonical_json({"name": "Zoë 東京 🚀"})
    assert text == '{"name":"Zoë 東京 🚀"}'.encode()
    assert b"\\u" not in text


def test_big_integers_keep_every_digit() -> None:
    assert canonical_json(2**80) == b"1208925819614629174706176"
    assert canonical_json({"n": -(2**80) - 1}) == b'{"n":-1208925819614629174706177}'
    # not rounded through a double, as RFC 8785 would
    assert canonical_json(2**80 + 1) == b"1208925819614629174706177"
    assert content_hash(2**80 + 1) != content_hash(float(2**80 + 1))


@given(st.dictionaries(st.text(), JSON_VALUES, min_size=2, max_size=4), st.randoms())
def test_hash_is_invariant_under_shuffled_keys(value: dict[str, Any], rng: random.Random) -> None:
    shuffled = _shuffled(value, rng)
    assert shuffled == value
    assert canonical_json(shuffled) == canonical_json(value)
    assert content_hash(shuffled) == content_hash(value)


@given(JSON_VALUES)
def test_canonical_json_parses_back_to_the_value(value: Any) -> None:
    text = canonical_json(value)
    assert json.loads(text) == _int_normalized(value)
    # canonical text is a fixed point
    assert canonical_json(json.loads(text)) == text
