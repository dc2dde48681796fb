"""Each distribution builds, installs alone into a fresh venv, and imports.

"Alone" means with nothing but its declared dependencies: its own wheel, the wheels
of the siblings it declares (aiki-core for a library package; the SDK packages for
the facade `aiki`), and third-party packages from the index. A package that imports
an undeclared sibling fails here even if the boundary contracts were bypassed.

Each one installs twice: with the newest versions its ranges allow, and with the
lowest (`uv pip install --resolution lowest-direct`), so a lower bound is proven, not
hoped. The facade, installed alone, runs the README's example against a real server;
so does a venv of every distribution at its lowest versions, server included.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from uv import find_uv_bin

if TYPE_CHECKING:
    from live_processes import LiveProcesses

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
FACADE = "aiki"
SDK = ("aiki-core", "aiki-task", "aiki-workflow", "aiki-client", "aiki-worker")
"""What `pip install aiki` brings of the monorepo."""
CLI = "aiki-cli"
"""The command line: an application on the client, so it installs with aiki-client too."""

pytestmark = pytest.mark.slow


def _uv(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [find_uv_bin(), *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"uv {' '.join(map(str, args))} failed:\n{done.stderr}"
    return done.stdout


def _module(package: str) -> str:
    return package.replace("-", "_")


def _wheel(wheelhouse: Path, package: str) -> Path:
    (wheel,) = wheelhouse.glob(f"{_module(package)}-*.whl")
    return wheel


def _requirements(wheel: Path) -> list[Requirement]:
    """The wheel's own dependencies (its Requires-Dist), less those of its extras."""
    archive = zipfile.ZipFile(wheel)
    (metadata,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    headers = HeaderParser().parsestr(archive.read(metadata).decode())
    requirements = map(Requirement, headers.get_all("Requires-Dist") or [])
    return [req for req in requirements if "extra" not in str(req.marker or "")]


def _install(python: Path, wheelhouse: Path, *install: str | Path) -> None:
    """`uv pip install *install` into `python`'s venv, from the index and `wheelhouse`."""
    _uv("pip", "install", "--quiet", "--python", python, "--find-links", wheelhouse, *install)


def _venv(where: Path, wheelhouse: Path, *install: str | Path) -> Path:
    """A fresh venv with `install` installed; its python."""
    venv = where / "venv"
    _uv("venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _install(python, wheelhouse, *install)
    return python


def _lowest_venv(where: Path, wheelhouse: Path, wheels: list[Path]) -> Path:
    """A venv of `wheels` whose own dependencies are at the lowest versions allowed.

    `lowest-direct` lowers only what the command names, not what a wheel requires, so
    the wheels' Requires-Dist are named too; what those require is at its newest.
    """
    requirements = where / "requirements.txt"
    direct = sorted({str(req) for wheel in wheels for req in _requirements(wheel)})
    requirements.write_text("\n".join(direct) + "\n")
    return _venv(where, wheelhouse, "--resolution", "lowest-direct", "-r", requirements, *wheels)


def _installed(python: Path) -> dict[str, Version]:
    freeze = _uv("pip", "list", "--python", python, "--format", "freeze")
    pairs = (line.split("==", 1) for line in freeze.splitlines())
    return {canonicalize_name(name): Version(version) for name, version in pairs}


def _loaded_aiki_modules(python: Path, module: str, cwd: Path) -> set[str]:
    probe = (
        f"import json, sys, {module}; "
        "print(json.dumps([m for m in sys.modules if m.startswith('aiki') and '.' not in m]))"
    )
    done = subprocess.run([python, "-c", probe], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def _aiki_dists(python: Path) -> list[str]:
    return sorted(name for name in _installed(python) if name.startswith("aiki"))


def _declared(package: str) -> set[str]:
    """The monorepo distributions `package` installs with (itself included)."""
    if package == FACADE:
        return {package, *SDK}
    if package == CLI:
        return {package, "aiki-core", "aiki-client"}
    return {package, "aiki-core"}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    for package in PACKAGES:
        _uv("build", "--wheel", "--quiet", "--out-dir", out, ROOT / "packages" / package)
    return out


def test_every_package_is_a_distribution() -> None:
    expected = {"core", "task", "workflow", "client", "worker", "crypto", "server", "otel", "cli"}
    assert PACKAGES == sorted([FACADE, *(f"aiki-{name}" for name in expected)])


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_ships_typing_marker_and_version(package: str, wheelhouse: Path) -> None:
    module = _module(package)
    names = zipfile.ZipFile(_wheel(wheelhouse, package)).namelist()
    assert f"{module}/py.typed" in names
    assert f"{module}/__init__.py" in names
    assert f"{module}/__about__.py" in names
    assert not any(name.startswith("tests/") for name in names)


@pytest.mark.parametrize("package", PACKAGES)
def test_installs_alone_and_imports(package: str, wheelhouse: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path, wheelhouse, package)
    assert _aiki_dists(python) == sorted(_declared(package))
    loaded = _loaded_aiki_modules(python, _module(package), tmp_path)
    assert _module(package) in loaded
    assert loaded <= {_module(name) for name in _declared(package)}


@pytest.mark.parametrize("package", PACKAGES)
def test_installs_alone_at_its_lowest_versions_and_imports(
    package: str, wheelhouse: Path, tmp_path: Path
) -> None:
    wheel = _wheel(wheelhouse, package)
    python = _lowest_venv(tmp_path, wheelhouse, [wheel])
    assert _aiki_dists(python) == sorted(_declared(package))
    installed = _installed(python)
    for req in _requirements(wheel):
        if req.marker is not None and not req.marker.evaluate():
            continue
        lower = [Version(spec.version) for spec in req.specifier if spec.operator == ">="]
        assert len(lower) == 1, f"{req}: a dependency needs one lower bound (>=)"
        got = installed[canonicalize_name(req.name)]
        assert got.release[: len(lower[0].release)] == lower[0].release, f"{req}: got {got}"
    assert _module(package) in _loaded_aiki_modules(python, _module(package), tmp_path)


# The README's example is top-level `async with` code, as in `python -m asyncio`: run
# it as such, against the server at argv[2] instead of the default address.
RUN_EXAMPLE = """
import ast, asyncio, sys
source = open(sys.argv[1]).read().replace("http://127.0.0.1:9850", sys.argv[2])
code = compile(source, "README example", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
asyncio.run(eval(code, {"__name__": "__main__"}))
"""


def _readme_example(where: Path) -> Path:
    readme = (ROOT / "README.md").read_text()
    use_it = readme.split("## Use it\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", use_it, re.DOTALL)
    assert match is not None, "README.md: no python block under `## Use it`"
    assert "from aiki import " in match.group(1)
    example = where / "readme_example.py"
    example.write_text(match.group(1))
    return example


async def _run_readme_example(python: Path, base_url: str, where: Path) -> str:
    done = await anyio.run_process(
        [python, "-c", RUN_EXAMPLE, _readme_example(where), base_url], check=False, cwd=where
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_the_facade_alone_runs_the_readme_example(
    wheelhouse: Path, tmp_path: Path, processes: LiveProcesses
) -> None:
    python = await anyio.to_thread.run_sync(_venv, tmp_path, wheelhouse, FACADE)
    assert _aiki_dists(python) == sorted(_declared(FACADE))
    server = await processes.start_server(f"sqlite:///{tmp_path / 'aiki.db'}")

    assert await _run_readme_example(python, server.base_url, tmp_path) == "hello ada\n"

    # the extras add the rest
    every_extra = f"{FACADE}[crypto,server,otel,cli]"
    await anyio.to_thread.run_sync(_install, python, wheelhouse, every_extra)
    extras = ["aiki-crypto", "aiki-server", "aiki-otel", CLI]
    assert _aiki_dists(python) == sorted([*_declared(FACADE), *extras])
    # the extra `cli` installs the `aiki` command
    done = await anyio.run_process([python.parent / "aiki", "--version"], check=False)
    assert done.stdout.decode().strip() == "aiki, version 0.1.0", done.stderr.decode()


@pytest.fixture(scope="module")
def lowest_everything(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    """A venv of every distribution, each one's own dependencies at their lowest; its python."""
    wheels = [_wheel(wheelhouse, package) for package in PACKAGES]
    return _lowest_venv(tmp_path_factory.mktemp("lowest"), wheelhouse, wheels)


async def test_every_distribution_at_its_lowest_versions_runs_the_readme_example(
    lowest_everything: Path, tmp_path: Path, processes: LiveProcesses, db_url: str
) -> None:
    python = lowest_everything
    server = await processes.start_server(db_url, python=str(python))
    assert await _run_readme_example(python, server.base_url, tmp_path) == "hello ada\n"

    # the command line, its click and rich at their lowest, sees the run and draws it
    aiki: list[str | Path] = [python, "-m", "aiki_cli", "--url", server.base_url]
    listed = await anyio.run_process([*aiki, "runs", "list", "--json"])
    (run,) = json.loads(listed.stdout)["runs"]
    shown = await anyio.run_process([*aiki, "runs", "show", run["id"]])
    assert "greet" in shown.stdout.decode()
