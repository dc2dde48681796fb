from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from aiki_core import CodecContext, CodecError, DecryptionError, PayloadCodec
from aiki_core.wire import task_address
from aiki_crypto import AesGcmCodec, KeyRing

if TYPE_CHECKING:
    from pydantic import JsonValue

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_EVIL = bytes(range(200, 232))

RING_A = KeyRing([("A", KEY_A)])
RING_BA = KeyRing([("B", KEY_B), ("A", KEY_A)])
RING_B = KeyRing([("B", KEY_B)])

CTX = CodecContext(run_id="run-1", field="input")

ENVELOPE = re.compile(r"aiki:v1:([A-Za-z0-9_.-]+):([A-Za-z0-9_-]+)")

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**300)
    | st.integers(min_value=-(2**300), max_value=-(2**63))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


def _same_json(left: Any, right: Any) -> bool:
    """Equal as JSON text: 1, 1.0 and True differ, as do key orders."""
    return json.dumps(left) == json.dumps(right)


def _raw(envelope: JsonValue) -> bytes:
    """nonce || ciphertext || tag of an envelope."""
    assert isinstance(envelope, str)
    match = ENVELOPE.fullmatch(envelope)
    assert match is not None, envelope
    body = match.group(2)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _with_raw(envelope: JsonValue, raw: bytes) -> str:
    assert isinstance(envelope, str)
    head = envelope.rsplit(":", 1)[0]
    return f"{head}:{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _hkdf_sha256(key: bytes, info: bytes) -> bytes:
    """RFC 5869 with no salt and 32 bytes of output, from the standard library alone."""
    prk = hmac.new(b"\x00" * 32, key, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_is_a_payload_codec() -> None:
    assert isinstance(AesGcmCodec(RING_A), PayloadCodec)


# --- round trips


@given(JSON_VALUES)
def test_any_json_value_round_trips(value: Any) -> None:
    codec = AesGcmCodec(RING_BA)
    envelope = codec.encode(value, CTX)
    assert isinstance(envelope, str)
    assert ENVELOPE.fullmatch(envelope)
    assert _same_json(codec.decode(envelope, CTX), value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**64 + 1,
        -(10**40) - 7,
        123456789012345678901234567890123456789,
        1.5,
        -0.0,
        1e308,
        5e-324,
        "",
        "Zoë ☃ 𝄞 日本語",
        "\ud800 lone surrogate",
        "aiki:v1:A:looks-like-an-envelope",
        [],
        {},
        [1, "a", None, [2**70, {"x": []}]],
        {"order": {"id": "o-1", "amount": 10**30, "tags": ["ü", None, 1.25]}, "": {}},
    ],
)
def test_values_round_trip_exactly(value: Any) -> None:
    codec = AesGcmCodec(RING_A)
    decoded = codec.decode(codec.encode(value, CTX), CTX)
    assert _same_json(decoded, value)
    assert type(decoded) is type(value)


def test_big_ints_stay_ints() -> None:
    codec = AesGcmCodec(RING_A)
    big = 2**200 + 12345
    decoded = codec.decode(codec.encode({"n": big}, CTX), CTX)
    assert decoded == {"n": big}
    assert isinstance(decoded, dict)
    assert isinstance(decoded["n"], int)


def test_the_envelope_is_a_compact_json_string() -> None:
    codec = AesGcmCodec(RING_BA)
    value: JsonValue = {"card": "4111 1111 1111 1111"}
    envelope = codec.encode(value, CTX)
    assert isinstance(envelope, str)
    match = ENVELOPE.fullmatch(envelope)
    assert match is not None
    assert match.group(1) == "B"
    assert json.loads(json.dumps(envelope)) == envelope
    plaintext = json.dumps(value, separators=(",", ":")).encode()
    # 12-byte nonce, the compact JSON text, 16-byte tag
    assert len(_raw(envelope)) == 12 + len(plaintext) + 16


def test_every_encoding_uses_a_fresh_nonce() -> None:
    codec = AesGcmCodec(RING_A)
    envelopes = [codec.encode("same value", CTX) for _ in range(50)]
    assert len(set(envelopes)) == 50
    assert len({_raw(envelope)[:12] for envelope in envelopes}) == 50


