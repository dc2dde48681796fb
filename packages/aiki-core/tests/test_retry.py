from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from aiki_core import RetryPolicy
from aiki_core.wire import MAX_COUNT, MAX_DURATION

MS = timedelta(milliseconds=1)
SECOND = timedelta(seconds=1)


def _low() -> float:
    return 0.0


def _high() -> float:
    return 0.999999


def test_never_gives_no_retry() -> None:
    policy = RetryPolicy.never()
    assert (policy.kind, policy.max_attempts) == ("never", 1)
    assert policy.delay_after(1) is None
    assert policy.delay_after(2) is None


def test_fixed_waits_the_same_each_time() -> None:
    policy = RetryPolicy.fixed(max_attempts=4, delay=timedelta(seconds=2))
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [timedelta(seconds=2)] * 3
    assert policy.delay_after(4) is None
    assert policy.delay_after(5) is None


def test_fixed_longer_than_the_default_cap_is_kept() -> None:
    policy = RetryPolicy.fixed(max_attempts=2, delay=timedelta(hours=3))
    assert policy.delay_after(1) == timedelta(hours=3)


def test_exponential_doubles() -> None:
    policy = RetryPolicy.exponential(max_attempts=6, base_delay=SECOND, jitter=0.0)
    delays = [policy.delay_after(n) for n in range(1, 6)]
    assert delays == [SECOND * factor for factor in (1, 2, 4, 8, 16)]
    assert policy.delay_after(6) is None


def test_exponential_uses_the_multiplier() -> None:
    policy = RetryPolicy.exponential(
        max_attempts=5, base_delay=100 * MS, multiplier=3.0, jitter=0.0
    )
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [
        100 * MS,
        300 * MS,
        900 * MS,
        2700 * MS,
    ]


def test_exponential_is_capped_at_max_delay() -> None:
    policy = RetryPolicy.exponential(
        max_attempts=10, base_delay=SECOND, max_delay=5 * SECOND, jitter=0.0
    )
    delays = [policy.delay_after(n) for n in range(1, 10)]
    assert delays == [SECOND, 2 * SECOND, 4 * SECOND] + [5 * SECOND] * 6


def test_jitter_never_exceeds_the_cap() -> None:
    policy = RetryPolicy.exponential(
        max_attempts=10, base_delay=SECOND, max_delay=5 * SECOND, jitter=0.5
    )
    # attempt 3 would wait 4 s, jittered up to 6 s: the cap still applies
    assert policy.delay_after(3, rand=_high) == 5 * SECOND
    assert policy.delay_after(3, rand=_low) == 2 * SECOND
    for attempt in range(1, 10):
        delay = policy.delay_after(attempt, rand=_high)
        assert delay is not None
        assert delay <= 5 * SECOND


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.5, 1.0])
def test_jitter_bounds(jitter: float) -> None:
    policy = RetryPolicy.fixed(max_attempts=3, delay=timedelta(seconds=10), jitter=jitter)
    low = policy.delay_after(1, rand=_low)
    high = policy.delay_after(1, rand=_high)
    assert low is not None
    assert high is not None
    nominal = timedelta(seconds=10)
    assert low == nominal * (1 - jitter)
    assert nominal * (1 + jitter) - 10 * MS <= high <= nominal * (1 + jitter)


def test_jitter_spreads_exponential_delays() -> None:
    policy = RetryPolicy.exponential(max_attempts=5, base_delay=SECOND, jitter=0.2)
    # attempt 2 nominally waits 2 s
    assert policy.delay_after(2, rand=_low) == 1600 * MS
    assert policy.delay_after(2, rand=lambda: 0.5) == 2 * SECOND
    high = policy.delay_after(2, rand=_high)
    assert high is not None
    assert 2390 * MS <= high <= 2400 * MS


@pytest.mark.parametrize("attempt", [200, 5_000, 10**9])
def test_huge_attempts_return_the_cap(attempt: int) -> None:
    policy = RetryPolicy.exponential(
        max_attempts=10**12, base_delay=SECOND, multiplier=100.0, jitter=0.0
    )
    assert policy.delay_after(attempt) == timedelta(hours=1)
    jittered = RetryPolicy.exponential(
        max_attempts=10**12, base_delay=SECOND, max_delay=timedelta(minutes=1), jitter=0.3
    )
    assert jittered.delay_after(attempt, rand=_high) == timedelta(minutes=1)


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_are_numbered_from_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        RetryPolicy.exponential(max_attempts=3, base_delay=SECOND).delay_after(attempt)
    with pytest.raises(ValueError, match="numbered from 1"):
        RetryPolicy.never().delay_after(attempt)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"kind": "never", "max_attempts": 2}, id="never-twice"),
        pytest.param({"kind": "exponential", "max_attempts": 3, "jitter": 1.01}, id="jitter"),
        pytest.param({"kind": "exponential", "max_attempts": 3, "jitter": -0.1}),
        pytest.param({"kind": "fixed", "max_attempts": 2, "base_delay": -1}, id="negative-ms"),
        pytest.param({"kind": "fixed", "max_attempts": 2, "base_delay": -SECOND}),
        pytest.param({"kind": "fixed", "max_attempts": 2, "max_delay": -SECOND}),
        pytest.param({"kind": "fixed", "max_attempts": 0}, id="no-attempts"),
        pytest.param({"kind": "exponential", "max_attempts": 3, "multiplier": 0.5}),
        pytest.param({"kind": "linear", "max_attempts": 3}, id="unknown-kind"),
        pytest.param({"kind": "fixed", "max_attempts": 3, "backoff": 1}, id="unknown-field"),
    ],
)
def test_invalid_policies_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy.model_validate(fields)


def test_a_cap_below_the_base_delay_caps_every_delay() -> None:
    policy = RetryPolicy.model_validate(
        {"kind": "fixed", "max_attempts": 3, "base_delay": 10, "max_delay": 5}
    )
    assert policy.delay_after(1) == timedelta(milliseconds=5)


def test_invalid_policies_from_the_constructors() -> None:
    with pytest.raises(ValueError, match="max_delay"):
        RetryPolicy.exponential(max_attempts=3, base_delay=timedelta(hours=2))
    with pytest.raises(ValidationError):
        RetryPolicy.fixed(max_attempts=3, delay=-SECOND)
    with pytest.raises(ValidationError):
        RetryPolicy.exponential(max_attempts=3, base_delay=SECOND, jitter=2.0)


EXPONENTIAL_POLICIES = st.builds(
    lambda attempts, base, extra, multiplier, jitter: RetryPolicy.exponential(
        max_attempts=attempts,
        base_delay=base * MS,
        max_delay=(base + extra) * MS,
        multiplier=multiplier,
        jitter=jitter,
    ),
    st.integers(1, 10_000),
    st.integers(0, 10**7),
    st.integers(0, 10**8),
    st.floats(1.0, 100.0),
    st.floats(0.0, 1.0),
)


@given(EXPONENTIAL_POLICIES, st.integers(1, 20_000), st.floats(0.0, 1.0, exclude_max=True))
def test_delay_stays_within_zero_and_the_cap(
    policy: RetryPolicy, attempt: int, rand_value: float
) -> None:
    delay = policy.delay_after(attempt, rand=lambda: rand_value)
    if attempt >= policy.max_attempts:
        assert delay is None
    else:
        assert delay is not None
        assert timedelta(0) <= delay <= policy.max_delay


@given(EXPONENTIAL_POLICIES)
def test_delays_without_jitter_never_decrease(policy: RetryPolicy) -> None:
    steady = policy.model_copy(update={"jitter": 0.0})
    delays = [steady.delay_after(n) for n in range(1, min(steady.max_attempts, 300))]
    concrete = [delay for delay in delays if delay is not None]
    assert len(concrete) == len(delays)
    assert concrete == sorted(concrete)


def test_the_factories_take_forever_and_no_cap_as_the_most_the_wire_carries() -> None:
    fixed = RetryPolicy.fixed(max_attempts=sys.maxsize, delay=timedelta(seconds=1))
    assert fixed.max_attempts == MAX_COUNT
    exponential = RetryPolicy.exponential(
        max_attempts=sys.maxsize, base_delay=timedelta(seconds=1), max_delay=timedelta.max
    )
    assert (exponential.max_attempts, exponential.max_delay) == (MAX_COUNT, MAX_DURATION)
    assert RetryPolicy.model_validate_json(exponential.model_dump_json()) == exponential
