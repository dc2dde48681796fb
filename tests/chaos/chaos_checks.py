"""The invariants of the chaos run, decided from what its processes left on disk.

Pure functions over three records (tested on made-up ones in `test_chaos_checks.py`):

- the ledger (`ledger-<pid>.jsonl`, written by `chaos_app.side_effect`): a `start`
  and a `finish` line per execution of a task body;
- the client logs (`http-*.jsonl`, written by `chaos_app.RecordingHttp`): every 5xx
  answer, every request that could not be carried and every contact gap (a span
  without an answer), of the driver's clients and of the workers;
- the timeline (`timeline.jsonl`, written by the driver): every process started or
  killed, every server restart, the PostgreSQL crash and its recovery.

How a re-run is judged. A task call is a (run id, task name): every task of the
workflow is called once per run. When the ledger holds two executions of one call,
the earlier one, E (by worker process P), is *excused* only if it was in flight when
its own worker was killed: the driver SIGKILLed P at a time K after E started, and E
either has no `finish` line (the kill cut its body short) or its result could not
yet have been acknowledged, i.e. K - finish, less any outage window of P's server
that overlaps [finish, K], is at most `ack_grace` (one request's round trip, with
room for a loaded machine). Any other re-run of an execution that finished is a
*completed task executed twice*. An execution that never finished while its worker
lived (its run was taken from it and its body cancelled) is counted as *given up*:
it did not complete, so its re-run is not a violation, but the figure is shown.
One more excuse: when the worker's client got no answer from its server (replica
down, PostgreSQL down, or the machine too busy) for about as long as a claim lasts,
between the first execution's start and the second's, its claims may rightly have
gone idle and another worker taken the run: such re-runs are counted as *cut off*.
The clients record these contact gaps themselves (`RecordingHttp`), so the excuse
rests on what the worker saw, not on how long a restart took.

Outage windows, during which a 5xx is expected: a PostgreSQL restart, from the
crash until it accepts connections again plus `grace`, for every client; a server
replica's kill, until it answers `/health` again plus `grace`, for that replica's
own clients.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path


# -- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One execution of a task body, from its ledger lines."""

    run: str
    key: str
    task: str
    pid: int
    exec_id: str
    started: float
    finished: float | None


@dataclass(frozen=True)
class HttpEvent:
    """A 5xx answer (`status`) or a request that could not be carried (`status` None)."""

    t: float
    pid: int
    role: str
    url: str
    method: str
    path: str
    status: int | None
    text: str


@dataclass(frozen=True)
class Gap:
    """A span in which a process's client got no answer below 500 from its server."""

    pid: int
    start: float
    end: float


@dataclass(frozen=True)
class Window:
    """A time span in which clients of `url` (of every server if None) may see 5xx."""

    start: float
    end: float
    url: str | None
    reason: str

    def covers(self, t: float, url: str) -> bool:
        """Whether a client of `url` at `t` is inside the window."""
        return self.start <= t <= self.end and self.url in (None, url)


@dataclass
class Timeline:
    """What the driver did, in order: read from, and appended to, `timeline.jsonl`."""

    entries: list[dict[str, object]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, object]]:
        """The entries of one kind, in order."""
        return [entry for entry in self.entries if entry["kind"] == kind]

    def worker_url(self) -> dict[int, str]:
        """Worker pid -> the URL of the server it was attached to."""
        return {_int(e["pid"]): str(e["url"]) for e in self.of("worker_start")}

    def kill_time(self) -> dict[int, float]:
        """Worker pid -> when the driver SIGKILLed it."""
        return {_int(e["pid"]): _float(e["t"]) for e in self.of("worker_kill")}


def _int(value: object) -> int:
    assert isinstance(value, int), value
    return value


def _float(value: object) -> float:
    assert isinstance(value, int | float), value
    return float(value)


def read_jsonl(path: Path) -> tuple[list[dict[str, object]], int]:
    """The JSON objects of a file, one a line; and how many lines were torn (unreadable)."""
    records: list[dict[str, object]] = []
    torn = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            torn += 1
    return records, torn


def load_ledger(directory: Path) -> tuple[list[Execution], int]:
    """Every execution in the ledger files of `directory`, oldest first; torn lines."""
    starts: dict[str, dict[str, object]] = {}
    finishes: dict[str, float] = {}
    torn = 0
    for path in sorted(directory.glob("ledger-*.jsonl")):
        records, bad = read_jsonl(path)
        torn += bad
        for record in records:
            exec_id = str(record["exec"])
            if record["k"] == "start":
                starts[exec_id] = record
            else:
                finishes[exec_id] = _float(record["t"])
    executions = [
        Execution(
            run=str(line["run"]),
            key=str(line["key"]),
            task=str(line["task"]),
            pid=_int(line["pid"]),
            exec_id=exec_id,
            started=_float(line["t"]),
            finished=finishes.get(exec_id),
        )
        for exec_id, line in starts.items()
    ]
    return sorted(executions, key=lambda e: e.started), torn


