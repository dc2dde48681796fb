"""The client channel's frames: what is sent is what is read, and nothing else is read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiki_core.wire import (
    CANCEL,
    ChannelAnswer,
    ChannelRequest,
    FrameError,
    decode_answer,
    decode_request,
    encode_answer,
    encode_cancel,
    encode_request,
)

targets = st.from_regex(r"/[\x21-\x7e]{0,80}", fullmatch=True)
ids = st.integers(min_value=0, max_value=2**53 - 1)


@given(
    call_id=ids,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    target=targets,
    body=st.none() | st.binary(min_size=1, max_size=200),
)
def test_a_request_reads_back_as_sent(
    call_id: int, method: str, target: str, body: bytes | None
) -> None:
    request = ChannelRequest(call_id, method, target, body)
    assert decode_request(encode_request(request)) == request


@given(call_id=ids, status=st.integers(100, 599), body=st.binary(max_size=200))
def test_an_answer_reads_back_as_sent(call_id: int, status: int, body: bytes) -> None:
    answer = ChannelAnswer(call_id, status, body, "3")
    assert decode_answer(encode_answer(answer)) == answer
    assert decode_answer(encode_answer(answer._replace(retry_after=None))).retry_after is None


def test_a_retry_after_that_is_not_whole_seconds_is_left_out() -> None:
    answer = ChannelAnswer(1, 503, b"{}", "Wed, 21 Oct 2026 07:28:00 GMT")
    assert decode_answer(encode_answer(answer)).retry_after is None


def test_a_cancel_names_its_call() -> None:
    assert decode_request(encode_cancel(7)) == ChannelRequest(7, CANCEL, "", None)


@pytest.mark.parametrize(
    "target", ["", "runs", "/runs /x", "/runs\r\nHost: evil", "/r\u00e9sum\u00e9", "/a\x00"]
)
def test_a_target_that_could_smuggle_or_mislead_is_never_encoded(target: str) -> None:
    with pytest.raises(ValueError, match="not a channel call"):
        encode_request(ChannelRequest(1, "POST", target, None))


@pytest.mark.parametrize(
    ("frame", "call_id"),
    [
        (b"no line end", None),
        (b"x" * 5000 + b"\n", None),
        (b"\xff\xfe 1 POST /claims\n", None),
        (b"-1 POST /claims\n", None),
        (b"99999999999999999 POST /claims\n", None),
        (b"\xd9\xa3 POST /claims\n", None),  # an Arabic-Indic digit is no id
        (b"3 TRACE /claims\n", 3),
        (b"3 POST claims\n", 3),
        (b"3 POST /claims extra\n", 3),
        (b"3 CANCEL\n{}", 3),
        (b"3\n", 3),
    ],
)
def test_a_malformed_request_is_a_frame_error_with_its_id_if_readable(
    frame: bytes, call_id: int | None
) -> None:
    with pytest.raises(FrameError) as raised:
        decode_request(frame)
    assert raised.value.call_id == call_id


@pytest.mark.parametrize(
    "frame", [b"1\n", b"1 20\n", b"1 600\n", b"1 200 soon\n", b"1 200 3 4\n", b"x 200\n"]
)
def test_a_malformed_answer_is_a_frame_error(frame: bytes) -> None:
    with pytest.raises(FrameError):
        decode_answer(frame)


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_request_or_a_frame_error(frame: bytes) -> None:
    try:
        request = decode_request(frame)
    except FrameError:
        return
    assert request.method == CANCEL or request.target.startswith("/")
    if request.method != CANCEL:
        assert decode_request(encode_request(request)) == request


def test_a_call_whose_line_is_over_4_kb_is_no_frame() -> None:
    """A decoder closes the channel on such a line: the encoder refuses to make one."""
    encode_request(ChannelRequest(1, "GET", "/" + "r" * 4000, None))
    with pytest.raises(ValueError, match="at most 4096 bytes"):
        encode_request(ChannelRequest(1, "GET", "/" + "r" * 5000, None))
