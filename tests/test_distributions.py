"""Each distribution builds, installs alone into a fresh venv, and imports.

"Alone" means with nothing but its declared dependencies: its own wheel, the
aiki-core wheel, and third-party packages from the index. A package that imports an
undeclared sibling fails here even if the boundary contracts were bypassed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())

pytestmark = pytest.mark.slow


def _uv(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [find_uv_bin(), *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"uv {' '.join(map(str, args))} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    for package in PACKAGES:
        _uv("build", "--wheel", "--quiet", "--out-dir", out, ROOT / "packages" / package)
    return out


def test_every_package_is_a_distribution() -> None:
    expected = {"core", "task", "workflow", "client", "worker", "crypto", "server"}
    assert PACKAGES == sorted(f"aiki-{name}" for name in expected)


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_ships_typing_marker_and_version(package: str, wheelhouse: Path) -> None:
    module = package.replace("-", "_")
    (wheel,) = wheelhouse.glob(f"{module}-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{module}/py.typed" in names
    assert f"{module}/__init__.py" in names
    assert not any(name.startswith("tests/") for name in names)


@pytest.mark.parametrize("package", PACKAGES)
def test_installs_alone_and_imports(package: str, wheelhouse: Path, tmp_path: Path) -> None:
    module = package.replace("-", "_")
    venv = tmp_path / "venv"
    _uv("venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _uv("pip", "install", "--quiet", "--python", python, "--find-links", wheelhouse, package)

    installed = _uv("pip", "list", "--python", python, "--format", "freeze")
    aiki_dists = sorted(line.split("==")[0] for line in installed.splitlines() if "aiki" in line)
    assert aiki_dists == sorted({"aiki-core", package})

    probe = (
        f"import json, sys, {module}; "
        "print(json.dumps([m for m in sys.modules if m.startswith('aiki_') and '.' not in m]))"
    )
    done = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert loaded <= {"aiki_core", module}
    assert module in loaded
