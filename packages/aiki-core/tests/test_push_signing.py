"""Push signatures: what an endpoint accepts and what it refuses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from aiki_core import AuthenticationError, PushSignatureError
from aiki_core.push import (
    PUSH_SIGNATURE_HEADER,
    PUSH_TIMESTAMP_HEADER,
    PushSecret,
    PushVerifier,
    sign_push,
)

BODY = b'{"claim": {}}'
NOW = 1_800_000_000.0


def verifier(*secrets: PushSecret, now: float = NOW) -> PushVerifier:
    return PushVerifier([str(s) for s in secrets], clock=lambda: now)


def test_a_secret_round_trips_through_its_string_and_hides_its_key() -> None:
    secret = PushSecret.generate()
    assert PushSecret.parse(str(secret)) == secret
    assert str(secret).startswith(f"aiki_push_{secret.key_id}_")
    assert secret.key.hex() not in repr(secret)
    with pytest.raises(ValueError, match="not an Aiki push secret"):
        PushSecret.parse("aiki_push_nothex!!_abc")


def test_a_signed_push_is_accepted_once_and_its_replay_refused() -> None:
    secret = PushSecret.generate()
    check = verifier(secret)
    headers = sign_push(BODY, [secret], now=NOW)
    assert check.verify(headers, BODY) == headers["aiki-push-id"]
    with pytest.raises(PushSignatureError, match="replay"):
        check.verify(headers, BODY)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "aiki-push-id": "01J00000000000000000000000"}, b),
        lambda h, b: ({**h, PUSH_TIMESTAMP_HEADER: str(int(NOW) - 1)}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != PUSH_SIGNATURE_HEADER}, b),
        lambda h, b: ({**h, PUSH_SIGNATURE_HEADER: ",".join([h[PUSH_SIGNATURE_HEADER]] * 5)}, b),
    ],
    ids=["body", "delivery-id", "timestamp", "no-signature", "too-many-signatures"],
)
def test_a_tampered_push_is_refused(tamper: object) -> None:
    secret = PushSecret.generate()
    headers, body = tamper(sign_push(BODY, [secret], now=NOW), BODY)  # type: ignore[operator]
    with pytest.raises(PushSignatureError) as caught:
        verifier(secret).verify(headers, body)
    assert isinstance(caught.value, AuthenticationError)
    assert caught.value.status_code == 401


def test_a_push_signed_with_another_secret_is_refused() -> None:
    headers = sign_push(BODY, [PushSecret.generate()], now=NOW)
    with pytest.raises(PushSignatureError, match="no signature"):
        verifier(PushSecret.generate()).verify(headers, BODY)


def test_a_stale_or_future_push_is_refused() -> None:
    secret = PushSecret.generate()
    for skew in (-301, 301):
        headers = sign_push(BODY, [secret], now=NOW + skew)
        with pytest.raises(PushSignatureError, match="too old"):
            verifier(secret).verify(headers, BODY)
    accepted = sign_push(BODY, [secret], now=NOW - 299)
    verifier(secret).verify(accepted, BODY)


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = PushSecret.generate(), PushSecret.generate()
    headers = sign_push(BODY, [old, new], now=NOW)
    verifier(new).verify(headers, BODY)
    verifier(old).verify(headers, BODY)


def test_delivery_ids_are_forgotten_after_the_window_and_bounded() -> None:
    secret = PushSecret.generate()
    clock = [NOW]
    window = timedelta(seconds=10)
    check = PushVerifier([secret], tolerance=window, remember=2, clock=lambda: clock[0])
    first = sign_push(BODY, [secret], now=NOW)
    check.verify(first, BODY)
    for _ in range(2):
        check.verify(sign_push(BODY, [secret], now=NOW), BODY)
    # pushed out by the bound: accepted again (the revision or idempotency key stops it)
    check.verify(first, BODY)
    clock[0] = NOW + 11
    with pytest.raises(PushSignatureError, match="too old"):
        check.verify(first, BODY)


def test_a_verifier_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        PushVerifier([])


def test_a_future_dated_push_is_remembered_while_its_timestamp_is_accepted() -> None:
    # signed by a clock ahead of this one: its timestamp stays acceptable until
    # stamp + tolerance, so its id must be remembered that long, not now + tolerance
    secret = PushSecret.generate()
    clock = [NOW]
    check = PushVerifier([secret], clock=lambda: clock[0])
    ahead = sign_push(BODY, [secret], now=NOW + 290)
    check.verify(ahead, BODY)
    clock[0] = NOW + 301
    with pytest.raises(PushSignatureError, match="replay"):
        check.verify(ahead, BODY)


@pytest.mark.parametrize("stamp", ["\xb2", "\xb9\xb2\xb3", "١٢٣", "+12", " 12"])
def test_a_timestamp_of_other_digits_is_refused_as_malformed(stamp: str) -> None:
    # headers decode as latin-1, where "²" is a digit to str.isdigit but not to int()
    secret = PushSecret.generate()
    headers = {**sign_push(BODY, [secret], now=NOW), PUSH_TIMESTAMP_HEADER: stamp}
    with pytest.raises(PushSignatureError, match="malformed"):
        verifier(secret).verify(headers, BODY)


def test_a_body_is_signed_once_per_secret_however_often_the_header_names_it() -> None:
    # an unsigned caller repeating a known key id must not multiply the HMACs over a
    # body of up to the endpoint's limit
    signed: list[str] = []

    class Counting(PushSecret):
        def sign(self, delivery_id: str, timestamp: int, body: bytes) -> str:
            signed.append(self.key_id)
            return super().sign(delivery_id, timestamp, body)

    real = PushSecret.generate()
    secret = Counting(real.key_id, real.key)
    check = PushVerifier([secret], clock=lambda: NOW)
    headers = sign_push(BODY, [real], now=NOW)
    forged = ",".join([f"{real.key_id}={'0' * 64}"] * 4)
    with pytest.raises(PushSignatureError, match="no signature"):
        check.verify({**headers, PUSH_SIGNATURE_HEADER: forged}, BODY)
    assert signed == [real.key_id]
    assert secret.sign("d", 1, BODY) == real.sign("d", 1, BODY)


def test_one_secret_string_given_for_the_list_is_refused_as_such() -> None:
    # a str is an Iterable[str]: its characters were parsed as secrets, and the error
    # said the (valid) secret was not one
    secret = str(PushSecret.generate())
    with pytest.raises(TypeError, match=r"a list of secrets"):
        PushVerifier(secret)