def first_starts(path: Path) -> dict[str, float]:
    """Key -> when the first execution of a task with that key started, in one ledger file."""
    found: dict[str, float] = {}
    if path.exists():
        for record in read_jsonl(path)[0]:
            if record["k"] == "start":
                found.setdefault(str(record["key"]), _float(record["t"]))
    return found


def load_http(directory: Path) -> tuple[list[HttpEvent], list[Gap]]:
    """The 5xx and failed requests the clients recorded, and their contact gaps."""
    events = []
    gap_ends: dict[tuple[int, float], float] = {}
    for path in sorted(directory.glob("http-*.jsonl")):
        for record in read_jsonl(path)[0]:
            if "gap_from" in record:  # the gap so far: its last line says how long it got
                key = (_int(record["pid"]), _float(record["gap_from"]))
                gap_ends[key] = max(gap_ends.get(key, 0.0), _float(record["t"]))
                continue
            status = record["status"]
            events.append(
                HttpEvent(
                    t=_float(record["t"]),
                    pid=_int(record["pid"]),
                    role=str(record["role"]),
                    url=str(record["url"]),
                    method=str(record["method"]),
                    path=str(record["path"]),
                    status=None if status is None else _int(status),
                    text=str(record["text"]),
                )
            )
    gaps = [Gap(pid, start, end) for (pid, start), end in sorted(gap_ends.items())]
    return sorted(events, key=lambda e: e.t), gaps


def outage_windows(timeline: Timeline, grace: float, end: float) -> list[Window]:
    """The windows in which 5xx are expected (an outage not yet over ends at `end`)."""
    windows = []
    ready = timeline.of("pg_ready")
    for index, stop in enumerate(timeline.of("pg_stop")):
        back = _float(ready[index]["t"]) + grace if index < len(ready) else end
        windows.append(Window(_float(stop["t"]), back, None, "PostgreSQL restart"))
    ups = timeline.of("server_up")
    for kill in timeline.of("server_kill"):
        url = str(kill["url"])
        at = _float(kill["t"])
        back = min(
            (_float(up["t"]) for up in ups if up["url"] == url and _float(up["t"]) >= at),
            default=end - grace,
        )
        windows.append(Window(at, back + grace, url, f"kill of {kill['replica']}"))
    return windows


# -- invariants --------------------------------------------------------------------------


@dataclass
class Reruns:
    """How the re-executions of task calls were judged."""

    violations: list[str] = field(default_factory=list)
    by_live_worker: int = 0
    """Violations whose earlier worker was still alive when the task ran again."""
    excused: int = 0
    """In flight when its own worker was killed."""
    cut_off: int = 0
    """Its worker could not reach the engine for as long as a claim lasts."""
    abandoned: int = 0
    """Never finished, though its worker lived: taken from it, its body cancelled."""


def _overlap(windows: Iterable[Window], url: str, start: float, end: float) -> float:
    """Seconds of [start, end] inside the windows that concern clients of `url`."""
    spans = sorted(
        (max(w.start, start), min(w.end, end))
        for w in windows
        if w.url in (None, url) and w.start < end and w.end > start
    )
    total = 0.0
    reach = start
    for lo, hi in spans:
        lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


@dataclass(frozen=True)
class RerunRules:
    """The allowances of `judge_reruns`, from the plan of the run."""

    ack_grace: float
    """Seconds after a finish in which the result may still be unacknowledged."""
    cut_off: float
    """A contact gap this long may have let the worker's claims go idle (the claim idle
    timeout, less the time a heartbeat may take to reach the server)."""


