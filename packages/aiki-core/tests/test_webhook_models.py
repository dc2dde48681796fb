"""The wire models of signed webhooks: the `schema` alias and the bounds of a mint request."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from aiki_core.wire import MAX_WEBHOOK_LIFETIME, MAX_WEBHOOK_SCHEMA_BYTES, CreateWebhookRequest


def test_schema_travels_under_its_wire_name() -> None:
    schema = TypeAdapter(int).json_schema()
    req = CreateWebhookRequest(
        revision=3, event="paid", expires_in=timedelta(hours=1), schema=schema
    )
    assert req.data_schema == schema
    wire = req.model_dump(mode="json")
    assert wire == {"revision": 3, "event": "paid", "expires_in": 3_600_000, "schema": schema}
    assert CreateWebhookRequest.model_validate_json(req.model_dump_json()) == req


@pytest.mark.parametrize("expires_in", [0, MAX_WEBHOOK_LIFETIME + timedelta(milliseconds=1)])
def test_expiry_out_of_bounds_is_rejected(expires_in: timedelta | int) -> None:
    with pytest.raises(ValidationError, match="expires_in"):
        CreateWebhookRequest.model_validate(
            {"revision": 0, "event": "e", "expires_in": expires_in, "schema": {}}
        )


def test_the_longest_expiry_is_accepted() -> None:
    req = CreateWebhookRequest.model_validate(
        {"revision": 0, "event": "e", "expires_in": MAX_WEBHOOK_LIFETIME, "schema": {}}
    )
    assert req.expires_in == MAX_WEBHOOK_LIFETIME


def test_an_oversized_schema_is_rejected() -> None:
    schema = {"description": "x" * MAX_WEBHOOK_SCHEMA_BYTES}
    with pytest.raises(ValidationError, match="schema is"):
        CreateWebhookRequest.model_validate(
            {"revision": 0, "event": "e", "expires_in": 1000, "schema": schema}
        )


def test_the_python_name_is_not_a_wire_name() -> None:
    with pytest.raises(ValidationError):
        CreateWebhookRequest.model_validate(
            {"revision": 0, "event": "e", "expires_in": 1000, "data_schema": {}}
        )
