"""The back-off of an endpoint whose pushes fail: how long it is left alone."""

from __future__ import annotations

from aiki_server._push_client import MAX_RETRY_AFTER, parse_retry_after
from aiki_server._push_health import PushBackoff


def test_the_first_failures_back_off_exponentially_half_of_it_random() -> None:
    least = PushBackoff(rand=lambda: 0.0)
    most = PushBackoff(rand=lambda: 0.999999)
    assert [least.delay_ms(n, None) for n in range(1, 5)] == [500, 1000, 2000, 4000]
    assert [most.delay_ms(n, None) for n in range(1, 5)] == [999, 1999, 3999, 7999]


def test_an_open_circuit_cools_off_doubling_up_to_ten_times_the_first() -> None:
    backoff = PushBackoff(cool_off_ms=30_000, rand=lambda: 0.5)
    cool_offs = [backoff.delay_ms(n, None) for n in range(5, 11)]
    assert cool_offs == [30_000, 60_000, 120_000, 240_000, 300_000, 300_000]
    assert backoff.delay_ms(10_000, None) == 300_000


def test_retry_after_is_honoured_up_to_the_longest_cool_off() -> None:
    backoff = PushBackoff(cool_off_ms=30_000, rand=lambda: 0.0)
    assert backoff.delay_ms(1, 10_000) == 10_000
    assert backoff.delay_ms(1, 0) == 500  # never sooner than the back-off
    assert backoff.delay_ms(1, 10**12) == 300_000


def test_a_hostile_retry_after_is_read_as_a_bounded_delay_or_none() -> None:
    # before: 400 digits read as infinity (int(inf * 1000) raised when the failure was
    # counted), and a latin-1 superscript two passed str.isdigit and raised in float()
    assert parse_retry_after("1" * 400) == MAX_RETRY_AFTER
    assert parse_retry_after("\xb2") is None
    assert parse_retry_after("\u0663") is None  # an Arabic-Indic three: not delay-seconds
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER
