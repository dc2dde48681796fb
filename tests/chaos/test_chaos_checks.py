"""How the chaos run judges its records: re-runs, 5xx and outage windows, on made-up records."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from chaos_checks import (
    Execution,
    Gap,
    HttpEvent,
    RerunRules,
    Timeline,
    Window,
    five_xx_outside,
    judge_reruns,
    load_http,
    outage_windows,
    worker_recoveries,
)

if TYPE_CHECKING:
    from pathlib import Path

A = "http://127.0.0.1:1001"
B = "http://127.0.0.1:1002"
RULES = RerunRules(ack_grace=1.0, cut_off=5.0)


def _timeline(*entries: dict[str, object]) -> Timeline:
    base: list[dict[str, object]] = [
        {"kind": "worker_start", "t": 0.0, "pid": 1, "url": A},
        {"kind": "worker_start", "t": 0.0, "pid": 2, "url": B},
    ]
    return Timeline(base + list(entries))


def _execution(pid: int, started: float, finished: float | None, task: str = "t") -> Execution:
    return Execution("run", "key", task, pid, f"{pid}-{started}", started, finished)


def _judge(
    timeline: Timeline, *executions: Execution, gaps: tuple[Gap, ...] = ()
) -> tuple[int, int, int, int]:
    windows = outage_windows(timeline, 3.0, 100.0)
    judged = judge_reruns(executions, timeline, windows, gaps, RULES, origin=0.0)
    return len(judged.violations), judged.excused, judged.cut_off, judged.abandoned


def test_a_task_cut_short_by_its_workers_kill_may_run_again() -> None:
    timeline = _timeline({"kind": "worker_kill", "t": 10.5, "pid": 1, "url": A})
    assert _judge(timeline, _execution(1, 10.0, None), _execution(2, 15.0, 15.1)) == (0, 1, 0, 0)


def test_a_task_killed_before_its_result_could_be_acknowledged_may_run_again() -> None:
    timeline = _timeline({"kind": "worker_kill", "t": 10.5, "pid": 1, "url": A})
    assert _judge(timeline, _execution(1, 9.0, 10.0), _execution(2, 15.0, 15.1)) == (0, 1, 0, 0)


def test_a_finished_task_of_a_live_worker_must_not_run_again() -> None:
    assert _judge(_timeline(), _execution(1, 9.0, 10.0), _execution(2, 15.0, 15.1)) == (1, 0, 0, 0)
    # the same worker running it again is no better
    assert _judge(_timeline(), _execution(1, 9.0, 10.0), _execution(1, 15.0, 15.1)) == (1, 0, 0, 0)


def test_a_result_held_long_before_the_kill_must_not_run_again() -> None:
    timeline = _timeline({"kind": "worker_kill", "t": 12.0, "pid": 1, "url": A})
    executions = [_execution(1, 9.0, 10.0), _execution(2, 15.0, 15.1)]
    assert _judge(timeline, *executions) == (1, 0, 0, 0)
    judged = judge_reruns(executions, timeline, [], (), RULES, origin=0.0)
    assert judged.by_live_worker == 0
    # killed only after the task ran again: the first worker was alive then
    timeline = _timeline({"kind": "worker_kill", "t": 20.0, "pid": 1, "url": A})
    judged = judge_reruns(executions, timeline, [], (), RULES, origin=0.0)
    assert (len(judged.violations), judged.by_live_worker) == (1, 1)


def test_outage_time_of_the_workers_own_server_does_not_count_against_it() -> None:
    kill_b = {"kind": "server_kill", "t": 10.0, "replica": "B", "url": B}
    b_up = {"kind": "server_up", "t": 11.0, "replica": "B", "url": B}
    kill = {"kind": "worker_kill", "t": 14.5, "pid": 2, "url": B}
    # B down 10-11, +3 s grace: of the 4.5 s before the kill, 4 were an outage
    timeline = _timeline(kill_b, b_up, kill)
    assert _judge(timeline, _execution(2, 9.0, 10.0), _execution(1, 15.0, 15.1)) == (0, 1, 0, 0)
    # an outage of the other server does not excuse it
    timeline = _timeline({**kill_b, "url": A}, {**b_up, "url": A}, kill)
    assert _judge(timeline, _execution(2, 9.0, 10.0), _execution(1, 15.0, 15.1)) == (1, 0, 0, 0)


def test_a_worker_cut_off_for_a_claims_life_may_lose_its_run() -> None:
    executions = (_execution(1, 9.0, 10.0), _execution(2, 17.0, 17.1))
    # no answer from 9.5 to 15.0: its claim may have gone idle
    gaps = (Gap(1, 9.5, 15.0),)
    assert _judge(_timeline(), *executions, gaps=gaps) == (0, 0, 1, 0)
    # a gap shorter than a claim's life, or another worker's: it should have kept its run
    for gap in (Gap(1, 9.5, 13.0), Gap(2, 9.5, 15.0), Gap(1, 2.0, 8.5)):
        assert _judge(_timeline(), *executions, gaps=(gap,)) == (1, 0, 0, 0), gap


def test_an_execution_cancelled_while_its_worker_lived_was_given_up_not_completed() -> None:
    assert _judge(_timeline(), _execution(1, 9.0, None), _execution(2, 15.0, 15.1)) == (0, 0, 0, 1)


def test_distinct_tasks_are_not_reruns() -> None:
    first = _execution(1, 9.0, 10.0, task="one")
    assert _judge(_timeline(), first, _execution(2, 15.0, 15.1, task="two")) == (0, 0, 0, 0)


def _http(t: float, url: str, status: int | None = 503) -> HttpEvent:
    return HttpEvent(t, 7, "worker", url, "POST", "/claims", status, "")


def test_a_5xx_is_explained_only_by_an_outage_its_client_was_exposed_to() -> None:
    timeline = _timeline(
        {"kind": "pg_stop", "t": 10.0},
        {"kind": "pg_ready", "t": 12.0},
        {"kind": "server_kill", "t": 20.0, "replica": "A", "url": A},
        {"kind": "server_up", "t": 25.0, "replica": "A", "url": A},
    )
    windows = outage_windows(timeline, 3.0, 100.0)
    assert windows == [
        Window(10.0, 15.0, None, "PostgreSQL restart"),
        Window(20.0, 28.0, A, "kill of A"),
    ]
    inside = [_http(11.0, A), _http(14.9, B), _http(27.0, A), _http(50.0, B, None)]
    outside = [_http(9.9, A), _http(15.1, B), _http(27.0, B)]
    assert five_xx_outside(inside + outside, windows) == outside


def test_recovery_after_a_worker_kill_waits_for_every_run_it_had_in_flight() -> None:
    timeline = _timeline({"kind": "worker_kill", "t": 10.0, "pid": 1, "url": A})
    executions = [
        Execution("r1", "k1", "t", 1, "a", 9.0, None),
        Execution("r2", "k2", "t", 1, "b", 9.5, None),
        Execution("r3", "k3", "t", 1, "c", 8.0, 9.0),  # finished: not held at the kill
        Execution("r1", "k1", "t", 2, "d", 13.0, 13.1),
        Execution("r2", "k2", "t", 2, "e", 14.5, 14.6),
    ]
    [recovery] = worker_recoveries(executions, timeline)
    assert recovery.held == 2
    assert recovery.progress == 4.5


def test_a_contact_gap_ends_at_its_last_line(tmp_path: Path) -> None:
    line = {"pid": 7, "role": "worker", "url": A, "method": "-", "path": "-", "status": None}
    records = [
        {**line, "t": 12.0, "text": "contact gap", "gap_from": 9.0},
        {**line, "t": 13.0, "method": "POST", "path": "/heartbeats", "text": "refused"},
        {**line, "t": 14.0, "text": "contact gap", "gap_from": 9.0},
        {**line, "t": 30.0, "text": "contact gap", "gap_from": 25.0},
    ]
    (tmp_path / "http-worker-1.jsonl").write_text(
        "".join(json.dumps(record) + "\n" for record in records) + '{"torn'
    )
    events, gaps = load_http(tmp_path)
    assert gaps == [Gap(7, 9.0, 14.0), Gap(7, 25.0, 30.0)]
    assert [(e.t, e.status) for e in events] == [(13.0, None)]