def test_the_envelope_does_not_contain_the_plaintext() -> None:
    codec = AesGcmCodec(RING_A)
    secret = "hunter2-correct-horse-battery-staple"
    envelope = codec.encode({"password": secret}, CTX)
    assert isinstance(envelope, str)
    raw = _raw(envelope)
    for needle in (secret, "password", "hunter2"):
        assert needle not in envelope
        assert needle.encode() not in raw
        assert base64.urlsafe_b64encode(needle.encode()).decode()[:8] not in envelope


def test_a_value_sealed_by_hand_decodes() -> None:
    """The envelope format, pinned: what v1 readers must keep opening."""
    nonce = bytes(range(12))
    aad = json.dumps(["aiki", "v1", "A", "run-1", "input"], separators=(",", ":")).encode()
    sealed = AESGCM(KEY_A).encrypt(nonce, b'{"amount":5}', aad)
    envelope = "aiki:v1:A:" + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
    assert AesGcmCodec(RING_BA).decode(envelope, CTX) == {"amount": 5}


# --- what encode refuses


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, float("nan"), float("inf"), {"x": b"bytes"}, {(1, 2): "k"}]
)
def test_a_value_that_is_not_json_is_a_codec_error(value: Any) -> None:
    with pytest.raises(CodecError, match="'input' payload of run 'run-1' is not JSON-serializable"):
        AesGcmCodec(RING_A).encode(value, CTX)


# --- what decode refuses


@pytest.mark.parametrize(
    "value",
    [None, True, 7, 1.5, [], ["aiki:v1:A:x"], {}, {"secret": "s3cr3t-value"}, "", "s3cr3t-value"],
)
def test_plain_json_is_refused_not_passed_through(value: Any) -> None:
    with pytest.raises(CodecError, match="not an encrypted envelope") as caught:
        AesGcmCodec(RING_A).decode(value, CTX)
    assert not isinstance(caught.value, DecryptionError)
    assert "s3cr3t" not in str(caught.value)
    assert "'input' payload of run 'run-1'" in str(caught.value)


@pytest.mark.parametrize("version", ["v0", "v2", "v10"])
def test_another_envelope_version_is_refused(version: str) -> None:
    envelope = AesGcmCodec(RING_A).encode("x", CTX)
    assert isinstance(envelope, str)
    other = envelope.replace("aiki:v1:", f"aiki:{version}:", 1)
    with pytest.raises(CodecError, match=f"envelope of version '{version}'; this codec reads 'v1'"):
        AesGcmCodec(RING_A).decode(other, CTX)


@pytest.mark.parametrize("envelope", ["aiki:v1:", "aiki:v1:A", "aiki:v1::abcd", "aiki:v1:a b:abcd"])
def test_an_envelope_without_a_valid_key_id_is_refused(envelope: str) -> None:
    with pytest.raises(CodecError, match="malformed envelope"):
        AesGcmCodec(RING_A).decode(envelope, CTX)


def test_an_unknown_key_id_is_named() -> None:
    envelope = AesGcmCodec(RING_A).encode("x", CTX)
    with pytest.raises(DecryptionError) as caught:
        AesGcmCodec(RING_B).decode(envelope, CTX)
    assert caught.value.key_id == "A"
    assert caught.value.details == {"key_id": "A"}
    assert "key 'A', which is not in the key ring (the ring holds 'B')" in str(caught.value)


# --- tampering


def test_changing_any_character_of_the_envelope_is_refused() -> None:
    codec = AesGcmCodec(KeyRing([("k1", KEY_A), ("k2", KEY_B)]))
    envelope = codec.encode({"amount": 5}, CTX)
    assert isinstance(envelope, str)
    for index, char in enumerate(envelope):
        for replacement in {"A", "B", "k", "2", "-", "_", ":", "="} - {char}:
            tampered = envelope[:index] + replacement + envelope[index + 1 :]
            with pytest.raises(CodecError):
                codec.decode(tampered, CTX)
    for cut in range(len(envelope)):
        with pytest.raises(CodecError):
            codec.decode(envelope[:cut], CTX)
    with pytest.raises(CodecError):
        codec.decode(envelope + "A", CTX)


