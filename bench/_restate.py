"""Restate for `peers_compare.py`: its server from npm, the service, the invocations, the counts.

The server (`@restatedev/restate-server`, 1.7) is installed with npm into a cache folder
outside the repo on first use, and runs as a subprocess on free loopback ports with a
fresh base dir. The service (`_restate_workload.py`) runs under hypercorn (HTTP/2
cleartext) in another subprocess, registered through the admin API. Every invocation
goes through the ingress, request-response, from this process; afterwards the admin
query API counts the completed invocations and their step results.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from _common import BenchError, Latencies, cpu_snapshot, leaves, logged_process, read_log

from aiki_server.testing import free_port

if TYPE_CHECKING:
    from aiki_server.testing import LoggedProcess


HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "_restate_workload.py"
SERVER_PACKAGE = "@restatedev/restate-server@1.7.x"
SERIES = "1.7."
SERVICE = "bench"  # `_restate_workload.SERVICE`: that module is the service's, not imported here
READY_TIMEOUT = 60.0
STEP_RESULT = "Notification: Run"  # a journal entry: the recorded result of one `ctx.run`


def default_cache() -> Path:
    """Where npm installs the server: `~/.cache/aiki-bench/restate` (or under XDG_CACHE_HOME)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "aiki-bench" / "restate"


# -- the server, from npm ----------------------------------------------------------------


def _binary(cache: Path) -> Path | None:
    """The server's executable that npm put under `cache` (its platform's package), or `None`."""
    found = sorted(cache.glob("node_modules/@restatedev/restate-server-*/bin/restate-server"))
    return found[0] if found else None


def _version(binary: Path | None) -> str | None:
    """`1.7.12` from `restate-server 1.7.12`, or `None` if it does not run."""
    if binary is None:
        return None
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    words = probe.stdout.split()
    return words[-1] if probe.returncode == 0 and words else None


