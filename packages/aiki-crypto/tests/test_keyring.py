from __future__ import annotations

import base64

import pytest

from aiki_core import CodecContext, CodecError
from aiki_crypto import AesGcmCodec, KeyRing

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def _b64url(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def _renderings(key: bytes) -> list[str]:
    """The forms a leaked key could take in a message or a repr."""
    return [
        _b64url(key),
        base64.b64encode(key).decode(),
        key.hex(),
        repr(key)[2:-1],
    ]


def _holds(ring: KeyRing, key_id: str, key: bytes) -> bool:
    """Whether `ring` opens what a ring of just (key_id, key) sealed."""
    context = CodecContext("r-1", "input")
    sealed = AesGcmCodec(KeyRing([(key_id, key)])).encode("probe", context)
    try:
        return AesGcmCodec(ring).decode(sealed, context) == "probe"
    except CodecError:
        return False


def _assert_no_key_in(text: str, *keys: bytes) -> None:
    for key in keys:
        for rendering in _renderings(key):
            assert rendering not in text


def test_the_first_key_seals() -> None:
    ring = KeyRing([("B", KEY_B), ("A", KEY_A)])
    assert ring.primary_key_id == "B"
    assert ring.key_ids == ("B", "A")
    assert len(ring) == 2
    assert "A" in ring
    assert "C" not in ring


def test_an_empty_ring_is_refused() -> None:
    with pytest.raises(CodecError, match="empty"):
        KeyRing([])


def test_a_duplicate_key_id_is_refused() -> None:
    with pytest.raises(CodecError, match="'A' twice") as caught:
        KeyRing([("A", KEY_A), ("A", KEY_B)])
    _assert_no_key_in(str(caught.value), KEY_A, KEY_B)


@pytest.mark.parametrize("key_id", ["", "a:b", "a,b", "x" * 65, "clé", "a b", "k1\n", "/etc"])
def test_a_key_id_must_be_a_short_safe_token(key_id: str) -> None:
    with pytest.raises(CodecError, match="key id"):
        KeyRing([(key_id, KEY_A)])


def test_the_longest_key_id_is_accepted() -> None:
    assert KeyRing([("a.B_9-" + "x" * 58, KEY_A)]).primary_key_id == "a.B_9-" + "x" * 58


def test_a_key_must_be_bytes() -> None:
    with pytest.raises(CodecError, match="'A' is a bytearray, not bytes"):
        KeyRing([("A", bytearray(KEY_A))])  # type: ignore[list-item]


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_must_be_32_bytes(size: int) -> None:
    key = bytes(range(size)) if size <= 32 else KEY_A + KEY_B[: size - 32]
    with pytest.raises(CodecError, match=f"'A' is {size} bytes long; AES-256 needs exactly 32"):
        KeyRing([("A", key)])


def test_a_key_must_not_be_text() -> None:
    with pytest.raises(CodecError, match="'A' is a str, not bytes"):
        KeyRing([("A", _b64url(KEY_A))])  # type: ignore[list-item]


def test_an_entry_must_be_a_pair() -> None:
    with pytest.raises(CodecError, match="entry 2 is not a"):
        KeyRing([("A", KEY_A), ("B", KEY_B, "extra")])  # type: ignore[list-item]


def test_repr_shows_ids_and_never_keys() -> None:
    ring = KeyRing([("B", KEY_B), ("A", KEY_A)])
    assert repr(ring) == "KeyRing(key_ids=('B', 'A'))"
    assert str(ring) == repr(ring)
    _assert_no_key_in(repr(ring), KEY_A, KEY_B)


def test_generate_key_gives_fresh_32_byte_keys() -> None:
    keys = {KeyRing.generate_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(key) == 32 for key in keys)
    assert KeyRing([("new", keys.pop())]).primary_key_id == "new"


# --- parsing and the environment


def test_parse_keeps_order_and_keys() -> None:
    ring = KeyRing.parse(f"B:{_b64url(KEY_B)},A:{_b64url(KEY_A)}")
    assert ring.key_ids == ("B", "A")
    assert _holds(ring, "B", KEY_B)
    assert _holds(ring, "A", KEY_A)
    assert not _holds(ring, "A", KEY_B)


def test_parse_allows_whitespace_padding_and_standard_base64() -> None:
    key_c = bytes([0xFB, 0xFF] * 16)  # '+' and '/' in standard base64, '-' and '_' in url
    text = (
        f"\n  B:{_b64url(KEY_B)}=,\n"
        f"  A:{base64.urlsafe_b64encode(KEY_A).decode()} ,"
        f"C:{base64.b64encode(key_c).decode()}\n"
    )
    ring = KeyRing.parse(text)
    assert ring.key_ids == ("B", "A", "C")
    assert all(_holds(ring, *entry) for entry in [("B", KEY_B), ("A", KEY_A), ("C", key_c)])


def test_from_env_reads_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIKI_KEYS", f"B:{_b64url(KEY_B)},A:{_b64url(KEY_A)}")
    assert KeyRing.from_env("AIKI_KEYS").key_ids == ("B", "A")
    assert KeyRing.from_env().key_ids == ("B", "A")


def test_from_env_takes_a_mapping() -> None:
    ring = KeyRing.from_env("MY_KEYS", environ={"MY_KEYS": f"A:{_b64url(KEY_A)}"})
    assert ring.key_ids == ("A",)


def test_from_env_names_a_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIKI_KEYS_MISSING", raising=False)
    with pytest.raises(CodecError, match="environment variable AIKI_KEYS_MISSING is not set"):
        KeyRing.from_env("AIKI_KEYS_MISSING")


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_from_env_refuses_an_empty_variable(text: str) -> None:
    with pytest.raises(CodecError, match="environment variable K is empty"):
        KeyRing.from_env("K", environ={"K": text})


def test_from_env_refuses_bad_base64() -> None:
    secretish = "not*base64!" + _b64url(KEY_A)[11:]
    with pytest.raises(
        CodecError, match="entry 2 of environment variable K: key 'A' is not valid base64url"
    ) as caught:
        KeyRing.from_env("K", environ={"K": f"B:{_b64url(KEY_B)},A:{secretish}"})
    assert secretish not in str(caught.value)
    _assert_no_key_in(str(caught.value), KEY_A, KEY_B)


def test_from_env_refuses_a_key_of_the_wrong_length() -> None:
    short = _b64url(KEY_A[:16])
    with pytest.raises(CodecError, match="key 'A' is 16 bytes long; AES-256 needs exactly 32"):
        KeyRing.from_env("K", environ={"K": f"A:{short}"})


def test_from_env_refuses_duplicate_ids() -> None:
    text = f"A:{_b64url(KEY_B)},A:{_b64url(KEY_A)}"
    with pytest.raises(CodecError, match="environment variable K: .*'A' twice") as caught:
        KeyRing.from_env("K", environ={"K": text})
    _assert_no_key_in(str(caught.value), KEY_A, KEY_B)


@pytest.mark.parametrize("key_id", ["a b", "x" * 65, "é", ""])
def test_from_env_refuses_a_bad_key_id(key_id: str) -> None:
    with pytest.raises(CodecError, match="entry 1 of environment variable K: the key id is not"):
        KeyRing.from_env("K", environ={"K": f"{key_id}:{_b64url(KEY_A)}"})


def test_from_env_never_echoes_an_entry_without_an_id() -> None:
    # a bare key pasted without its id: the error names its place, not its text
    with pytest.raises(CodecError, match="entry 2 of environment variable K has no ':'") as caught:
        KeyRing.from_env("K", environ={"K": f"B:{_b64url(KEY_B)},{_b64url(KEY_A)}"})
    _assert_no_key_in(str(caught.value), KEY_A, KEY_B)


def test_from_env_refuses_a_stray_comma() -> None:
    with pytest.raises(CodecError, match="entry 2 of environment variable K is empty"):
        KeyRing.from_env("K", environ={"K": f"A:{_b64url(KEY_A)},"})