@pytest.mark.parametrize(
    ("part", "indices"),
    [
        ("nonce", range(12)),
        ("ciphertext", range(12, 12 + len('{"amount":5}'))),
        ("tag", range(12 + len('{"amount":5}'), 12 + len('{"amount":5}') + 16)),
    ],
)
def test_flipping_a_bit_anywhere_is_an_authentication_failure(part: str, indices: range) -> None:
    codec = AesGcmCodec(RING_A)
    envelope = codec.encode({"amount": 5}, CTX)
    raw = _raw(envelope)
    assert len(raw) == 12 + len('{"amount":5}') + 16
    for index in indices:
        with pytest.raises(DecryptionError, match="authentication failed") as caught:
            codec.decode(_with_raw(envelope, _flip(raw, index)), CTX)
        assert caught.value.key_id == "A", part


def test_a_shortened_body_is_a_decryption_error() -> None:
    codec = AesGcmCodec(RING_A)
    envelope = codec.encode({"amount": 5}, CTX)
    raw = _raw(envelope)
    for size in (0, 1, 12, 27):
        with pytest.raises(DecryptionError, match="damaged body"):
            codec.decode(_with_raw(envelope, raw[:size]), CTX)
    with pytest.raises(DecryptionError, match="authentication failed"):
        codec.decode(_with_raw(envelope, raw[:-1]), CTX)


def test_a_non_canonical_body_is_refused() -> None:
    # 12 + 1 + 16 = 29 bytes: the last base64 character carries 2 unused bits
    codec = AesGcmCodec(RING_A)
    envelope = codec.encode(7, CTX)
    assert isinstance(envelope, str)
    last = envelope[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(last) ^ 0x01]  # same 2 used bits, other unused bits
    assert _raw(envelope[:-1] + sibling) == _raw(envelope)  # a lenient decoder's view
    with pytest.raises(DecryptionError, match="damaged body"):
        codec.decode(envelope[:-1] + sibling, CTX)


def test_a_key_id_switched_to_another_ring_key_fails_authentication() -> None:
    codec = AesGcmCodec(RING_BA)
    envelope = codec.encode("x", CTX)
    assert isinstance(envelope, str)
    with pytest.raises(DecryptionError, match="with key 'A': authentication failed") as caught:
        codec.decode(envelope.replace(":B:", ":A:", 1), CTX)
    assert caught.value.key_id == "A"


def test_a_wrong_key_under_the_same_id_is_refused() -> None:
    envelope = AesGcmCodec(RING_A).encode({"amount": 5}, CTX)
    impostor = AesGcmCodec(KeyRing([("A", KEY_EVIL)]))
    with pytest.raises(DecryptionError) as caught:
        impostor.decode(envelope, CTX)
    assert caught.value.key_id == "A"
    message = str(caught.value)
    assert "the 'input' payload of run 'run-1' with key 'A': authentication failed" in message


@pytest.mark.parametrize(
    "elsewhere",
    [
        CodecContext(run_id="run-2", field="input"),
        CodecContext(run_id="run-1", field="result"),
        CodecContext(run_id="", field="input"),
        CodecContext(run_id="run-1", field="task:charge:ab:result"),
    ],
)
def test_a_value_moved_to_another_run_or_field_is_refused(elsewhere: CodecContext) -> None:
    codec = AesGcmCodec(RING_A)
    envelope = codec.encode({"amount": 5}, CTX)
    with pytest.raises(DecryptionError) as caught:
        codec.decode(envelope, elsewhere)
    assert caught.value.key_id == "A"
    message = str(caught.value)
    assert f"the {elsewhere.field!r} payload of run {elsewhere.run_id!r}" in message
    assert "with key 'A'" in message


def test_run_and_field_cannot_trade_characters() -> None:
    # the associated data keeps the two apart: "a:b" + "c" is not "a" + "b:c"
    codec = AesGcmCodec(RING_A)
    envelope = codec.encode(1, CodecContext("a:b", "c"))
    with pytest.raises(DecryptionError):
        codec.decode(envelope, CodecContext("a", "b:c"))
    assert codec.decode(envelope, CodecContext("a:b", "c")) == 1