def ensure_server(cache: Path) -> tuple[Path, str, str]:
    """The server's executable, installed with npm into `cache` unless a 1.7 is there.

    Its path, its version, and how it came to be there.
    """
    binary = _binary(cache)
    version = _version(binary)
    if binary is not None and version is not None and version.startswith(SERIES):
        return binary, version, f"reused {cache}"
    began = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    # --ignore-scripts: the wrapper package's only script is an install-time ping home; the
    # binary comes as a plain optional dependency, one package per platform
    command = [
        "npm",
        "install",
        "--prefix",
        str(cache),
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        SERVER_PACKAGE,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BenchError("npm is not installed: Restate's server comes from npm") from None
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    binary = _binary(cache)
    version = _version(binary)
    if binary is None or version is None or not version.startswith(SERIES):
        raise BenchError(f"{SERVER_PACKAGE} did not install a runnable server into {cache}")
    took = time.perf_counter() - began
    return binary, version, f"installed into {cache} by npm in {took:.0f} s"


# -- one measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """How much to run: the same counts as the other systems get."""

    warmup: int
    latency_runs: int
    latency_steps: tuple[int, ...]
    throughput_runs: int
    throughput_steps: int
    clients: tuple[int, ...]
    """Concurrent request-response invocations in the throughput figure: one measurement each."""


@dataclass(frozen=True)
class Throughput:
    """One throughput measurement: `runs` runs by `clients` concurrent invocations."""

    clients: int
    runs: int
    seconds: float
    cpu_ms: tuple[float, float, float]
    """CPU per run, ms: the server, the service, this process (the client)."""


@dataclass
class RestateRun:
    """What one Restate measurement found."""

    version: str
    sdk_version: str = field(default_factory=lambda: importlib.metadata.version("restate-sdk"))
    latency: dict[int, Latencies] = field(default_factory=dict)
    throughput: list[Throughput] = field(default_factory=list)
    checks: str = ""


class _Ports:
    """Four distinct free loopback ports: the server's three listeners and the service's."""

    def __init__(self) -> None:
        ports: list[int] = []
        while len(ports) < 4:
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.ingress, self.admin, self.node, self.service = ports


def _server_env(ports: _Ports) -> dict[str, str]:
    return {
        "RESTATE_DISABLE_TELEMETRY": "true",
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ports.ingress}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{ports.admin}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{ports.node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{ports.node}/",
    }


async def _wait_ready(http: httpx.AsyncClient, url: str, process: LoggedProcess) -> None:
    """Poll `url` until it answers 200; fail if `process` exits or it takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.returncode is not None:
            raise BenchError(f"{process.log.name}: exited with {process.returncode}")
        try:
            if (await http.get(url)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer in {READY_TIMEOUT:.0f} s")
        await anyio.sleep(0.1)


async def _register(http: httpx.AsyncClient, admin: str, service_url: str) -> None:
    """Register the deployment at `service_url`, retrying while the service starts."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            response = await http.post(f"{admin}/deployments", json={"uri": service_url})
        except httpx.TransportError as exc:
            problem = str(exc) or type(exc).__name__
        else:
            if response.status_code in (200, 201):
                return
            problem = f"{response.status_code} {response.text[:500]}"
        if time.monotonic() > deadline:
            raise BenchError(f"registering {service_url} failed: {problem}")
        await anyio.sleep(0.2)


async def _invoke(http: httpx.AsyncClient, ingress: str, handler: str, steps: int) -> None:
    """One request-response invocation of `handler`; its result checked."""
    response = await http.post(f"{ingress}/{SERVICE}/{handler}", json=steps)
    if response.status_code != 200:
        raise BenchError(f"{handler}: {response.status_code} {response.text[:500]}")
    expected = steps * (steps - 1) // 2
    if response.json() != expected:
        raise BenchError(f"{handler} returned {response.text}, expected {expected}")


async def _first_invocation(http: httpx.AsyncClient, ingress: str) -> None:
    """The first warm-up run, retried while the ingress does not know the service yet (404).

    A 404 creates no invocation, so the counts stay exact.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        response = await http.post(f"{ingress}/{SERVICE}/warmup", json=1)
        if response.status_code != 404:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the ingress did not find the service: {response.text[:500]}")
        await anyio.sleep(0.1)
    if response.status_code != 200 or response.json() != 0:
        raise BenchError(f"warmup: {response.status_code} {response.text[:500]}")


async def _sequential(
    http: httpx.AsyncClient, ingress: str, handler: str, steps: int, runs: int
) -> Latencies:
    latency = Latencies()
    for _ in range(runs):
        began = time.perf_counter()
        await _invoke(http, ingress, handler, steps)
        latency.samples.append(time.perf_counter() - began)
    return latency


async def _concurrent(
    http: httpx.AsyncClient, ingress: str, steps: int, runs: int, clients: int
) -> float:
    """`runs` invocations by `clients` concurrent callers; seconds until the last result."""
    counter = iter(range(runs))

    async def caller() -> None:
        for _ in counter:
            await _invoke(http, ingress, "throughput", steps)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(caller)
    return time.perf_counter() - began


async def _query(http: httpx.AsyncClient, admin: str, sql: str) -> list[dict[str, Any]]:
    response = await http.post(
        f"{admin}/query", json={"query": sql}, headers={"accept": "application/json"}
    )
    if response.status_code != 200:
        raise BenchError(f"admin query failed: {response.status_code} {response.text[:500]}")
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


async def _check(http: httpx.AsyncClient, admin: str, work: Workload) -> str:
    """Count each handler's invocations and step results through the admin query API."""
    expected = {
        "warmup": (work.warmup, 1),
        **{f"latency_{s}": (work.latency_runs, s) for s in work.latency_steps},
        "throughput": (work.throughput_runs * len(work.clients), work.throughput_steps),
    }
    invocations = await _query(
        http,
        admin,
        "SELECT target_handler_name AS handler, status, completion_result AS result,"
        " count(*) AS n FROM sys_invocation GROUP BY 1, 2, 3",
    )
    steps = await _query(
        http,
        admin,
        "SELECT i.target_handler_name AS handler, count(*) AS n"
        " FROM sys_journal j JOIN sys_invocation i ON i.id = j.id"
        f" WHERE j.entry_type = '{STEP_RESULT}' AND i.status = 'completed'"
        " AND i.completion_result = 'success' GROUP BY 1",
    )
    done = {
        r["handler"]: int(r["n"])
        for r in invocations
        if (r["status"], r["result"]) == ("completed", "success")
    }
    others = [r for r in invocations if (r["status"], r["result"]) != ("completed", "success")]
    step_counts = {r["handler"]: int(r["n"]) for r in steps}
    wrong = [
        f"{handler}: {done.get(handler, 0)} completed / {step_counts.get(handler, 0)} step"
        f" results, expected {runs} / {runs * per_run}"
        for handler, (runs, per_run) in expected.items()
        if (done.get(handler, 0), step_counts.get(handler, 0)) != (runs, runs * per_run)
    ]
    wrong += [f"{r['n']} {r['handler']} {r['status']} ({r['result']})" for r in others]
    if wrong:
        raise BenchError("Restate check failed: " + "; ".join(wrong))
    total_runs = sum(r for r, _ in expected.values())
    total_steps = sum(r * s for r, s in expected.values())
    return (
        f"{total_runs} invocations completed with success, {total_steps} step results"
        " in its journal (admin query API)"
    )


async def run_restate(
    binary: Path, version: str, work: Workload, folder: Path, label: str, timeout: float
) -> RestateRun:
    """A fresh server and the service; every workload through the ingress; the counts."""
    ports = _Ports()
    base_dir = folder / f"restate-{label}"
    server_log = folder / f"restate-server-{label}.log"
    service_log = folder / f"restate-service-{label}.log"
    server_command = [
        str(binary),
        "--base-dir",
        str(base_dir),
        "--no-logo",
        "--log-disable-ansi-codes",
        "true",
        "--shutdown-timeout",
        "5s",
    ]
    service_command = [sys.executable, str(WORKLOAD), f"--port={ports.service}"]
    ingress = f"http://127.0.0.1:{ports.ingress}"
    admin = f"http://127.0.0.1:{ports.admin}"
    run = RestateRun(version)
    phase = "start-up"
    try:
        async with AsyncExitStack() as stack:
            server = await stack.enter_async_context(
                logged_process(server_command, server_log, env=_server_env(ports))
            )
            service = await stack.enter_async_context(logged_process(service_command, service_log))
            limits = httpx.Limits(max_connections=max(work.clients) + 4)
            http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=timeout, limits=limits)
            )
            with anyio.fail_after(timeout):
                await _wait_ready(http, f"{admin}/health", server)
                await _wait_ready(http, f"{ingress}/restate/health", server)
                await _register(http, admin, f"http://127.0.0.1:{ports.service}")
                phase = "warm-up"
                await _first_invocation(http, ingress)
                await _sequential(http, ingress, "warmup", 1, work.warmup - 1)
                for steps in work.latency_steps:
                    phase = f"{steps}-step latency"
                    run.latency[steps] = await _sequential(
                        http, ingress, f"latency_{steps}", steps, work.latency_runs
                    )
                for clients in work.clients:
                    phase = f"throughput, {clients} clients"
                    before = cpu_snapshot((server.pid, service.pid))
                    seconds = await _concurrent(
                        http, ingress, work.throughput_steps, work.throughput_runs, clients
                    )
                    after = cpu_snapshot((server.pid, service.pid))
                    server_ms, service_ms, bench_ms = (
                        (b - a) / work.throughput_runs * 1e3
                        for a, b in zip(before, after, strict=True)
                    )
                    run.throughput.append(
                        Throughput(
                            clients,
                            work.throughput_runs,
                            seconds,
                            (server_ms, service_ms, bench_ms),
                        )
                    )
                phase = "counting"
                run.checks = await _check(http, admin, work)
            for process in (server, service):
                if process.returncode is not None:
                    raise BenchError(f"{process.log.name}: exited with {process.returncode}")
    except* (OSError, TimeoutError, httpx.HTTPError, BenchError) as group:
        errors = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(group))
        raise BenchError(
            f"failed in {phase}: {errors}\n"
            f"--- server log (tail) ---\n{read_log(server_log, 3000)}\n"
            f"--- service log (tail) ---\n{read_log(service_log, 3000)}"
        ) from group
    return run