def judge_reruns(
    executions: Sequence[Execution],
    timeline: Timeline,
    windows: Sequence[Window],
    gaps: Sequence[Gap],
    rules: RerunRules,
    *,
    origin: float,
) -> Reruns:
    """Judge every execution followed by another of the same task call (see the module doc).

    `windows` are the outage windows, `gaps` the contact gaps of the workers' clients.
    """
    kills = timeline.kill_time()
    urls = timeline.worker_url()
    calls: dict[tuple[str, str], list[Execution]] = {}
    for execution in executions:
        calls.setdefault((execution.run, execution.task), []).append(execution)
    judged = Reruns()
    for (run, task), runs in calls.items():
        for earlier, later in zip(runs, runs[1:], strict=False):
            url = urls.get(earlier.pid, "")
            killed = kills.get(earlier.pid)
            if killed is not None and killed >= earlier.started:
                if earlier.finished is None:
                    judged.excused += 1
                    continue
                unacknowledged = killed - earlier.finished
                outage = _overlap(windows, url, earlier.finished, killed)
                if unacknowledged - outage <= rules.ack_grace:
                    judged.excused += 1
                    continue
            if any(
                g.pid == earlier.pid
                and g.end - g.start >= rules.cut_off
                and g.start < later.started
                and g.end > earlier.started
                for g in gaps
            ):
                judged.cut_off += 1
                continue
            if earlier.finished is None and killed is None:
                judged.abandoned += 1
                continue
            if killed is None or killed > later.started:
                judged.by_live_worker += 1
            fate = (
                "its worker lived on"
                if killed is None
                else f"its worker was killed at {killed - origin:.2f}s"
            )
            judged.violations.append(
                f"{task} of run {run} ({earlier.key}) executed twice: by pid {earlier.pid}"
                f" (exec {earlier.exec_id}) {_span(earlier, origin)}, {fate};"
                f" again by pid {later.pid} (exec {later.exec_id}) {_span(later, origin)}"
            )
    return judged


def _span(execution: Execution, origin: float) -> str:
    end = "-" if execution.finished is None else f"{execution.finished - origin:.2f}s"
    return f"[{execution.started - origin:.2f}s → {end}]"


def five_xx_outside(events: Sequence[HttpEvent], windows: Sequence[Window]) -> list[HttpEvent]:
    """The 5xx answers that no outage window explains."""
    return [
        e for e in events if e.status is not None and not any(w.covers(e.t, e.url) for w in windows)
    ]


@dataclass(frozen=True)
class Recovery:
    """How long the engine took to make progress again after one kill."""

    what: str
    at: float
    back: float | None
    """Seconds until the killed part was replaced or answered again."""
    progress: float | None
    """Seconds until the work it stopped moved again (None: it never did)."""
    held: int = 0
    """Runs the killed worker had a task in flight of (worker kills only)."""


def worker_recoveries(executions: Sequence[Execution], timeline: Timeline) -> list[Recovery]:
    """Per worker kill: until every run it had a task in flight of started a task again."""
    recoveries = []
    starts = timeline.of("worker_start")
    for kill in timeline.of("worker_kill"):
        at = _float(kill["t"])
        pid = _int(kill["pid"])
        held = {
            e.run
            for e in executions
            if e.pid == pid and e.started <= at and (e.finished is None or e.finished > at)
        }
        replaced = min((_float(s["t"]) - at for s in starts if _float(s["t"]) >= at), default=None)
        progress: float | None = 0.0
        for run in held:
            later = [e.started for e in executions if e.run == run and e.started > at]
            if not later:
                progress = None
                break
            assert progress is not None
            progress = max(progress, min(later) - at)
        recoveries.append(
            Recovery(f"worker {pid}", at, replaced, progress if held else None, len(held))
        )
    return recoveries


def server_recoveries(executions: Sequence[Execution], timeline: Timeline) -> list[Recovery]:
    """Per replica kill and PostgreSQL restart: until it answered, until a task started."""
    urls = timeline.worker_url()
    recoveries = []
    for kill in timeline.of("server_kill"):
        at = _float(kill["t"])
        url = str(kill["url"])
        ups = [_float(u["t"]) for u in timeline.of("server_up") if u["url"] == url]
        back = min((t for t in ups if t >= at), default=None)
        progress = None
        if back is not None:
            progress = min(
                (e.started - at for e in executions if e.started > back and urls.get(e.pid) == url),
                default=None,
            )
        recoveries.append(Recovery(f"server {kill['replica']}", at, _since(back, at), progress))
    ready = timeline.of("pg_ready")
    for index, stop in enumerate(timeline.of("pg_stop")):
        at = _float(stop["t"])
        back = _float(ready[index]["t"]) if index < len(ready) else None
        progress = None
        if back is not None:
            progress = min((e.started - at for e in executions if e.started > back), default=None)
        recoveries.append(Recovery("PostgreSQL", at, _since(back, at), progress))
    return recoveries


def _since(t: float | None, at: float) -> float | None:
    return None if t is None else t - at


# -- figures -----------------------------------------------------------------------------


def seconds(values: Iterable[float | None]) -> str:
    """`median / max` of the known values, in seconds; `-` when there are none."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{statistics.median(known):.1f} / {max(known):.1f}"


def millis(values: Sequence[float]) -> str:
    """`median / max` in milliseconds, then every value."""
    if not values:
        return "-"
    every = " ".join(f"{v * 1000:.0f}" for v in values)
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}  ({every})"