# --- rotation


def test_rotation_opens_old_values_and_seals_with_the_new_key() -> None:
    old = AesGcmCodec(RING_A)
    rotated = AesGcmCodec(RING_BA)
    sealed_by_a = old.encode({"n": 1}, CTX)
    assert rotated.decode(sealed_by_a, CTX) == {"n": 1}
    sealed_by_b = rotated.encode({"n": 2}, CTX)
    assert isinstance(sealed_by_b, str)
    assert sealed_by_b.startswith("aiki:v1:B:")
    assert rotated.decode(sealed_by_b, CTX) == {"n": 2}
    # a process still on the old ring cannot read the new key's values, and says why
    with pytest.raises(DecryptionError) as caught:
        old.decode(sealed_by_b, CTX)
    assert caught.value.key_id == "B"


def test_a_ring_without_the_old_key_names_it() -> None:
    sealed_by_a = AesGcmCodec(RING_A).encode("x", CTX)
    with pytest.raises(DecryptionError) as caught:
        AesGcmCodec(RING_B).decode(sealed_by_a, CTX)
    assert caught.value.key_id == "A"
    assert "'A'" in caught.value.message


# --- address keys


def test_the_address_key_is_derived_from_the_key_that_sealed_the_input() -> None:
    codec = AesGcmCodec(RING_A)
    run_input = codec.encode({"order": "o-1"}, CTX)
    key = codec.address_key(run_input)
    assert key == _hkdf_sha256(KEY_A, b"aiki task address v1")
    assert key != KEY_A
    assert len(key) == 32


def test_the_address_key_survives_rotation() -> None:
    before = AesGcmCodec(RING_A)
    after = AesGcmCodec(RING_BA)
    run_input = before.encode({"order": "o-1"}, CTX)
    assert after.address_key(run_input) == before.address_key(run_input)
    # and so do the task addresses the run replays by
    addresses = [
        task_address("charge", {"amount": 5}, key=codec.address_key(run_input))
        for codec in (before, after)
    ]
    assert addresses[0] == addresses[1]


def test_the_address_key_is_the_same_for_every_input_under_one_key() -> None:
    codec = AesGcmCodec(RING_A)
    first = codec.address_key(codec.encode({"order": "o-1"}, CTX))
    second = codec.address_key(codec.encode([1, 2, 3], CodecContext("run-9", "input")))
    assert first == second


def test_different_keys_give_different_address_keys() -> None:
    codec = AesGcmCodec(RING_BA)
    under_b = codec.address_key(codec.encode("x", CTX))
    under_a = codec.address_key(AesGcmCodec(RING_A).encode("x", CTX))
    assert under_a is not None
    assert under_b is not None
    assert under_a != under_b
    assert {under_a, under_b}.isdisjoint({KEY_A, KEY_B})
    assert task_address("t", 1, key=under_a) != task_address("t", 1, key=under_b)


def test_the_address_key_names_a_missing_key() -> None:
    run_input = AesGcmCodec(RING_A).encode("x", CTX)
    with pytest.raises(DecryptionError, match="'A', which is not in the key ring") as caught:
        AesGcmCodec(RING_B).address_key(run_input)
    assert caught.value.key_id == "A"


@pytest.mark.parametrize("run_input", [None, "plain", {"order": "o-1"}, "aiki:v2:A:abcd"])
def test_the_address_key_of_a_plain_input_is_a_codec_error(run_input: JsonValue) -> None:
    with pytest.raises(CodecError) as caught:
        AesGcmCodec(RING_A).address_key(run_input)
    assert not isinstance(caught.value, DecryptionError)


# --- what is shown


def test_repr_shows_key_ids_only() -> None:
    codec = AesGcmCodec(RING_BA)
    assert repr(codec) == "AesGcmCodec(KeyRing(key_ids=('B', 'A')))"
    assert codec.key_ring is RING_BA
    for key in (KEY_A, KEY_B):
        for rendering in (key.hex(), base64.urlsafe_b64encode(key).decode()[:40], repr(key)):
            assert rendering not in repr(codec)
